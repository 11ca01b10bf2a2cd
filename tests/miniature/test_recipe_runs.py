"""recipes/miniature.py runs as users run it (the README's command), in float32 and bfloat16, and
it learns (the learning regression test, issue 19: one seed per dtype, two seeds in all): the
pre-trained model from the cache, the faithfulness reward trained on, the gold metric scoring each
held-out video (overall and per attribute, never trained on), samples written, and held-out gold
after a short run clearly above what the same run trained against the reward reaches. How much it
learns over the recipe's full length, and against the paper's other algorithms at equal FLOPs, is
measured in docs/miniature.md (benchmarks/miniature_comparison.py)."""

import json

import pytest

from fgrpo.miniature.world import ATTRIBUTES
from tests.conftest import REPO, run_fgrpo

# The regression bar is a contrast: the recipe trained on its reward against the same run, as long,
# trained against it (`rewards.0.weight -1`). One run's held-out gold gain at 30 steps is small
# against seed noise (five float32 seeds: +0.011 to +0.032, -0.009 to +0.047 before the step-0
# checkpoint was fixed; docs/miniature.md, "The learning regression test") and moves with
# floating-point details, so it cannot carry a bar; the contrast is
# about 0.13 (measured: float32 seed 0 +0.032 vs -0.096, bfloat16 seed 1 +0.035 vs -0.119). A change
# that stops the policy gradient following the reward (a lost sign, a zero advantage, a reward that
# no longer reaches the loss) leaves both runs drifting alike and fails it. One pair per dtype, each
# with its own seed: two seeds and both dtypes.
STEPS = 30
STEPS_AGAINST = 30  # at 20 steps float32 seed 0 fell only to -0.054: a contrast of 0.086, near the bar
RUNS = [("float32", 0), ("bfloat16", 1)]  # (dtype, prompts.seed)
MIN_CONTRAST = 0.06


def _launch(tmp_path, model_dir, dtype: str, seed: int, steps: int, weight: float = 1.0) -> list[dict]:
    name = f"{dtype}-{seed}-{'with' if weight > 0 else 'against'}"
    res = run_fgrpo(
        "launch",
        str(REPO / "recipes" / "miniature.py"),
        "--backend",
        "local",
        "--model.dtype",
        dtype,
        "--prompts.seed",
        str(seed),
        "--optim.max-steps",
        str(steps),
        "--eval.interval",
        str(steps),
        "--rewards.0.weight",
        str(weight),
        "--logging.runs-dir",
        str(tmp_path / "runs"),
        "--logging.run-name",
        name,
        cwd=tmp_path,
        timeout=900,
        env={"FGRPO_CACHE": str(model_dir.parent)},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = tmp_path / "runs" / name
    assert (run / "samples" / "before.mp4").is_file() and (run / "samples" / "final.mp4").is_file()
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _check_records(records: list[dict], steps: int, quality: dict, weight: float = 1.0) -> float:
    """The run's records as the recipe promises them; returns its held-out gold gain."""
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    # Trained on faithfulness alone; gold scores the evaluations only (eval.gold_rewards).
    for r in train:
        assert r["reward_mean"] == pytest.approx(weight * r["reward/miniature_faithfulness"], abs=1e-6)
        assert not any(k.startswith("reward/miniature_gold") for k in r)
    assert [e["tag"] for e in evals] == ["before", "final"]
    for e in evals:
        per_video = e["eval_component_values"]
        assert len(per_video["miniature_gold"]) == len(e["eval_rewards"]) == 24 * 2
        assert e["eval/miniature_gold"] == pytest.approx(sum(per_video["miniature_gold"]) / 48, abs=1e-5)
        assert e["eval_gold"] == e["eval/miniature_gold"]  # the per-attribute golds have weight 0
        # Each attribute's gold, under its label; overall gold is their mean.
        per_attribute = [e[f"eval/miniature_gold.{a}"] for a in ATTRIBUTES]
        assert e["eval/miniature_gold"] == pytest.approx(sum(per_attribute) / len(ATTRIBUTES), abs=1e-5)
    before, after = evals[0]["eval/miniature_gold"], evals[1]["eval/miniature_gold"]
    # The pre-trained model, not noise (a video without an object scores 1/7, its background
    # alone). The recipe samples without guidance, so below the build's guided measurement (CFG 4).
    assert quality["sampler"]["cfg"] > 1
    assert 0.3 < before <= quality["heldout_gold"]["overall"] + 0.02
    return after - before


@pytest.mark.parametrize(("dtype", "seed"), RUNS, ids=[f"{dtype}-seed{seed}" for dtype, seed in RUNS])
def test_miniature_recipe_learns(miniature_model_dir, tmp_path, dtype, seed):
    quality = json.loads((miniature_model_dir / "miniature_quality.json").read_text())
    with_reward = _check_records(_launch(tmp_path, miniature_model_dir, dtype, seed, STEPS), STEPS, quality)
    against = _launch(tmp_path, miniature_model_dir, dtype, seed, STEPS_AGAINST, weight=-1.0)
    against_reward = _check_records(against, STEPS_AGAINST, quality, weight=-1.0)
    assert with_reward - against_reward >= MIN_CONTRAST, (with_reward, against_reward)
