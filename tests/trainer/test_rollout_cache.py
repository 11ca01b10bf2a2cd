"""`rollout.cache` (issue 22): diffusers' training-free caches on the deterministic steps only. The SDE
step is never approximated, the cache state lives for one micro-batch, and the training pass runs
the plain model, so the on-policy ratio stays exactly 1 for every kind."""

import dataclasses
from contextlib import contextmanager
from typing import cast

import pytest
import torch

from fgrpo.trainer import rollout as rollout_mod
from fgrpo.trainer import rollout_cache as cache_mod
from fgrpo.trainer.compute import measure_step
from fgrpo.trainer.rollout import sample, video_generators
from fgrpo.trainer.rollout_cache import CacheConfig, calibrate_mag_ratios, rollout_cache
from fgrpo.trainer.trainer import Trainer
from tests.helpers.recipes import small_recipe

KINDS = ("first_block", "mag", "taylorseer")
STEPS = 6
MAG_RATIOS = (1.0,) * STEPS  # magnitudes that never change: MagCache skips whenever it may


@pytest.fixture(autouse=True)
def first_block_skips_on_the_tiny_model(monkeypatch):
    # the tiny model's first-block residual moves by 8-16 % a step: diffusers' 5 % never skips there
    monkeypatch.setattr(cache_mod, "FIRST_BLOCK_THRESHOLD", 0.2)


def _recipe(tiny_model_dir, mode: str = "flash", **rollout):
    r = small_recipe(tiny_model_dir, max_steps=1)
    R = dataclasses.replace
    return R(
        r,
        rollout=R(r.rollout, steps=STEPS, **rollout),
        timesteps=R(r.timesteps, window=(1, 5)),
        algorithm=R(r.algorithm, mode=mode),
    )


@pytest.fixture(scope="module")
def trainer(tiny_model_dir, tmp_path_factory) -> Trainer:
    """One float32 tiny policy (FSDP2-wrapped, as training runs it) for the sampler-level tests."""
    return Trainer(_recipe(tiny_model_dir), tmp_path_factory.mktemp("run"))


def _config(kind: str) -> CacheConfig:
    return CacheConfig(kind, STEPS, MAG_RATIOS if kind == "mag" else ())


def _inputs(t: Trainer, n: int, seed: int = 0):
    p = t.policy
    x0 = torch.randn(n, *p.latent_shape, generator=torch.Generator().manual_seed(seed))
    return x0, p.encode(t.sampler.next(n)), p.negative_context(n)


def _sample(t: Trainer, x, ctx, neg, mask, cache=None, micro_batch: int = 8, start=None, first_video: int = 0):
    p = t.policy
    with p.rollout():
        return sample(
            p.transformer,
            x,
            ctx,
            neg,
            p.sigmas,
            mask,
            p.noise,
            p.cfg_scale,
            video_generators(list(range(first_video, first_video + x.shape[0]))),
            micro_batch,
            start=start,
            cache=cache,
        )


def _blocks(t: Trainer) -> torch.nn.ModuleList:
    return cast(torch.nn.ModuleList, t.policy.transformer.blocks)


@contextmanager
def _block_calls(t: Trainer):
    """A counter of the transformer blocks actually computed (their feed-forward runs)."""
    calls = [0]
    ffns = [cast(torch.nn.Module, block.ffn) for block in _blocks(t)]
    handles = [ffn.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for ffn in ffns]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def _cache_hooks(t: Trainer) -> list:
    return cache_mod._hooks(t.policy.transformer)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [4, 5])  # steps each kind would otherwise skip at (first_block: 4, the others: 5)
