import math

import pytest
import torch

from fgrpo.algorithm import (
    NOISE_SCHEDULES,
    kl_to_reference,
    noise_scale,
    ode_step,
    sde_log_prob,
    sde_step,
    wan_sigmas,
)
from fgrpo.algorithm.schedule import per_sample

SHAPE = (3, 4, 2, 5, 6)  # [B, C, F, H, W]


def test_wan_sigmas_reference_timesteps():
    sig = wan_sigmas(20, 3.0)
    assert sig.dtype == torch.float64
    assert sig.shape == (21,)
    assert sig[-1] == 0.0
    ts = (sig * 1000).long()[:10].tolist()
    assert ts == [999, 982, 963, 944, 922, 899, 874, 847, 817, 785]
    assert torch.all(sig[1:] < sig[:-1])  # strictly decreasing


def test_wan_sigmas_shift_one_is_linear_and_validation():
    sig = wan_sigmas(4, 1.0, sigma_max=1.0)
    torch.testing.assert_close(sig, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        wan_sigmas(0, 3.0)
    with pytest.raises(ValueError):
        wan_sigmas(10, 0.0)


def test_per_sample_reshape():
    like = torch.zeros(SHAPE)
    t = torch.arange(3.0)
    reshaped = per_sample(t, like)
    assert isinstance(reshaped, torch.Tensor) and reshaped.shape == (3, 1, 1, 1, 1)
    assert per_sample(0.5, like) == 0.5
    with pytest.raises(ValueError):
        per_sample(torch.arange(2.0), like)


def test_ode_step_scalar_and_per_sample():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    torch.testing.assert_close(ode_step(x, v, 0.8, 0.7), x - 0.1 * v)
    sig = torch.tensor([0.9, 0.5, 0.3])
    nxt = torch.tensor([0.8, 0.3, 0.0])
    out = ode_step(x, v, sig, nxt)
    for b in range(3):
        torch.testing.assert_close(out[b], x[b] + (nxt[b] - sig[b]) * v[b])


def test_noise_scale_kinds():
    sig = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(noise_scale("wan", sig, 0.98, 123.0), 0.98 * sig)
    torch.testing.assert_close(noise_scale("flow-grpo", sig, 0.98, 0.7), 0.7 * torch.sqrt(sig / (1 - sig)))
    torch.testing.assert_close(noise_scale("dance-grpo", sig, 0.98, 0.3), torch.full_like(sig, 0.3))
    assert math.isfinite(float(noise_scale("flow-grpo", 1.0, 0.98, 0.7)))
    assert float(noise_scale("wan", 0.5, 0.9, 0.0)) == pytest.approx(0.45)
    assert NOISE_SCHEDULES == ("wan", "flow-grpo", "dance-grpo")
    with pytest.raises(ValueError, match="bogus"):
        noise_scale("bogus", sig, 0.98, 0.3)


def test_sde_mean_and_std_formula():
    g = torch.Generator().manual_seed(1)
    x, v, eps = (torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(3))
    sigma, nxt, s_t = 0.8, 0.6, 0.5
    out = sde_step(x, v, sigma, nxt, s_t, noise=eps)
    dt = nxt - sigma
    mean = x + (v + s_t**2 / (2 * sigma) * (x + (1 - sigma) * v)) * dt
    torch.testing.assert_close(out.mean, mean)
    torch.testing.assert_close(out.std, torch.full((3,), s_t * math.sqrt(0.2), dtype=torch.float64))
    torch.testing.assert_close(out.prev_sample, mean + s_t * math.sqrt(0.2) * eps)


def test_sde_log_prob_matches_normal():
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    sigma = torch.tensor([0.99, 0.7, 0.4])
    nxt = torch.tensor([0.95, 0.6, 0.35])
    s_t = noise_scale("wan", sigma, 0.98, 0.0)
    out = sde_step(x, v, sigma, nxt, s_t, generator=g)
    assert out.log_prob.shape == (3,)
    std = out.std.reshape(-1, 1, 1, 1, 1)
    ref = torch.distributions.Normal(out.mean, std).log_prob(out.prev_sample).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(out.log_prob, ref)
    torch.testing.assert_close(sde_log_prob(out.prev_sample, out.mean, out.std), ref)


def test_sde_per_sample_matches_individual_calls():
    g = torch.Generator().manual_seed(3)
    x, v, eps = (torch.randn(SHAPE, generator=g) for _ in range(3))
    sig = wan_sigmas(20, 3.0)
    idx = torch.tensor([0, 5, 9])
    s_t = noise_scale("wan", sig[idx], float(sig[1]), 0.0)
    batch = sde_step(x, v, sig[idx], sig[idx + 1], s_t, noise=eps)
    for b, i in enumerate(idx.tolist()):
        one = sde_step(
            x[b : b + 1], v[b : b + 1], float(sig[i]), float(sig[i + 1]), float(s_t[b]), noise=eps[b : b + 1]
        )
        torch.testing.assert_close(batch.prev_sample[b : b + 1], one.prev_sample)
        torch.testing.assert_close(batch.log_prob[b : b + 1], one.log_prob)


def test_recomputed_log_prob_equals_sampling_time():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(SHAPE, generator=g).to(torch.bfloat16)
    v = torch.randn(SHAPE, generator=g).to(torch.bfloat16)
    sampled = sde_step(x, v, 0.9, 0.85, 0.8, generator=g)
    again = sde_step(x, v, 0.9, 0.85, 0.8, prev_sample=sampled.prev_sample)
    torch.testing.assert_close(again.log_prob, sampled.log_prob, rtol=0, atol=0)
    torch.testing.assert_close(again.prev_sample, sampled.prev_sample, rtol=0, atol=0)
    # a changed velocity must change the recomputed log-prob (it is not just echoed back)
    moved = sde_step(x, v + 5.0, 0.9, 0.85, 0.8, prev_sample=sampled.prev_sample)
    assert torch.all(moved.log_prob < sampled.log_prob)


def test_generator_reproducible():
    x, v = torch.ones(SHAPE), torch.zeros(SHAPE)
    a = sde_step(x, v, 0.9, 0.8, 0.5, generator=torch.Generator().manual_seed(7))
    b = sde_step(x, v, 0.9, 0.8, 0.5, generator=torch.Generator().manual_seed(7))
    c = sde_step(x, v, 0.9, 0.8, 0.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.prev_sample, b.prev_sample)
    assert not torch.equal(a.prev_sample, c.prev_sample)


def test_sde_tends_to_ode_as_noise_vanishes():
    g = torch.Generator().manual_seed(5)
    x, v = torch.randn(SHAPE, generator=g, dtype=torch.float64), torch.randn(SHAPE, generator=g, dtype=torch.float64)
    ode = ode_step(x, v, 0.7, 0.6)
    errs = []
    for s_t in (1e-1, 1e-2, 1e-3, 1e-4):
        out = sde_step(x, v, 0.7, 0.6, s_t, generator=g)
        errs.append(float((out.prev_sample - ode).abs().max()))
    assert errs[-1] < 1e-4
    assert all(b < a for a, b in zip(errs, errs[1:]))


def test_kl_to_reference():
    g = torch.Generator().manual_seed(6)
    mu, mu_ref = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    std = torch.tensor([0.1, 0.2, 0.3])
    kl = kl_to_reference(mu, mu_ref, std)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, std.reshape(-1, 1, 1, 1, 1)),
        torch.distributions.Normal(mu_ref, std.reshape(-1, 1, 1, 1, 1)),
    ).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(kl, ref)
    assert torch.all(kl_to_reference(mu, mu, std) == 0)


