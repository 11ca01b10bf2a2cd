"""flash, fast and full-trajectory share one step function; only where the SDE steps fall differs."""

import dataclasses

import pytest
import torch

from fgrpo.trainer import rollout as rollout_mod
from fgrpo.trainer.trainer import Trainer
from tests.helpers.recipes import small_recipe


@pytest.mark.parametrize("mode", ["flash", "fast", "full-trajectory"])
def test_one_step_per_mode(tiny_model_dir, tmp_path, monkeypatch, mode):
    r = small_recipe(tiny_model_dir, max_steps=1)
    r = dataclasses.replace(r, algorithm=dataclasses.replace(r.algorithm, mode=mode))
    t = Trainer(r, tmp_path)
    recorded = []
    real_sample = rollout_mod.sample

    def spy(*args, **kwargs):
        final, trans = real_sample(*args, **kwargs)
        recorded.append(trans)
        return final, trans

    monkeypatch.setattr("fgrpo.trainer.flash_grpo.sample", spy)
    before = {k: v.detach().clone() for k, v in t.params.items()}
    res = t.run_step(t.sampler.next(r.rollout.prompts_per_step), lambda: None)
    assert res.applied
    G, P, N = r.rollout.group_size, r.rollout.prompts_per_step, r.rollout.steps
    steps = torch.cat([tr.step for tr in recorded])
    videos = torch.cat([tr.video for tr in recorded])
    if mode == "full-trajectory":
        assert len(steps) == P * G * N
    else:
        assert len(steps) == P * G
        by_video = steps[videos.argsort()].view(P, G)
        shared = (by_video == by_video[:, :1]).all(dim=1)
        if mode == "flash":
            assert shared.all()  # iso-temporal: one index per prompt
            assert len(res.metrics["timestep_indices"]) == P
        lo, hi = r.timesteps.window
        assert ((steps >= lo) & (steps < hi)).all()
    # the recorded old log-probs equal the recomputed ones before the update (on-policy)
    assert res.metrics["ratio_dev"] < 1e-5
    assert any(not torch.equal(before[k], v) for k, v in t.params.items())
