"""Clipped PPO surrogate with optional rectification weights and KL (docs section 3.5)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class PolicyLoss(NamedTuple):
    loss: Tensor  # scalar, mean of per_sample
    per_sample: Tensor  # [B]
    ratio: Tensor  # [B], r = exp(log_prob - old_log_prob)
    clip_fraction: Tensor  # scalar float, fraction of samples with |r - 1| > clip_range


class TotalLoss(NamedTuple):
    loss: Tensor  # scalar: ppo.loss + beta * kl
    ppo: PolicyLoss
    kl: Tensor  # scalar mean KL (0 when unused)


def ppo_clip_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    clip_range: float,
    weights: Tensor | None = None,
) -> PolicyLoss:
    """Clipped PPO surrogate, per sample

        r = exp(log pi_theta - log pi_old)
        L = max(-w A r, -w A clip(r, 1 - eps, 1 + eps)),   loss = mean_k L_k.

    w are the rectification weights (None = 1); since w > 0 they scale both branches alike.
    The max makes the loss pessimistic: once r has moved past the clip bound in the direction
    A favours, the gradient is zero, so one batch cannot push the policy far (eps = 1e-3 in
    Flash-GRPO).
    """
    if clip_range <= 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    ratio = torch.exp(log_prob - old_log_prob.detach())
    adv = advantages.detach().to(ratio.dtype)
    if weights is not None:
        adv = adv * weights.detach().to(ratio.dtype)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    per_sample = torch.maximum(unclipped, clipped)
    clip_fraction = ((ratio.detach() - 1.0).abs() > clip_range).float().mean()
    return PolicyLoss(per_sample.mean(), per_sample, ratio, clip_fraction)


def policy_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    clip_range: float,
    weights: Tensor | None = None,
    kl: Tensor | None = None,
    beta: float = 0.0,
) -> TotalLoss:
    """total = ppo_clip_loss(...).loss + beta * mean(kl).

    kl is the per-sample KL to the reference policy ([B], see `kl_to_reference`); Flash-GRPO uses
    beta = 0, in which case kl may be None and is not computed.
    """
    ppo = ppo_clip_loss(log_prob, old_log_prob, advantages, clip_range, weights)
    if beta != 0.0 and kl is None:
        raise ValueError(f"beta={beta} needs a kl tensor")
    kl_mean = kl.mean() if kl is not None else ppo.loss.new_zeros(())
    total = ppo.loss + beta * kl_mean if beta != 0.0 else ppo.loss
    return TotalLoss(total, ppo, kl_mean)