def _flow_grpo_step_std(sig: torch.Tensor, a: float) -> torch.Tensor:
    """The SDE step's std s_t * sqrt|dt| at every step, as the rollout computes s_t."""
    s_t = noise_scale("flow-grpo", sig[:-1], float(sig[1]), a)
    return s_t * torch.sqrt(sig[:-1] - sig[1:])


def test_flow_grpo_first_step_is_sane_on_wans_grid():
    """Wan's grid starts at 0.99967, not 1: unguarded, s_0 = a sqrt(sigma / (1 - sigma)) ~ 38 and the
    first SDE step has std ~ 5 (the latent itself has std 1). Guarded like Flow-GRPO's sigma = 1, it
    is ~ a, in line with the next steps."""
    from fgrpo.recipe.io import load_recipe_file
    from tests.conftest import REPO

    ro = load_recipe_file(REPO / "recipes" / "wan1_3b.py").rollout
    sig = wan_sigmas(ro.steps, ro.flow_shift)
    assert float(sig[0]) == pytest.approx(0.99967, abs=1e-5)
    std = _flow_grpo_step_std(sig, ro.noise_constant)
    assert float(std[0]) == pytest.approx(0.693, abs=1e-3)  # was 5.03
    assert float(noise_scale("flow-grpo", float(sig[0]), float(sig[1]), ro.noise_constant)) == pytest.approx(
        5.278, abs=1e-3
    )
    assert float(std[0]) == pytest.approx(float(std[1]), rel=0.05)
    assert torch.all(std < ro.noise_constant * 1.05)
    # below the second sigma nothing changes: a * sqrt(sigma / (1 - sigma))
    torch.testing.assert_close(
        noise_scale("flow-grpo", sig[1:-1], float(sig[1]), 0.7), 0.7 * torch.sqrt(sig[1:-1] / (1 - sig[1:-1]))
    )


