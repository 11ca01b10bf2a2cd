"""recipes/miniature.py runs as users run it (the README's command), in float32 and bfloat16, and
it learns (the learning regression test, issue 19: one seed per dtype, two seeds in all): the
pre-trained model from the cache, the faithfulness reward trained on, the gold metric recorded per
held-out video beside it (weight 0), samples written, and held-out gold higher after a short run than
before it. How much it learns over the recipe's full length, and against the paper's other algorithms at
equal FLOPs, is measured in docs/miniature.md (benchmarks/miniature_comparison.py)."""

import json

import pytest

from tests.conftest import REPO, run_fgrpo

# The regression bar, below what these runs measured (docs/miniature.md, "The learning regression
# test": float32 seed 0 +0.032, bfloat16 seed 1 +0.035; five seeds at step 30 ranged +0.023 to
# +0.053): a change that stops the recipe learning fails it, seed noise does not. One run per dtype,
# each with its own seed, keeps the suite within 45 minutes and still covers two seeds and both dtypes.
STEPS = 30
RUNS = [("float32", 0), ("bfloat16", 1)]  # (dtype, prompts.seed)
MIN_GAIN = 0.015


def _launch(tmp_path, model_dir, dtype: str, seed: int) -> list[dict]:
    name = f"{dtype}-{seed}"
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
        str(STEPS),
        "--eval.interval",
        str(STEPS),
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


def _check_records(records: list[dict], steps: int, quality: dict) -> float:
    """The run's records as the recipe promises them; returns its held-out gold gain."""
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    # Trained on faithfulness alone: the weight-0 gold is recorded but adds nothing to the reward.
    for r in train:
        assert r["reward_mean"] == pytest.approx(r["reward/miniature_faithfulness"], abs=1e-6)
        assert 0 <= r["reward/miniature_gold"] <= 1
    assert [e["tag"] for e in evals] == ["before", "final"]
    for e in evals:
        per_video = e["eval_component_values"]
        assert len(per_video["miniature_gold"]) == len(e["eval_rewards"]) == 24 * 2
        assert e["eval/miniature_gold"] == pytest.approx(sum(per_video["miniature_gold"]) / 48, abs=1e-5)
    before, after = evals[0]["eval/miniature_gold"], evals[1]["eval/miniature_gold"]
    # The pre-trained model, not noise (a video without an object scores 1/7, its background
    # alone). The recipe samples without guidance, so below the build's guided measurement (CFG 4).
    assert quality["sampler"]["cfg"] > 1
    assert 0.3 < before <= quality["heldout_gold"]["overall"] + 0.02
    return after - before


@pytest.mark.parametrize(("dtype", "seed"), RUNS, ids=[f"{dtype}-seed{seed}" for dtype, seed in RUNS])
def test_miniature_recipe_learns(miniature_model_dir, tmp_path, dtype, seed):
    quality = json.loads((miniature_model_dir / "miniature_quality.json").read_text())
    gain = _check_records(_launch(tmp_path, miniature_model_dir, dtype, seed), STEPS, quality)
    assert gain >= MIN_GAIN, gain
