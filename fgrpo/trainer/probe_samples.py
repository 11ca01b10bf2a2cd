"""The recipe's model sampling held-out prompts before any training: `fgrpo reward-audit`'s probe videos.

The same policy (fgrpo.trainer.policy.build_policy) and held-out sampler
(fgrpo.trainer.evaluate.heldout_frames: deterministic ODE, `eval.steps` steps, the evaluation's
fixed seeds) as a run's "before" evaluation, so the audit scores the videos the run starts from.
One process (the policy on this machine's first GPU, or the CPU); text encodings go into the runs
folder's cache, where the run finds them later.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from fgrpo.distributed import process_group as dist
from fgrpo.distributed.parallel_dims import ParallelDims
from fgrpo.recipe.config import Recipe

from .evaluate import heldout_frames
from .policy import build_policy


def sample_probe_videos(
    recipe: Recipe, prompts: list[str], videos_per_prompt: int, cache_root: Path
) -> tuple[list[str], torch.Tensor]:
    """``videos_per_prompt`` samples of each prompt by the recipe's (untrained) model: (their prompts,
    frames as uint8 ``[N, F, 3, H, W]`` on the CPU, what a video file would hold)."""
    if videos_per_prompt < 1:
        raise ValueError(f"--videos: must be >= 1, got {videos_per_prompt}")
    # This process alone: every parallel dimension 1, whatever layout the recipe trains on.
    par = dataclasses.replace(recipe.parallelism, dp_replicate=1, dp_shard=-1, tp=1, sp=1)
    recipe = dataclasses.replace(
        recipe, parallelism=par, eval=dataclasses.replace(recipe.eval, videos_per_prompt=videos_per_prompt)
    )
    device = dist.init_distributed(recipe.launch.collective_timeout_s)
    dims = ParallelDims.from_config(1, -1, 1, dist.world_size(), sp=1)
    dims.build_mesh(device.type)
    policy = build_policy(recipe, dims, device, prompts, cache_root)
    local_prompts, frames = heldout_frames(policy, recipe, prompts)
    return local_prompts, (frames.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


__all__ = ["sample_probe_videos"]
