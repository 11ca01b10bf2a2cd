"""recipes/miniature.py runs as users run it (the README's command), in float32 and bfloat16, and
it learns (the learning regression test, issue 19: over two seeds, in both dtypes): the pre-trained
model from the cache, the faithfulness reward trained on, the gold metric recorded per held-out
video beside it (weight 0), samples written, and held-out gold higher after a short run than before
it. How much it learns over the recipe's full length, and against the paper's other algorithms at
equal FLOPs, is measured in docs/miniature.md (benchmarks/miniature_comparison.py)."""

import json
import statistics

import pytest

from tests.conftest import REPO, run_fgrpo

# The regression bar, below what these runs measured (docs/miniature.md, "The learning regression
# test": +0.032 and +0.029 in float32, +0.041 and +0.035 in bfloat16; five seeds at step 30 ranged
# +0.023 to +0.053): a change that stops the recipe learning fails it, seed noise does not.
STEPS = 30
SEEDS = (0, 1)
MIN_MEAN_GAIN = 0.015


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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_miniature_recipe_learns(miniature_model_dir, tmp_path, dtype):
    quality = json.loads((miniature_model_dir / "miniature_quality.json").read_text())
    gains = [_check_records(_launch(tmp_path, miniature_model_dir, dtype, seed), STEPS, quality) for seed in SEEDS]
    assert statistics.mean(gains) >= MIN_MEAN_GAIN and min(gains) > 0, gains
