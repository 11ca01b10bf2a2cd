"""Versions: recipe.json, status.json, rewards.json and checkpoint manifests record the fgrpo and
format version that wrote them; a newer format is refused (naming the file and both versions)
before anything is written; a folder from before the fields existed (format 1) still resumes."""

import json

import pytest

import fgrpo
from fgrpo.cli.launch import check_existing_run
from fgrpo.recipe.config import Recipe
from fgrpo.recipe.io import load_recipe_file, training_fingerprint
from fgrpo.rewards.identity import reward_identities
from fgrpo.run_folder import RUN_FORMAT_VERSION, RunFolder, RunFormatError
from fgrpo.run_folder.checkpoints import MANIFEST, write_manifest
from fgrpo.trainer.entry import train_run
from fgrpo.trainer.signals import StopFlag
from tests.conftest import REPO, run_fgrpo
from tests.helpers import present
from tests.helpers.recipes import small_recipe

VERSION_FIELDS = ("fgrpo_version", "format_version")


def rewrite(path, **fields):
    """Set (a value) or drop (None) top-level fields of a JSON record."""
    record = json.loads(path.read_text())
    for k, v in fields.items():
        record.pop(k) if v is None else record.__setitem__(k, v)
    path.write_text(json.dumps(record))


def stopped_run(tmp_path) -> tuple[RunFolder, Recipe]:
    """A run folder as this fgrpo writes it, without training: recipe, status, rewards, a checkpoint."""
    recipe = load_recipe_file(REPO / "recipes" / "tiny.py")
    run = RunFolder(tmp_path / "run")
    run.write_recipe(recipe)
    run.write_status("stopped", "signal 15: checkpoint saved, waiting to be resumed")
    run.record_rewards(reward_identities(recipe.rewards))
    ckpt = run.checkpoint(3)
    ckpt.mkdir(parents=True)
    (ckpt / ".metadata").write_bytes(b"dcp metadata")
    write_manifest(ckpt, training_fingerprint(recipe), 3)
    return run, recipe


RECORDS = ["recipe.json", "status.json", "rewards.json", f"checkpoints/step-3/{MANIFEST}"]


@pytest.mark.parametrize("record", RECORDS)
def test_a_newer_format_is_refused_naming_the_file_and_both_versions(tmp_path, record):
    run, recipe = stopped_run(tmp_path)
    assert json.loads((run.path / record).read_text())["format_version"] == RUN_FORMAT_VERSION
    run.check_format()  # this fgrpo's own folder
    rewrite(run.path / record, fgrpo_version="9.0.0", format_version=RUN_FORMAT_VERSION + 1)
    status_before = (run.path / "status.json").read_text()
    with pytest.raises(RunFormatError) as refused:
        run.check_format()
    message = str(refused.value)
    assert message.startswith(
        f"{run.path / record} was written by fgrpo 9.0.0 in run-folder format "
        f"{RUN_FORMAT_VERSION + 1}, newer than this fgrpo ({fgrpo.__version__}) reads "
        f"(format {RUN_FORMAT_VERSION})"
    ), message
    with pytest.raises(RunFormatError, match="newer than this fgrpo"):  # `fgrpo launch` of the same run
        check_existing_run(run.path, recipe)
    assert train_run(run.path, StopFlag(signals=())) == 2  # the in-job entry: bad input, nothing written
    assert (run.path / "status.json").read_text() == status_before and not run.lock().path.exists()


def test_fgrpo_resume_refuses_a_newer_run_folder_with_exit_2(tmp_path):
    run, _ = stopped_run(tmp_path)
    rewrite(run.path / "status.json", fgrpo_version="9.0.0", format_version=RUN_FORMAT_VERSION + 1)
    res = run_fgrpo("resume", str(run.path), cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert (
        f"fgrpo: error: {run.path / 'status.json'} was written by fgrpo 9.0.0 in run-folder format "
        f"{RUN_FORMAT_VERSION + 1}"
    ) in res.stderr


def test_records_carry_versions_and_an_old_folder_without_them_resumes(tiny_model_dir, tmp_path):
    from fgrpo.trainer.trainer import Trainer

    run = RunFolder(tmp_path / "run")
    run.write_recipe(small_recipe(tiny_model_dir, max_steps=4))
    assert Trainer(small_recipe(tiny_model_dir, max_steps=2), run.path).run() == 0
    run.write_status("stopped", "signal 15: checkpoint saved, waiting to be resumed")
    records = [run.recipe_file, run.path / "status.json", run.rewards_file, run.checkpoint(2) / MANIFEST]
    for path in records:
        found = json.loads(path.read_text())
        assert (found["fgrpo_version"], found["format_version"]) == (fgrpo.__version__, RUN_FORMAT_VERSION), path

    # The same folder as an fgrpo from before versions and reward identities wrote it: format 1.
    for path in records:
        rewrite(path, **dict.fromkeys(VERSION_FIELDS))
    run.rewards_file.unlink()
    run.check_format()
    assert train_run(run.path, StopFlag(signals=())) == 0
    assert run.read_status()["state"] == "completed" and present(run.latest_checkpoint(), "checkpoint")[0] == 4
    assert [r["step"] for r in run.read_metrics("train")] == [1, 2, 3, 4]
    assert (
        present(run.read_rewards(), "rewards.json")[0]["name"] == "brightness"
    )  # recorded at its first start with this fgrpo

    # A checkpoint of a newer format is refused, not skipped for the older one beside it.
    rewrite(run.checkpoint(4) / MANIFEST, fgrpo_version="9.0.0", format_version=RUN_FORMAT_VERSION + 1)
    with pytest.raises(RunFormatError, match=f"{run.checkpoint(4) / MANIFEST} was written by fgrpo 9.0.0"):
        Trainer(small_recipe(tiny_model_dir, max_steps=6), run.path).resume()
