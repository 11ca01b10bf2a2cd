"""Reward functions for Flash-GRPO: interface, registry and built-in rewards.

Importing this package registers the programmatic rewards ``colour``,
``brightness`` and ``contrast``, the miniature world's ``miniature_faithfulness``,
``miniature_gold`` and ``miniature_proxy``, and the learned rewards ``clip`` (CLIP score,
PickScore), ``hpsv2``, ``hpsv3`` (per frame) and ``videoalign`` (per video);
their models load on first use.
"""

# Register the built-in rewards.
from fgrpo.rewards import clip, hpsv2, hpsv3, miniature, programmatic, videoalign  # noqa: F401
from fgrpo.rewards.base import (
    RewardFn,
    RewardInfo,
    WeightedRewards,
    aggregate_frames,
    build_rewards,
    duplicate_reward_keys,
    get_reward,
    get_reward_info,
    list_rewards,
    missing_reward_args,
    parse_aggregation,
    register_reward,
    validate_reward_spec,
)
from fgrpo.rewards.programmatic import DEFAULT_COLOURS, find_colour, luminance

__all__ = [
    "DEFAULT_COLOURS",
    "RewardFn",
    "RewardInfo",
    "WeightedRewards",
    "aggregate_frames",
    "build_rewards",
    "clip",
    "duplicate_reward_keys",
    "find_colour",
    "hpsv2",
    "hpsv3",
    "get_reward",
    "get_reward_info",
    "list_rewards",
    "luminance",
    "miniature",
    "missing_reward_args",
    "parse_aggregation",
    "programmatic",
    "register_reward",
    "validate_reward_spec",
    "videoalign",
]
