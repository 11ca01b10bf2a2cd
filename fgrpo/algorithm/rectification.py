"""Temporal gradient rectification (Flash-GRPO, docs section 3.4)."""

from __future__ import annotations

import torch
from torch import Tensor

Scalar = float | Tensor


def _t(x: Scalar) -> Tensor:
    return x if isinstance(x, Tensor) else torch.tensor(x, dtype=torch.float64)


def lambda_t(sigma: Scalar, sigma_next: Scalar, noise_std_scale: Scalar) -> Tensor:
    """Timestep-dependent scale of the policy gradient of one SDE step.

    With x_next = mu + s_t sqrt|dt| eps, grad_theta log pi = lambda(t) * eps * grad_theta v_theta
    (per element, up to the 1/numel of the averaged log-prob), where

        lambda(t) = sqrt|dt| / s_t + s_t * sqrt|dt| * (1 - sigma) / (2 sigma),  dt = sigma_next - sigma.

    Inputs may be numbers or matching tensors (e.g. per-sample [B]); returns a tensor.
    """
    sig, s_t = _t(sigma), _t(noise_std_scale)
    root_dt = torch.sqrt(torch.abs(_t(sigma_next) - sig))
    return root_dt / s_t + s_t * root_dt * (1.0 - sig) / (2.0 * sig)


def rectification_weights(inv_lambda_local: Tensor, global_mean: Tensor | None = None) -> Tensor:
    """Per-sample loss weights w_k = (1 / lambda(t_k)) / mean over the GLOBAL batch of 1 / lambda.

    Multiplying sample k's loss by 1/lambda(t_k) cancels the timestep-dependent gradient scale,
    so every timestep contributes gradients of the same magnitude. Dividing by the global mean
    (pass the mean over all ranks, `fgrpo.distributed.process_group.global_mean`, when running on
    several) makes the weights average 1 over the whole batch, so the learning rate keeps its
    meaning. With global_mean=None the local mean is used (single process). Weights are detached
    constants.
    """
    inv = inv_lambda_local.detach()
    denom = inv.mean() if global_mean is None else global_mean.detach().to(inv)
    return inv / denom
