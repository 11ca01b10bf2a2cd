"""Pure tensor functions of Flash-GRPO (see docs/flash-grpo.md): schedule, SDE step,
timestep choice, gradient rectification, advantages and the PPO loss."""

from fgrpo.algorithm.advantages import STD_MODES, group_advantages, zero_variance_share
from fgrpo.algorithm.loss import PolicyLoss, TotalLoss, policy_loss, ppo_clip_loss
from fgrpo.algorithm.rectification import lambda_t, rectification_weights
from fgrpo.algorithm.refill import refill_batch_size, refill_pairs, video_sources, zero_variance_mask
from fgrpo.algorithm.schedule import (
    NOISE_SCHEDULES,
    SDEStep,
    kl_to_reference,
    noise_scale,
    ode_step,
    sde_log_prob,
    sde_step,
    wan_sigmas,
)
from fgrpo.algorithm.timesteps import sample_step_indices

__all__ = [
    "NOISE_SCHEDULES",
    "STD_MODES",
    "PolicyLoss",
    "SDEStep",
    "TotalLoss",
    "group_advantages",
    "zero_variance_share",
    "kl_to_reference",
    "lambda_t",
    "noise_scale",
    "ode_step",
    "policy_loss",
    "ppo_clip_loss",
    "rectification_weights",
    "refill_batch_size",
    "refill_pairs",
    "sample_step_indices",
    "sde_log_prob",
    "sde_step",
    "video_sources",
    "wan_sigmas",
    "zero_variance_mask",
]