def test_flow_grpo_at_sigma_one_matches_flow_grpo():
    """Flow-GRPO's own guard: at sigma = 1 the denominator is 1 - sigmas[1], so the step's std is a."""
    sig = wan_sigmas(10, 3.0, sigma_max=1.0)
    assert float(sig[0]) == 1.0
    s_0 = noise_scale("flow-grpo", 1.0, float(sig[1]), 0.7)
    assert float(s_0) == pytest.approx(0.7 * math.sqrt(1.0 / (1.0 - float(sig[1]))))
    assert float(_flow_grpo_step_std(sig, 0.7)[0]) == pytest.approx(0.7)
    # a one-step grid (second sigma 0) stays finite
    assert math.isfinite(float(noise_scale("flow-grpo", 1.0, 0.0, 0.7)))


def test_masked_log_prob_and_kl_average_over_the_marked_elements_only():
    """`mask` (Wan2.2-TI2V's imposed first frame): the average runs over the marked elements, what
    lies outside changes nothing (values and gradients), and an all-True mask is the plain mean."""
    gen = torch.Generator().manual_seed(0)
    sample, mean = torch.randn(2, 3, 4, 5, generator=gen), torch.randn(2, 3, 4, 5, generator=gen, requires_grad=True)
    std = torch.tensor([0.3, 0.7])[:, None, None, None]
    frames = torch.tensor([False, True, True, True])[None, None, :, None]  # [1, 1, F, 1]: all but frame 0
    got = sde_log_prob(sample, mean, std, frames)
    by_hand = -((sample - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    assert torch.allclose(got, by_hand[:, :, 1:].mean(dim=(1, 2, 3)), atol=1e-6)
    moved = sample.clone()
    moved[:, :, 0] += 5.0
    assert torch.equal(sde_log_prob(moved, mean, std, frames), got)
    got.sum().backward()
    assert mean.grad is not None and not mean.grad[:, :, 0].any() and mean.grad[:, :, 1:].abs().min() > 0
    everything = torch.ones(1, 1, 4, 1, dtype=torch.bool)
    assert torch.allclose(sde_log_prob(sample, mean, std, everything), sde_log_prob(sample, mean, std), atol=1e-6)
    kl = kl_to_reference(mean.detach(), sample, std, frames)
    assert torch.allclose(kl, ((mean.detach() - sample) ** 2 / (2 * std**2))[:, :, 1:].mean(dim=(1, 2, 3)), atol=1e-6)