def test_the_sde_step_is_exact_given_its_input_and_the_rest_is_cached(trainer, monkeypatch, kind, k):
    t, n = trainer, 4
    x0, ctx, neg = _inputs(t, n)
    mask = torch.zeros(n, STEPS, dtype=torch.bool)
    mask[:, k] = True
    steps = []  # (mean, log_prob) of every SDE step the sampler takes
    real = rollout_mod.sde_step

    def spy(*a, **kw):
        out = real(*a, **kw)
        steps.append((out.mean.clone(), out.log_prob.clone()))
        return out

    monkeypatch.setattr(rollout_mod, "sde_step", spy)
    plain, plain_trans = _sample(t, x0, ctx, neg, mask)
    with rollout_cache(t.policy.transformer, _config(kind)) as cache:
        out, trans = _sample(t, x0, ctx, neg, mask, cache)
    assert not torch.equal(trans.x, plain_trans.x) and not torch.equal(out, plain)  # the prefix was cached
    assert float((out - plain).norm() / plain.norm()) < 0.2  # approximated, not broken
    # the uncached sampler started at σ_k from the cached rollout's x_k takes bitwise the same SDE step
    again, again_trans = _sample(t, trans.x, ctx, neg, mask, start=torch.full((n,), k))
    (mean, log_prob), (mean_plain, log_prob_plain) = steps[1], steps[2]
    assert torch.equal(mean, mean_plain) and torch.equal(log_prob, log_prob_plain)
    assert torch.equal(trans.x_next, again_trans.x_next) and torch.equal(trans.log_prob, again_trans.log_prob)
    assert not _cache_hooks(t) and not t.policy.transformer.is_cache_enabled  # removed on exit


@pytest.mark.parametrize("kind", KINDS)
def test_the_cache_skips_blocks_and_the_flop_counter_sees_it(trainer, kind):
    t, n = trainer, 2
    x0, ctx, neg = _inputs(t, n, seed=1)
    mask = torch.zeros(n, STEPS, dtype=torch.bool)
    mask[[0, 1], [1, 4]] = True  # one forward per step, two of them holding an SDE step
    with _block_calls(t) as calls:
        _, plain = measure_step(t.policy.transformer, lambda: _sample(t, x0, ctx, neg, mask), 1)
        plain_blocks, calls[0] = calls[0], 0
        with rollout_cache(t.policy.transformer, _config(kind)) as cache:
            _, cached = measure_step(t.policy.transformer, lambda: _sample(t, x0, ctx, neg, mask, cache), 1)
    assert plain_blocks == STEPS * len(_blocks(t))
    assert calls[0] < plain_blocks  # blocks skipped on some deterministic step
    assert cached.flops_rollout < plain.flops_rollout  # compute/flops counts what was computed
    assert cached.forward_passes == plain.forward_passes  # a cached call is still a transformer call


@pytest.mark.parametrize("kind", KINDS)
def test_state_is_reset_per_micro_batch_and_rollout(trainer, kind):
    t, n = trainer, 4
    x0, ctx, neg = _inputs(t, n, seed=2)
    x1 = torch.randn_like(x0)
    mask = torch.zeros(n, STEPS, dtype=torch.bool)
    mask[range(n), [1, 2, 3, 4]] = True
    with rollout_cache(t.policy.transformer, _config(kind)) as cache:
        first = _sample(t, x0, ctx, neg, mask, cache)
        _sample(t, x1, ctx, neg, mask, cache)  # another rollout in between
        again = _sample(t, x0, ctx, neg, mask, cache)
        halves = _sample(t, x0, ctx, neg, mask, cache, micro_batch=2)
    with rollout_cache(t.policy.transformer, _config(kind)) as fresh:
        fresh_first = _sample(t, x0, ctx, neg, mask, fresh)
        halves_alone = (slice(0, 2), slice(2, 4))
        pieces = [_sample(t, x0[s], ctx[s], neg[s], mask[s], fresh, first_video=s.start) for s in halves_alone]
    assert torch.equal(first[0], again[0]) and torch.equal(first[0], fresh_first[0])
    assert torch.equal(first[1].log_prob, again[1].log_prob)
    # two micro-batches: each its own state, as if sampled alone
    assert torch.equal(halves[0], torch.cat([pieces[0][0], pieces[1][0]]))


