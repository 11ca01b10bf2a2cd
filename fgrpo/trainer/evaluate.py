"""Held-out evaluation: deterministic ODE sampling, fixed prompts and seeds, rewards, sample videos.

The held-out videos are split over the data-parallel ranks like training videos (each rank runs
the same number of forwards, as FSDP needs; the last slices are padded), TP rank 0 of each slice
scores it, and rank 0 gathers the scores and a thumbnail of every video for the sample grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fgrpo.algorithm import wan_sigmas
from fgrpo.media import save_video_grid

from .reward_scoring import not_scored
from .rollout import initial_latents, sample, video_generators

EVAL_SEED_BASE = 10_000_000  # fixed seeds: the same noise before and after training
THUMBNAIL_PX = 128  # longest side of a video in the sample grid


def thumbnails(frames: torch.Tensor, longest: int = THUMBNAIL_PX) -> torch.Tensor:
    """``[B, F, 3, H, W]`` in [0, 1] -> uint8 on CPU, the longest side at most ``longest`` pixels."""
    b, f, c, h, w = frames.shape
    scale = longest / max(h, w)
    x = frames.reshape(b * f, c, h, w).float()
    if scale < 1:
        x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().reshape(b, f, c, *x.shape[-2:])


@torch.no_grad()
def evaluate_heldout(t, tag: str) -> dict:
    """Mean reward of the held-out prompts (ODE, `eval.steps` steps); rank 0 writes samples/<tag>.gif."""
    r = t.recipe
    n = r.eval.videos_per_prompt
    prompts = [p for p in t.heldout_prompts for _ in range(n)]
    total_videos = len(prompts)
    per_rank = math.ceil(total_videos / t.dims.dp)
    start = t.dims.dp_rank * per_rank
    # Padding repeats the last video: every rank runs as many forwards; padded results are dropped.
    mine = [min(i, total_videos - 1) for i in range(start, start + per_rank)]
    local_prompts = [prompts[i] for i in mine]
    sigmas = wan_sigmas(r.eval.steps, r.rollout.flow_shift)
    gens = video_generators([EVAL_SEED_BASE + i for i in mine])  # seeds by global index: placement-free
    latents = initial_latents(t.latent_shape, gens).to(t.device)
    context = t.encode(local_prompts)
    neg = t.neg_context.expand(len(local_prompts), -1, -1)
    no_sde = torch.zeros(len(local_prompts), r.eval.steps, dtype=torch.bool)
    t.model.transformer.eval()
    finals, _ = sample(t.model.transformer, latents, context, neg, sigmas, no_sde, t.noise,
                       r.rollout.cfg_scale, gens, r.rollout.micro_batch, t.policy.compute)
    frames = torch.cat([t.model.decode(finals[i:i + r.rollout.micro_batch])
                        for i in range(0, len(local_prompts), r.rollout.micro_batch)])
    scored = t.rewards(frames, local_prompts) if t.dims.tp_rank == 0 else not_scored(
        len(local_prompts), t.rewards.names).result()
    total = t.dims.gather_dp(scored[0].to(t.device).float()).cpu()[:total_videos]
    components = {k: t.dims.gather_dp(v.to(t.device).float()).cpu()[:total_videos] for k, v in scored[1].items()}
    grid = t.dims.gather_dp(thumbnails(frames).to(t.device)).cpu()[:total_videos]
    if t.is_main:
        upscale = max(1, THUMBNAIL_PX // max(grid.shape[-2:]))
        save_video_grid(grid.float() / 255, t.run_dir / "samples" / f"{tag}.gif", upscale=upscale)
    return {
        "tag": tag,
        "eval_reward": float(total.mean()),
        "eval_rewards": [round(float(x), 6) for x in total],  # per video, fixed seeds: paired comparisons
        **{f"eval/{k}": float(v.mean()) for k, v in components.items()},
    }
