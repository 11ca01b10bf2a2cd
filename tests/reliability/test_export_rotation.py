"""`fgrpo export` while the run trains: a checkpoint rotated away (checkpoint.keep_last) in the middle
of the read is retried on the newest one; a named step that went is refused with the reason."""

import dataclasses
import json
import shutil

import pytest
import torch.distributed.checkpoint as dcp

from fgrpo.export import CheckpointRotated, export_run
from fgrpo.recipe.io import save_recipe_json
from fgrpo.run_folder import RunFolder
from fgrpo.trainer.trainer import Trainer
from tests.helpers.recipes import small_recipe


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    r = small_recipe(tiny_model_dir, max_steps=4)
    r = dataclasses.replace(r, checkpoint=dataclasses.replace(r.checkpoint, interval=1, keep_last=3))
    run = tmp_path_factory.mktemp("rotation") / "run"
    run.mkdir(parents=True)
    save_recipe_json(r, run / "recipe.json")
    assert Trainer(r, run).run() == 0
    return run


def _rotate_during_the_first_read(monkeypatch, folder: RunFolder):
    """The running job removes the newest-but-two checkpoint while the export reads it, as a save
    followed by keep_last's rotation would; DCP then fails on the files that went."""
    real, calls = dcp.load, {"n": 0}

    def load(state_dict, checkpoint_id=None, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            assert checkpoint_id is not None
            shutil.rmtree(checkpoint_id)
        return real(state_dict, checkpoint_id=checkpoint_id, **kw)

    monkeypatch.setattr(dcp, "load", load)
    return calls


def test_export_retries_on_the_newest_checkpoint_when_its_own_is_rotated(run_dir, tmp_path, monkeypatch):
    folder = RunFolder(run_dir)
    steps = [s for s, _ in folder.complete_checkpoints()]
    calls = _rotate_during_the_first_read(monkeypatch, folder)
    out = export_run(run_dir, tmp_path / "out")
    assert calls["n"] == 2  # read once, gone, read again
    assert json.loads((out / "export.json").read_text())["step"] == steps[-2]  # the newest left


def test_a_named_step_that_is_rotated_away_is_refused_with_the_reason(run_dir, tmp_path, monkeypatch):
    folder = RunFolder(run_dir)
    steps = [s for s, _ in folder.complete_checkpoints()]
    _rotate_during_the_first_read(monkeypatch, folder)
    with pytest.raises(CheckpointRotated, match=rf"step-{steps[0]}.*removed while it was read.*keep_last"):
        export_run(run_dir, tmp_path / "out", step=steps[0])
    assert not (tmp_path / "out").exists()
