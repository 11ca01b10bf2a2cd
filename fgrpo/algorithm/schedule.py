"""Sigma grid, ODE step and Flow-GRPO's stochastic (SDE) step for Wan2.1.

Notation (docs/flash-grpo.md): sigma in [0, 1] is the flow-matching noise level (1 = pure noise),
the model predicts a velocity v with x_sigma = (1 - sigma) * x0 + sigma * eps, and sigmas decrease
along the trajectory, so dt = sigma_next - sigma < 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from fgrpo.algorithm.names import NOISE_SCHEDULES

Scalar = float | Tensor


# Last resort for sqrt(sigma / (1 - sigma)) when the grid's second sigma is itself 1.
_FLOW_GRPO_EPS = 1e-6


def wan_sigmas(num_steps: int, shift: float, sigma_max: float = 0.999) -> Tensor:
    """Sigma grid of the released Wan trainer (diffusers 0.33 UniPC flow sigmas).

    sigma_i = linspace(sigma_max, 0, N + 1)[:-1];  sigma'_i = s * sigma_i / (1 + (s - 1) * sigma_i);
    then a final 0 is appended. Returns float64, length N + 1. With N = 20, s = 3 the timesteps
    int(sigma * 1000) start 999, 982, 963, 944, 922, 899, 874, 847, 817, 785.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    if not 0.0 < sigma_max <= 1.0:
        raise ValueError(f"sigma_max must be in (0, 1], got {sigma_max}")
    # float64 so the truncated timesteps (sigma * 1000) match the reference exactly.
    sigmas = torch.linspace(sigma_max, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
    sigmas = shift_sigmas(sigmas, shift)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def shift_sigmas(sigmas: Tensor, shift: float) -> Tensor:
    """The flow shift: sigma' = s * sigma / (1 + (s - 1) * sigma) (s > 1 spends more of a schedule,
    or of training's sampled noise levels, at high noise)."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def per_sample(t: Scalar, like: Tensor) -> Scalar:
    """Reshape a per-sample [B] tensor to [B, 1, 1, ...] so it broadcasts over `like` [B, ...].

    Python numbers and 0-dim tensors are returned unchanged (they broadcast already); tensors
    are moved to like's device. Anything else must already broadcast against `like`.
    """
    if not isinstance(t, Tensor):
        return t
    t = t.to(device=like.device)
    if t.ndim == 1 and like.ndim > 1:
        if t.shape[0] != like.shape[0]:
            raise ValueError(f"per-sample tensor has {t.shape[0]} entries, batch has {like.shape[0]}")
        return t.reshape(-1, *([1] * (like.ndim - 1)))
    return t


def _compute_dtype(x: Tensor) -> torch.dtype:
    # Log-probs of a latent with ~10^5 elements need at least float32 (bf16 would be useless).
    return torch.promote_types(x.dtype, torch.float32)


def _as_tensor(t: Scalar, like: Tensor) -> Tensor:
    """Per-sample-broadcastable tensor in like's dtype/device."""
    t = per_sample(t, like)
    return torch.as_tensor(t, dtype=like.dtype, device=like.device)


def ode_step(x: Tensor, v: Tensor, sigma: Scalar, sigma_next: Scalar) -> Tensor:
    """Deterministic Euler step of the flow ODE: x_next = x + (sigma_next - sigma) * v.

    sigma / sigma_next may be python floats, 0-dim tensors or per-sample [B] tensors.
    """
    dt = per_sample(sigma_next, x) - per_sample(sigma, x)
    if isinstance(dt, Tensor):
        dt = dt.to(x.dtype)
    return x + dt * v


def noise_scale(kind: str, sigma: Scalar, sigma_grid_max: float, constant: float) -> Tensor:
    """Noise scale s_t of the SDE step, for the three published schedules.

    - "wan":        s_t = sigma_max * sigma, with sigma_max = sigma_grid_max = sigmas[1], the
                    SECOND sigma of the grid (Flow-GRPO's Wan trainer); `constant` is ignored.
    - "flow-grpo":  s_t = a * sqrt(sigma / (1 - min(sigma, sigma_grid_max))), a = constant
                    (Flow-GRPO, images). Flow-GRPO puts the second sigma in the denominator at
                    sigma = 1; Wan's grid starts just below 1 (0.99967 at shift 3), where the bare
                    formula gives s_t ~ 38 (an SDE step of std ~ 5), so every sigma above the second
                    is guarded alike: the first step's std is then ~ a, as in Flow-GRPO.
    - "dance-grpo": s_t = eta = constant (DanceGRPO; eta = 0.3 for Wan).

    Returns a tensor shaped like `sigma` (float64 when sigma is a python number).
    """
    sig = sigma if isinstance(sigma, Tensor) else torch.tensor(sigma, dtype=torch.float64)
    if kind == "wan":
        return sigma_grid_max * sig
    if kind == "flow-grpo":
        return constant * torch.sqrt(sig / torch.clamp(1.0 - sig, min=max(1.0 - sigma_grid_max, _FLOW_GRPO_EPS)))
    if kind == "dance-grpo":
        return torch.full_like(sig, constant)
    raise ValueError(f"unknown noise schedule kind {kind!r}; expected one of {NOISE_SCHEDULES}")


class SDEStep(NamedTuple):
    prev_sample: Tensor  # x_next, [B, ...] in the compute dtype (>= float32)
    mean: Tensor  # mu_theta, [B, ...]
    std: Tensor  # s_t * sqrt(|dt|), [B]
    log_prob: Tensor  # log pi(x_next | x) averaged over non-batch elements, [B]


def _element_mean(values: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over the non-batch elements -> [B]; with `mask` (bool, broadcastable to `values`), over
    the elements it marks only (the others count for nothing, gradients included)."""
    if values.ndim <= 1:
        return values
    dims = tuple(range(1, values.ndim))
    if mask is None:
        return values.mean(dim=dims)
    counted = mask.expand_as(values)
    return torch.where(counted, values, 0.0).sum(dim=dims) / counted.sum(dim=dims)


def sde_log_prob(sample: Tensor, mean: Tensor, std: Scalar, mask: Tensor | None = None) -> Tensor:
    """Gaussian log-density, averaged (not summed) over all non-batch elements -> [B].

    log N(x; mu, std^2) = -(x - mu)^2 / (2 std^2) - log(std) - log(2 pi) / 2.
    Averaging keeps the log-ratio O(1) regardless of the latent size (Flow-GRPO convention).
    `std` may be a number, a per-sample [B] tensor, or broadcastable to `sample`.
    `mask` (bool, broadcastable to `sample`): the elements the step samples; the average runs over
    them only, S = {e : mask_e}: log pi = (1 / |S|) sum_{e in S} log N(x_e; mu_e, std^2) (Wan2.2-TI2V's
    text+image mode: its first latent frame is imposed, not sampled; fgrpo.models.wan.first_frame).
    """
    std_t = _as_tensor(std, mean)
    log_p = -((sample.to(mean.dtype) - mean) ** 2) / (2.0 * std_t**2) - torch.log(std_t) - 0.5 * math.log(2.0 * math.pi)
    return _element_mean(log_p, mask)


def sde_step(
    x: Tensor,
    v: Tensor,
    sigma: Scalar,
    sigma_next: Scalar,
    noise_std_scale: Scalar,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    prev_sample: Tensor | None = None,
    mask: Tensor | None = None,
) -> SDEStep:
    """Flow-GRPO's stochastic step (docs section 2), with its log-probability.

    dt = sigma_next - sigma (< 0), s_t = noise_std_scale:
        mu    = x + [v + s_t^2 / (2 sigma) * (x + (1 - sigma) * v)] * dt
        std   = s_t * sqrt(|dt|)
        x_next = mu + std * eps,   eps ~ N(0, I)  (eps = `noise` if given, else randn(generator))
        log_prob = mean over elements of log N(x_next; mu, std^2)  -> [B]

    If `prev_sample` is given (training-time recomputation) nothing is sampled: the log-prob of
    that stored sample under the current mean is returned. sigma, sigma_next and s_t may be
    numbers or per-sample [B] tensors. Computed in >= float32; prev_sample is returned in that
    dtype, so storing it and re-evaluating reproduces the sampling-time log-prob exactly.
    `mask`: the elements the step samples, the only ones log_prob averages over (sde_log_prob); the
    others are still stepped (the caller re-imposes them).
    """
    dtype = _compute_dtype(x)
    x_c, v_c = x.to(dtype), v.to(dtype)
    sig = _as_tensor(sigma, x_c)
    dt = _as_tensor(sigma_next, x_c) - sig
    s_t = _as_tensor(noise_std_scale, x_c)

    # The s_t^2/(2 sigma) term is the score correction that keeps the SDE's marginals equal
    # to the ODE's (score = -(x + (1 - sigma) v) / sigma for rectified flow).
    mean = x_c + (v_c + s_t**2 / (2.0 * sig) * (x_c + (1.0 - sig) * v_c)) * dt
    std = s_t * torch.sqrt(torch.abs(dt))

    if prev_sample is None:
        if noise is None:
            noise = torch.randn(x_c.shape, generator=generator, dtype=dtype, device=x_c.device)
        prev_sample = mean + std * noise.to(dtype)
    else:
        prev_sample = prev_sample.to(dtype)

    log_prob = sde_log_prob(prev_sample, mean, std, mask)
    # std is 0-dim or [B, 1, ...]; report it per sample.
    batch = x.shape[0]
    std_b = std.reshape(-1).expand(batch) if std.numel() == 1 else std.reshape(batch)
    return SDEStep(prev_sample, mean, std_b, log_prob)


def kl_to_reference(mean: Tensor, mean_ref: Tensor, std: Scalar, mask: Tensor | None = None) -> Tensor:
    """KL between the policy's and the reference policy's Gaussian steps (same std) -> [B].

    KL = ||mu_theta - mu_ref||^2 / (2 std^2), averaged over elements; with std = s_t sqrt|dt|
    this is the doc's ||mu_theta - mu_ref||^2 / (2 s_t^2 |dt|). `mask`: averaged over the sampled
    elements only, as sde_log_prob.
    """
    std_t = _as_tensor(std, mean)
    kl = (mean - mean_ref.to(mean.dtype)) ** 2 / (2.0 * std_t**2)
    return _element_mean(kl, mask)
