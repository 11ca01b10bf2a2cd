"""A NaN loss skips the step (counted); K in a row stop the run with the last good checkpoint intact."""

import pytest
import torch

from fgrpo.run_folder import RunFolder
from fgrpo.trainer import flash_grpo
from fgrpo.trainer.failures import NonFiniteError
from fgrpo.trainer.trainer import Trainer
from tests.helpers import present
from tests.helpers.recipes import small_recipe


def test_nan_steps_are_skipped_then_the_run_stops(tiny_model_dir, tmp_path, monkeypatch):
    import dataclasses

    r = small_recipe(tiny_model_dir, max_steps=10, max_nonfinite_steps=3)
    r = dataclasses.replace(r, checkpoint=dataclasses.replace(r.checkpoint, interval=1))
    t = Trainer(r, tmp_path)
    real = flash_grpo.policy_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if t.step >= 2:  # from the third step on, every loss is NaN
            return out._replace(loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(flash_grpo, "policy_loss", poisoned)
    with pytest.raises(NonFiniteError, match="3 steps in a row"):
        t.run()
    assert t.step == 2 and t.nonfinite_total == 3
    assert present(RunFolder(tmp_path).latest_checkpoint(), "checkpoint")[0] == 2
    good = {k: v.detach().clone() for k, v in t.params.items()}
    resumed = Trainer(r, tmp_path)
    assert resumed.resume() and resumed.step == 2
    assert all(torch.equal(good[k], v) for k, v in resumed.params.items())  # NaN never reached the weights
