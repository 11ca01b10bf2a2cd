"""Group-relative advantages (GRPO, docs section 3.6)."""

from __future__ import annotations

import torch
from torch import Tensor

from fgrpo.algorithm.refill import zero_variance_mask

STD_MODES: tuple[str, ...] = ("global", "group")


def group_advantages(
    rewards: Tensor,
    group_size: int,
    std_mode: str = "global",
    clip: float | None = 5.0,
    eps: float = 1e-4,
) -> Tensor:
    """A = (R - mean of the prompt's G rewards) / (std + eps), clipped to [-clip, clip].

    `rewards` is the GLOBAL batch [num_prompts * G], prompt-major (rollouts of prompt k at
    k*G .. k*G + G - 1); the caller gathers it across ranks. std_mode "global" (Flash-GRPO's
    released code) uses the std of all rewards in the batch, "group" the std of each prompt's G
    rewards. The std is the population std (correction=0, numpy's np.std default): it is defined
    (0, not NaN) for a single reward, and eps keeps A finite when all rewards are equal.
    clip=None disables clipping. Returns the same shape as `rewards`.
    """
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D [num_prompts * group_size], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards cannot be split into groups of {group_size}")
    if std_mode not in STD_MODES:
        raise ValueError(f"unknown std_mode {std_mode!r}; expected one of {STD_MODES}")
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")

    # At least float32: bf16 rewards would quantise the (small) within-group differences.
    dtype = torch.promote_types(rewards.dtype, torch.float32) if rewards.is_floating_point() else torch.float32
    r = rewards.to(dtype)
    groups = r.reshape(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)  # baseline = same-timestep group mean
    if std_mode == "global":
        std = r.std(correction=0)
    else:
        std = groups.std(dim=1, correction=0, keepdim=True)
    adv = (centred / (std + eps)).reshape(-1)
    return adv.clamp(-clip, clip) if clip is not None else adv


def zero_variance_share(rewards: Tensor, group_size: int) -> float:
    """Share of prompt groups whose G rewards are all equal: max - min == 0 within the group, so
    every advantage of the group is 0 and it teaches nothing (`rewards` as in group_advantages)."""
    return float(zero_variance_mask(rewards, group_size).float().mean())
