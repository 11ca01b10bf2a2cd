"""`rollout.share_prefix`: a group's videos start from one noise, its deterministic prefix is integrated
once, the SDE step and everything after stay per video, and the update stays on-policy."""

import dataclasses
import math

import pytest
import torch

from fgrpo.trainer import rollout as rollout_mod
from fgrpo.trainer.rollout import sample, shared_prefix_starts
from fgrpo.trainer.trainer import Trainer
from tests.helpers.forward_rows import sampling_forward_rows
from tests.helpers.recipes import small_recipe


def _trainer(tiny_model_dir, tmp_path, share_prefix: bool, mode: str = "flash") -> Trainer:
    r = small_recipe(tiny_model_dir, max_steps=1)
    R = dataclasses.replace
    r = R(
        r,
        rollout=R(r.rollout, share_prefix=share_prefix),
        algorithm=R(r.algorithm, mode=mode),
        timesteps=R(r.timesteps, window=(1, 3)),
    )  # a prefix of at least one step
    return Trainer(r, tmp_path)


def test_shared_prefix_starts_is_the_groups_earliest_sde_step():
    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask[[0, 1, 2, 3, 4], [3, 1, 4, 2, 0]] = True  # video 5 takes no SDE step
    group = torch.tensor([0, 0, 1, 1, 2, 2])
    assert shared_prefix_starts(mask, group).tolist() == [1, 1, 2, 2, 0, 0]


def test_sample_in_two_pieces_equals_sample_in_one(tiny_model_dir, tmp_path):
    """Integrating σ_0 → σ_k and then σ_k → 0 (per-row k) gives the one-piece ODE's latents."""
    t = _trainer(tiny_model_dir, tmp_path, share_prefix=False)
    p = t.policy
    n = 3
    x0 = torch.randn(n, *p.latent_shape, generator=torch.Generator().manual_seed(0))
    ctx, neg = p.encode(t.sampler.next(n)), p.negative_context(n)
    no_sde = torch.zeros(n, len(p.sigmas) - 1, dtype=torch.bool)
    gens = rollout_mod.video_generators([1, 2, 3])
    args = (ctx, neg, p.sigmas, no_sde, p.noise, p.cfg_scale, gens, 8)
    whole, _ = sample(p.transformer, x0, *args)
    k = torch.tensor([0, 1, 3])
    mid, _ = sample(p.transformer, x0, *args, end=k)
    assert torch.equal(mid[0], x0[0])  # a zero-length prefix leaves the noise as it is
    pieces, _ = sample(p.transformer, mid, *args, start=k)
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["flash", "full-trajectory"])
def test_a_group_shares_its_prefix_and_differs_after_it(tiny_model_dir, tmp_path, monkeypatch, mode):
    t = _trainer(tiny_model_dir, tmp_path, share_prefix=True, mode=mode)
    r = t.recipe
    P, G, N = r.rollout.prompts_per_step, r.rollout.group_size, r.rollout.steps
    recorded = []

    def spy(*args, **kwargs):
        final, trans = rollout_mod.sample(*args, **kwargs)
        recorded.append(trans)
        return final, trans

    rows = sampling_forward_rows(monkeypatch)
    monkeypatch.setattr("fgrpo.trainer.flash_grpo.sample", spy)
    res = t.run_step(t.sampler.next(P), lambda: None)
    assert res.applied
    trans = rollout_mod.Transitions.cat([tr for tr in recorded if len(tr)])
    first = {}  # each video's state at its first SDE step
    for v, s, x in zip(trans.video.tolist(), trans.step.tolist(), trans.x):
        if v not in first or s < first[v][0]:
            first[v] = (s, x)
    for g in range(P):
        states = [first[g * G + j][1] for j in range(G)]
        assert all(torch.equal(states[0], s) for s in states[1:])  # one prefix per group
    if mode == "flash":
        k = torch.tensor(res.metrics["timestep_indices"])
        # forward rows: the prefix once per prompt, the rest once per video
        assert sum(rows) == int(k.sum()) + G * int((N - k).sum())
        assert sum(rows) < P * G * N
        assert not torch.equal(trans.x_next[0], trans.x_next[1])  # the SDE noise is each video's own
    else:
        assert sum(rows) == P * G * N  # no deterministic prefix: only the initial noise is shared
    assert res.metrics["ratio_dev"] < 1e-5  # the training pass's log-probs are the rollout's


def test_share_prefix_off_draws_noise_per_video(tiny_model_dir, tmp_path, monkeypatch):
    t = _trainer(tiny_model_dir, tmp_path, share_prefix=False)
    rows = sampling_forward_rows(monkeypatch)
    monkeypatch.setattr("fgrpo.trainer.flash_grpo.sample", rollout_mod.sample)
    r = t.recipe
    t.run_step(t.sampler.next(r.rollout.prompts_per_step), lambda: None)
    assert sum(rows) == r.rollout.prompts_per_step * r.rollout.group_size * r.rollout.steps


def test_share_prefix_on_two_processes_in_bf16(tiny_model_dir, tmp_path):
    """dp_shard=2 in bf16 (how the paper recipes run), 3 groups of 2 videos on 2 ranks: the middle
    group is split, and each rank integrates its prefix for its own videos; the update stays on-policy."""
    from tests.helpers.runs import launch_tiny, train_metrics

    args = ["--rollout.share-prefix", "--model.dtype", "bfloat16", "--rollout.prompts-per-step", "3"]
    args += ["--rollout.group-size", "2", "--timesteps.window", "1", "3"]
    run = launch_tiny(tiny_model_dir, tmp_path / "runs", 2, 2, *args)
    train = train_metrics(run)
    assert [m["step"] for m in train] == [1, 2]
    assert all(m["ratio_dev_max"] == 0.0 and math.isfinite(m["loss"]) for m in train)
