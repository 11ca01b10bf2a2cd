"""Pure tensor functions of Flash-GRPO (see docs/flash-grpo.md): schedule, SDE step,
timestep choice, gradient rectification, advantages and the PPO loss.

Each name is imported from its module on first use: the CLI's recipe checks need only the option
names (`fgrpo.algorithm.names`, no torch), not the tensor code behind them."""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fgrpo.algorithm.advantages import STD_MODES, group_advantages, zero_variance_share
    from fgrpo.algorithm.loss import PolicyLoss, TotalLoss, policy_loss, ppo_clip_loss
    from fgrpo.algorithm.names import NOISE_SCHEDULES
    from fgrpo.algorithm.rectification import lambda_t, rectification_weights
    from fgrpo.algorithm.refill import refill_batch_size, refill_pairs, video_sources, zero_variance_mask
    from fgrpo.algorithm.schedule import (
        SDEStep,
        kl_to_reference,
        noise_scale,
        ode_step,
        sde_log_prob,
        sde_step,
        wan_sigmas,
    )
    from fgrpo.algorithm.timesteps import sample_step_indices

_HOME = {
    "STD_MODES": "advantages",
    "group_advantages": "advantages",
    "zero_variance_share": "advantages",
    "PolicyLoss": "loss",
    "TotalLoss": "loss",
    "policy_loss": "loss",
    "ppo_clip_loss": "loss",
    "lambda_t": "rectification",
    "rectification_weights": "rectification",
    "refill_batch_size": "refill",
    "refill_pairs": "refill",
    "video_sources": "refill",
    "zero_variance_mask": "refill",
    "SDEStep": "schedule",
    "kl_to_reference": "schedule",
    "noise_scale": "schedule",
    "ode_step": "schedule",
    "sde_log_prob": "schedule",
    "sde_step": "schedule",
    "wan_sigmas": "schedule",
    "NOISE_SCHEDULES": "names",
    "sample_step_indices": "timesteps",
}
__all__ = [
    "group_advantages",
    "kl_to_reference",
    "lambda_t",
    "noise_scale",
    "NOISE_SCHEDULES",
    "ode_step",
    "policy_loss",
    "PolicyLoss",
    "ppo_clip_loss",
    "rectification_weights",
    "refill_batch_size",
    "refill_pairs",
    "sample_step_indices",
    "sde_log_prob",
    "sde_step",
    "SDEStep",
    "STD_MODES",
    "TotalLoss",
    "video_sources",
    "wan_sigmas",
    "zero_variance_mask",
    "zero_variance_share",
]


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