def test_mag_ratios_calibrate_with_diffusers_calibration_mode(trainer, capsys):
    t, n = trainer, 2
    x0, ctx, neg = _inputs(t, n, seed=3)
    none = torch.zeros(n, STEPS, dtype=torch.bool)
    ratios = calibrate_mag_ratios(t.policy.transformer, STEPS, n, lambda c: _sample(t, x0, ctx, neg, none, c))
    assert len(ratios) == STEPS and ratios[0] == 1.0 and all(0 < r < 10 for r in ratios)
    assert len(set(ratios)) > 1  # measured, not a default
    assert "Calibration Complete" not in capsys.readouterr().out  # diffusers neither printed nor cleared them
    assert not _cache_hooks(t)
    with rollout_cache(t.policy.transformer, CacheConfig("mag", STEPS, tuple(ratios))) as cache:
        out, _ = _sample(t, x0, ctx, neg, none, cache)
    assert torch.isfinite(out).all()


# --- a Flash-GRPO step end to end ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,extra",
    [
        ("first_block", {}),
        ("mag", {"cache_mag_ratios": MAG_RATIOS}),
        ("taylorseer", {}),
        ("first_block", {"share_prefix": True, "ode_solver": "unipc", "ode_steps": 4}),
    ],
)
def test_a_cached_flash_step_stays_on_policy_and_trains_uncached(tiny_model_dir, tmp_path, kind, extra):
    t = Trainer(_recipe(tiny_model_dir, cache=kind, **extra), tmp_path)
    transformer = t.policy.transformer
    seen = []  # (training mode, cache installed) of every transformer call
    transformer.register_forward_pre_hook(lambda m, *_: seen.append((m.training, m.is_cache_enabled)))
    with _block_calls(t) as calls:
        res = t.run_step(t.sampler.next(t.recipe.rollout.prompts_per_step), lambda: None)
    m = res.metrics
    assert res.applied and m["ratio_dev_max"] == 0.0 and m["clip_frac"] == 0.0
    assert {cached for training, cached in seen if not training} == {True}  # every rollout forward
    assert {cached for training, cached in seen if training} == {False}  # recomputed log pi_old and the loss
    assert calls[0] < len(seen) * len(_blocks(t))  # something was skipped
    assert not cache_mod._hooks(transformer)


# --- the recipe ---------------------------------------------------------------------------------


def _problems(tiny_model_dir, mode="flash", parallelism=None, **rollout):
    from fgrpo.recipe.validate import recipe_problems

    r = _recipe(tiny_model_dir, mode=mode, **rollout)
    if parallelism:
        r = dataclasses.replace(r, parallelism=dataclasses.replace(r.parallelism, **parallelism))
    return recipe_problems(r)


def test_config_errors_name_the_field(tiny_model_dir):
    assert _problems(tiny_model_dir, cache="first_block") == []
    assert _problems(tiny_model_dir, cache="mag", cache_mag_ratios=(1.0, 0.9)) == []
    (e,) = _problems(tiny_model_dir, cache="mag")
    assert e.startswith("rollout.cache:") and "cache_mag_ratios" in e and "Flux" in e
    (e,) = _problems(tiny_model_dir, cache="taylorseer", cache_mag_ratios=(1.0,))
    assert e.startswith("rollout.cache_mag_ratios:")
    (e,) = _problems(tiny_model_dir, mode="full-trajectory", cache="first_block")
    assert e.startswith("rollout.cache:") and "full-trajectory" in e
    (e,) = _problems(tiny_model_dir, cache="taylorseer", parallelism={"compile": True})
    assert e.startswith("rollout.cache:") and "parallelism.compile" in e
    assert any(
        e.startswith("rollout.cache:") and "tp > 1" in e
        for e in _problems(tiny_model_dir, cache="mag", cache_mag_ratios=(1.0,), parallelism={"tp": 2})
    )
    assert any(e.startswith("rollout.cache:") for e in _problems(tiny_model_dir, cache="teacache"))
    assert any(e.startswith("rollout.cache_mag_ratios:") for e in _problems(tiny_model_dir, cache_mag_ratios=(0.0,)))


def test_the_cli_refuses_mag_without_ratios():
    from tests.conftest import run_fgrpo

    res = run_fgrpo("plan", "recipes/tiny.py", "--rollout.cache", "mag", timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "rollout.cache" in res.stderr and "cache_mag_ratios" in res.stderr, res.stderr[-2000:]
