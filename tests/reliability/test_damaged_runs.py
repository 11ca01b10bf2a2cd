"""Resume survives damage: corrupt checkpoints, metrics written past the checkpoint, a torn or
missing recipe.json."""

import json
import os

import pytest

from fgrpo.run_folder import RunFolder
from tests.conftest import REPO, run_fgrpo
from tests.helpers.recipes import small_recipe
from tests.helpers.runs import BASE_ARGS


def trainer(tiny_model_dir, run_dir, max_steps):
    from fgrpo.trainer.trainer import Trainer

    return Trainer(small_recipe(tiny_model_dir, max_steps=max_steps), run_dir)


@pytest.fixture
def run_at_4(tiny_model_dir, tmp_path):
    """A run trained to step 4 with checkpoints at steps 2 and 4."""
    assert trainer(tiny_model_dir, tmp_path / "run", 4).run() == 0
    return RunFolder(tmp_path / "run")


def damage(ckpt, how):
    if how == "truncated-distcp":
        part = next(p for p in ckpt.iterdir() if p.suffix == ".distcp")
        os.truncate(part, part.stat().st_size // 2)
    elif how == "garbage-metadata":  # same size, other bytes: only the checksum tells
        size = (ckpt / ".metadata").stat().st_size
        (ckpt / ".metadata").write_bytes((b"\x00garbage" * size)[:size])
    elif how == "garbage-metadata-no-manifest":  # a checkpoint from before manifests: DCP's error decides
        (ckpt / "fgrpo-manifest.json").unlink()
        (ckpt / ".metadata").write_bytes(b"\x00garbage" * 10)


@pytest.mark.parametrize("how", ["truncated-distcp", "garbage-metadata", "garbage-metadata-no-manifest"])
def test_a_damaged_newest_checkpoint_falls_back_loudly(tiny_model_dir, run_at_4, how, capsys):
    damage(run_at_4.checkpoint(4), how)
    t = trainer(tiny_model_dir, run_at_4.path, 6)
    assert t.run() == 0
    assert "resumed from step 2, skipping damaged checkpoint(s) step-4" in t.resume_note
    assert "WARNING" in capsys.readouterr().out
    assert (run_at_4.checkpoints / "corrupt-step-4").is_dir()  # kept aside, no longer a candidate
    steps = [r["step"] for r in run_at_4.read_metrics("train")]
    assert steps == [1, 2, 3, 4, 5, 6][:2] + [3, 4, 5, 6]  # 3 and 4 retrained, once each in metrics


def test_only_damaged_checkpoints_stop_the_run_and_say_which(tiny_model_dir, run_at_4):
    damage(run_at_4.checkpoint(4), "truncated-distcp")
    damage(run_at_4.checkpoint(2), "garbage-metadata")
    with pytest.raises(RuntimeError, match=r"no usable checkpoint .*step-4: .*bytes.*step-2: .*checksum"):
        trainer(tiny_model_dir, run_at_4.path, 6).run()
    assert run_at_4.checkpoint(4).is_dir() and run_at_4.checkpoint(2).is_dir()  # nothing moved


def test_damage_is_reported_in_status(tiny_model_dir, tmp_path):
    runs = tmp_path / "runs"
    args = [
        "launch",
        str(REPO / "recipes" / "tiny.py"),
        "--model.path",
        str(tiny_model_dir),
        "--logging.runs-dir",
        str(runs),
        "--logging.run-name",
        "run",
        *BASE_ARGS,
    ]
    assert run_fgrpo(*args, "--optim.max-steps", "2", cwd=tmp_path).returncode == 0
    run = RunFolder(runs / "run")
    damage(run.checkpoint(2), "garbage-metadata")
    res = run_fgrpo(*args, "--optim.max-steps", "3", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "WARNING checkpoint" in res.stdout and "checksum mismatch" in res.stdout
    status = run.read_status()
    assert status["state"] == "completed" and "skipping damaged checkpoint(s) step-2" in status["reason"]
    # It resumed from step 1; the status said so while it ran; the records of step 2 were rewound.
    assert [r["step"] for r in run.read_metrics("train")] == [1, 2, 3]
    rewound = [json.loads(x) for x in (run.path / "metrics.rewound.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rewound if r["kind"] == "train"] == [2]


def test_metrics_past_the_checkpoint_are_set_aside_and_final_is_not_repeated(tiny_model_dir, run_at_4):
    from fgrpo.fileio import append_jsonl

    for step in (5, 6):  # what a trainer killed before its next checkpoint had logged
        append_jsonl(run_at_4.metrics_file, {"kind": "train", "step": step, "reward_mean": 0.0})
    assert trainer(tiny_model_dir, run_at_4.path, 6).run() == 0
    assert [r["step"] for r in run_at_4.read_metrics("train")] == [1, 2, 3, 4, 5, 6]
    finals = lambda: [r for r in run_at_4.read_metrics("eval") if r["tag"] == "final"]  # noqa: E731
    assert [r["step"] for r in finals()] == [4, 6]  # step 4's is kept: the run ended there once
    assert trainer(tiny_model_dir, run_at_4.path, 6).run() == 0  # relaunching a completed run
    assert [r["step"] for r in finals()] == [4, 6]
    assert [r["step"] for r in run_at_4.read_metrics("train")] == [1, 2, 3, 4, 5, 6]


def test_a_before_evaluation_of_a_killed_run_is_not_repeated(tiny_model_dir, tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    from fgrpo.fileio import append_jsonl

    append_jsonl(run.metrics_file, {"kind": "eval", "step": 0, "tag": "before", "eval_reward": 0.0})
    assert trainer(tiny_model_dir, run.path, 1).run() == 0
    assert [r["tag"] for r in run.read_metrics("eval")] == ["before", "final"]


# ----- recipe.json


def launch_args(tiny_model_dir, runs, *extra):
    return [
        "launch",
        str(REPO / "recipes" / "tiny.py"),
        "--model.path",
        str(tiny_model_dir),
        "--logging.runs-dir",
        str(runs),
        "--optim.max-steps",
        "1",
        *BASE_ARGS,
        *extra,
    ]


def test_recipe_json_torn_is_named_and_status_still_shows_the_other_runs(tiny_model_dir, tmp_path):
    runs = tmp_path / "runs"
    for name in ("good", "torn"):
        assert run_fgrpo(*launch_args(tiny_model_dir, runs, "--logging.run-name", name), cwd=tmp_path).returncode == 0
    torn = runs / "torn" / "recipe.json"
    torn.write_text(torn.read_text()[:100])
    res = run_fgrpo("status", str(runs), "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["run"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert rows["good"]["run_state"] == "completed" and rows["good"]["max_steps"] == 1
    assert str(torn) in rows["torn"]["reason"] and "unreadable recipe" in rows["torn"]["reason"]
    for cmd in (
        ["eval", str(runs / "torn")],
        ["export", str(runs / "torn"), str(tmp_path / "out")],
        ["resume", str(runs / "torn")],
    ):
        res = run_fgrpo(*cmd)
        assert res.returncode != 0 and str(torn) in res.stderr, (cmd, res.stderr)
    res = run_fgrpo(*launch_args(tiny_model_dir, runs, "--logging.run-name", "torn"), cwd=tmp_path)
    assert res.returncode == 2 and str(torn) in res.stderr


def test_checkpoints_are_not_adopted_without_their_recipe(tiny_model_dir, tmp_path):
    runs = tmp_path / "runs"
    assert run_fgrpo(*launch_args(tiny_model_dir, runs, "--logging.run-name", "r"), cwd=tmp_path).returncode == 0
    (runs / "r" / "recipe.json").unlink()
    res = run_fgrpo(*launch_args(tiny_model_dir, runs, "--logging.run-name", "r", "--optim.lr", "0.5"), cwd=tmp_path)
    assert res.returncode == 2 and "holds checkpoints but no recipe.json" in res.stderr
    assert not (runs / "r" / "recipe.json").exists()
    # Put back a recipe.json of another recipe by hand: the checkpoints' manifests still refuse it.
    from fgrpo.cli.launch import RecipeArgs, parse_recipe_args

    _, args = parse_recipe_args(
        "show", launch_args(tiny_model_dir, runs, "--logging.run-name", "r", "--optim.lr", "0.5")[1:], RecipeArgs
    )
    RunFolder(runs / "r").write_recipe(args.recipe)
    res = run_fgrpo(*launch_args(tiny_model_dir, runs, "--logging.run-name", "r", "--optim.lr", "0.5"), cwd=tmp_path)
    assert res.returncode == 2 and "was trained with a different recipe" in res.stderr


def test_recipe_json_is_written_atomically_and_only_when_it_changes(tiny_model_dir, tmp_path, monkeypatch):
    import fgrpo.fileio as fileio

    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(fileio.os, "replace", lambda a, b: (replaced.append((a, b)), real_replace(a, b)))
    recipe = small_recipe(tiny_model_dir, max_steps=1)
    run = RunFolder(tmp_path / "run")
    run.write_recipe(recipe)
    assert [os.path.basename(b) for _, b in replaced] == ["recipe.json"]  # a temporary file renamed over it
    run.write_recipe(recipe)
    assert len(replaced) == 1  # unchanged: not rewritten


def test_status_shows_error_text_that_looks_like_markup(tmp_path):
    """gloo's errors start with "[/path/pair.cc:553]", which rich would read as a closing tag."""
    from fgrpo.recipe.io import load_recipe_file

    folder = RunFolder(tmp_path / "runs" / "failed")
    folder.write_recipe(load_recipe_file(REPO / "recipes" / "tiny.py"))
    reason = "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer"
    folder.write_status("failed", reason)
    for target in (folder.path, folder.path.parent):
        res = run_fgrpo("status", str(target), timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "pair.cc:553] Connection closed" in res.stdout.replace("\n", "")


def test_damaged_bookkeeping_gets_a_row_naming_it(tmp_path):
    """A jobs.jsonl record without "kind" and a status.json whose state is not a state: `fgrpo
    status` shows every run, each damaged one with a note naming the file (docs/design.md)."""
    from fgrpo.recipe.io import load_recipe_file

    recipe = load_recipe_file(REPO / "recipes" / "tiny.py")
    runs = tmp_path / "runs"
    for name in ("jobs", "status", "fine"):
        folder = RunFolder(runs / name)
        folder.write_recipe(recipe)
        folder.record_job("local", "host:1:2", "train")
        folder.write_status("completed")
    with open(runs / "jobs" / "jobs.jsonl", "a") as f:
        f.write(json.dumps({"backend": "local", "job_id": "x"}) + "\n")
    (runs / "status" / "status.json").write_text('{"state": 5}')
    res = run_fgrpo("status", str(runs), "--json", timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {r["run"]: r for r in map(json.loads, res.stdout.splitlines()[:3])}
    assert rows["fine"]["reason"] == "" and rows["fine"]["run_state"] == "completed"
    assert "jobs.jsonl: record(s) 2 lack" in rows["jobs"]["reason"] and rows["jobs"]["run_state"] == "completed"
    assert "status.json is damaged" in rows["status"]["reason"] and rows["status"]["run_state"] == "-"
    table = run_fgrpo("status", str(runs), timeout=120)
    assert table.returncode == 0 and "status.json is damaged" in table.stdout.replace("\n", "")
    report = run_fgrpo("report", str(runs), "--out", str(tmp_path / "all.html"), timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]


def test_a_prompt_file_edited_between_stop_and_resume_is_refused(tiny_model_dir, tmp_path):
    """Its last lines are the held-out set: an edit would make before/after compare other prompts."""
    from tests.helpers.runs import tiny_launch_args

    prompts = tmp_path / "prompts.txt"
    prompts.write_text((REPO / "prompts" / "tiny.txt").read_text())
    args = tiny_launch_args(tiny_model_dir, tmp_path / "runs", 1, "--prompts.file", str(prompts))
    first = run_fgrpo(*args, cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    recorded = json.loads((tmp_path / "runs" / "run" / "prompts.json").read_text())
    prompts.write_text(prompts.read_text() + "a green kite at dawn\n")
    again = run_fgrpo(*args[:-2], "--optim.max-steps", "2", "--prompts.file", str(prompts), cwd=tmp_path, timeout=300)
    assert again.returncode == 2 and "prompts.file" in again.stderr and "changed since this run started" in again.stderr
    # The in-job entry refuses too (a queued job that starts after the edit), recording why.
    from fgrpo.trainer.trainer import Trainer

    with pytest.raises(ValueError, match="prompts.file"):
        Trainer(RunFolder(tmp_path / "runs" / "run").read_recipe(), tmp_path / "runs" / "run")
    assert json.loads((tmp_path / "runs" / "run" / "prompts.json").read_text()) == recorded
