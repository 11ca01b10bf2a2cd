"""rollout.refill_zero_variance on the miniature recipe, launched as users launch it.

The recipe's own reward (soft faithfulness) almost never gives a group all-equal rewards, so these
runs train on the strict gold score of one attribute, colour (0 or 1 per video): the pre-trained
model gets most prompts' colour right in every video, so their groups saturate at 1 (a step of 4
prompts has 2-3 such groups without refill). With refill the trained batch has none left, keeps its
size, and a run stopped after step 1 and resumed gives the uninterrupted run's records."""

import json

from tests.conftest import run_fgrpo
from tests.helpers.runs import recipe_with_eval

# Per-run quantities that are not the training's: timings, memory, whether a launch resumed.
UNSTABLE = ("time", "compute/wall_s", "compute/device_s", "peak_memory_per_rank")
P = 2


def _launch(tmp_path, miniature_model_dir, name: str, steps: int, refill: int = 8) -> list[dict]:
    runs = tmp_path / "runs"
    res = run_fgrpo(
        "launch",
        # less its held-out gold: these runs train on a gold score, which a gold metric may not also be
        recipe_with_eval(tmp_path, "miniature", "()"),
        "--backend",
        "local",
        "--optim.max-steps",
        str(steps),
        "--rollout.prompts-per-step",
        str(P),
        "--rollout.refill-zero-variance",
        str(refill),
        "--rewards.0.name",
        "miniature_gold",
        "--rewards.0.args",
        "attribute",
        "colour",
        "--eval.interval",
        "1000",
        "--eval.videos-per-prompt",
        "1",
        "--logging.runs-dir",
        str(runs),
        "--logging.run-name",
        name,
        cwd=tmp_path,
        timeout=600,
        env={"FGRPO_CACHE": str(miniature_model_dir.parent)},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = (runs / name / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def _stable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in UNSTABLE and not k.startswith("time_")}


def test_refill_removes_saturated_groups_deterministically(miniature_model_dir, tmp_path):
    off = _launch(tmp_path, miniature_model_dir, "off", 1, refill=0)
    on = _launch(tmp_path, miniature_model_dir, "on", 2)
    # (a) step 1 draws the same prompts either way: its saturated groups are replaced by fresh ones
    assert off[0]["zero_variance_groups"] > 0
    assert on[0]["refilled_groups"] == round(off[0]["zero_variance_groups"] * P)
    assert [r["zero_variance_groups"] for r in on] == [0.0, 0.0]
    assert all(r["refill_flops"] > 0 for r in on if r["refill_videos"])
    # (b) the batch keeps its size: one SDE step per trained group, P of them
    assert all(len(r["timestep_indices"]) == P for r in on)
    # (c) a run stopped after step 1 and resumed gives the uninterrupted run's records; a run that is
    # not deterministic fails this too, so a plain repeat of the run (dropped to keep the suite within
    # 45 minutes) would check nothing more
    _launch(tmp_path, miniature_model_dir, "resumed", 1)
    resumed = _launch(tmp_path, miniature_model_dir, "resumed", 2)
    assert [_stable(r) for r in resumed] == [_stable(r) for r in on]
