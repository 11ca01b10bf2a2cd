"""`fgrpo eval`: deterministic held-out evaluation of a run or one of its checkpoints."""

import json

import pytest

from tests.conftest import run_fgrpo
from tests.helpers.runs import launch_tiny


def test_eval_run_and_checkpoint(tiny_model_dir, tmp_path):
    run = launch_tiny(tiny_model_dir, tmp_path / "runs", 1, 2)  # checkpoints at steps 1 and 2
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '{"prompt": "a red car at night", "id": 1, "category": "dark"}\n'
        '{"prompt": "a bright yellow kite", "id": 2, "category": "bright"}\n'
    )
    res = run_fgrpo("eval", str(run), "--steps", "3", "--prompts", str(prompts), cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((run / "eval" / "step-2" / "eval.json").read_text())
    assert summary["step"] == 2 and summary["weights"] == "ema" and summary["steps"] == 3
    assert summary["prompts"] == ["a red car at night", "a bright yellow kite"]
    samples = run / "eval" / "step-2" / "samples"
    assert len(summary["eval_rewards"]) == 2 and (samples / "videos.mp4").is_file()
    assert sorted(p.name for p in (samples / "videos").iterdir()) == ["prompt-00.mp4", "prompt-01.mp4"]
    index = json.loads((samples / "videos.json").read_text())
    assert index["prompts"] == summary["prompts"] and index["rewards"] == pytest.approx(
        summary["eval_rewards"], abs=1e-6
    )
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
    old = run_fgrpo(
        "eval",
        str(run / "checkpoints" / "step-1"),
        "--steps",
        "3",
        "--prompts",
        str(prompts),
        "--weights",
        "model",
        cwd=tmp_path,
    )
    assert old.returncode == 0, old.stderr
    first = json.loads((run / "eval" / "step-1" / "eval.json").read_text())
    assert first["step"] == 1 and first["eval_rewards"] != summary["eval_rewards"]


def test_eval_of_a_missing_run_names_the_folder(tmp_path):
    res = run_fgrpo("eval", str(tmp_path / "nothing"), cwd=tmp_path)
    assert res.returncode != 0 and "nothing" in res.stderr


def test_eval_and_export_of_a_sharded_run_skip_a_damaged_newest_checkpoint(tiny_model_dir, tmp_path):
    """Trained on 2 processes (FSDP2, dp_shard 2), evaluated and exported in one: DCP reshards. A
    damaged newest checkpoint (its manifest's checksum disagrees) is skipped, said on stderr, as
    resume does; nothing is written under eval/ before the checks pass."""
    from tests.helpers.runs import launch_tiny

    run = launch_tiny(tiny_model_dir, tmp_path / "runs", 2, 2, "--parallelism.dp-shard", "2", name="sharded")
    meta = run / "checkpoints" / "step-2" / ".metadata"
    meta.write_bytes(b"\x00" * meta.stat().st_size)
    res = run_fgrpo("eval", str(run), "--steps", "2", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "checkpoint step 2 skipped" in res.stderr
    assert json.loads((run / "eval" / "step-1" / "eval.json").read_text())["step"] == 1
    asked = run_fgrpo("eval", str(run / "checkpoints" / "step-2"), "--steps", "2", cwd=tmp_path, timeout=300)
    assert asked.returncode == 2 and "step 2 cannot be used" in asked.stderr
    assert not (run / "eval" / "step-2").exists()
    exported = run_fgrpo("export", str(run), str(tmp_path / "out"), cwd=tmp_path, timeout=300)
    assert exported.returncode == 0 and "checkpoint step 2 skipped" in exported.stderr, exported.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "export.json").read_text())["step"] == 1
