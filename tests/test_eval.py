"""`fgrpo eval`: deterministic held-out evaluation of a run or one of its checkpoints."""

import json

import pytest

from tests.conftest import run_fgrpo
from tests.helpers.runs import launch_tiny


def test_eval_run_and_checkpoint(tiny_model_dir, tmp_path):
    run = launch_tiny(tiny_model_dir, tmp_path / "runs", 1, 2)  # checkpoints at steps 1 and 2
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red car at night", "id": 1, "category": "dark"}\n'
                       '{"prompt": "a bright yellow kite", "id": 2, "category": "bright"}\n')
    res = run_fgrpo("eval", str(run), "--steps", "3", "--prompts", str(prompts), cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((run / "eval" / "step-2" / "eval.json").read_text())
    assert summary["step"] == 2 and summary["weights"] == "ema" and summary["steps"] == 3
    assert summary["prompts"] == ["a red car at night", "a bright yellow kite"]
    samples = run / "eval" / "step-2" / "samples"
    assert len(summary["eval_rewards"]) == 2 and (samples / "videos.mp4").is_file()
    assert sorted(p.name for p in (samples / "videos").iterdir()) == ["prompt-00.mp4", "prompt-01.mp4"]
    index = json.loads((samples / "videos.json").read_text())
    assert index["prompts"] == summary["prompts"] and index["rewards"] == pytest.approx(summary["eval_rewards"], abs=1e-6)
    # JSONL fields other than the prompt come back with each video's reward, and by category.
    rows = summary["videos"]
    assert [(r["id"], r["category"], r["video"]) for r in rows] == [(1, "dark", 0), (2, "bright", 0)]
    assert [r["reward"] for r in rows] == summary["eval_rewards"]
    assert summary["by_category"] == {"bright": rows[1]["reward"], "dark": rows[0]["reward"]}
    # deterministic: the same evaluation again gives the same rewards
    again = run_fgrpo("eval", str(run), "--steps", "3", "--prompts", str(prompts), "--name", "again", cwd=tmp_path)
    assert again.returncode == 0
    assert json.loads((run / "eval" / "again" / "eval.json").read_text())["eval_rewards"] == summary["eval_rewards"]
    # an older checkpoint gives other weights, hence other rewards
    old = run_fgrpo("eval", str(run / "checkpoints" / "step-1"), "--steps", "3", "--prompts", str(prompts),
                    "--weights", "model", cwd=tmp_path)
    assert old.returncode == 0, old.stderr
    first = json.loads((run / "eval" / "step-1" / "eval.json").read_text())
    assert first["step"] == 1 and first["eval_rewards"] != summary["eval_rewards"]


def test_eval_of_a_missing_run_names_the_folder(tmp_path):
    res = run_fgrpo("eval", str(tmp_path / "nothing"), cwd=tmp_path)
    assert res.returncode != 0 and "nothing" in res.stderr
