"""Held-out evaluation: deterministic ODE sampling, fixed prompts and seeds, rewards, sample videos."""

from __future__ import annotations

import torch

from fgrpo.algorithm import wan_sigmas
from fgrpo.media import save_video_grid

from .rollout import initial_latents, sample, video_generators

EVAL_SEED_BASE = 10_000_000  # fixed seeds: the same noise before and after training


@torch.no_grad()
def evaluate_heldout(t, tag: str) -> dict:
    """Mean reward of the held-out prompts (ODE, `eval.steps` steps); rank 0 writes samples/<tag>.gif."""
    r = t.recipe
    n = r.eval.videos_per_prompt
    prompts = [p for p in t.heldout_prompts for _ in range(n)]
    sigmas = wan_sigmas(r.eval.steps, r.rollout.flow_shift)
    gens = video_generators([EVAL_SEED_BASE + i for i in range(len(prompts))])
    latents = initial_latents(t.latent_shape, gens).to(t.device)
    context = t.encode(prompts)
    neg = t.neg_context.expand(len(prompts), -1, -1)
    no_sde = torch.zeros(len(prompts), r.eval.steps, dtype=torch.bool)
    t.model.transformer.eval()
    finals, _ = sample(t.model.transformer, latents, context, neg, sigmas, no_sde, t.noise,
                       r.rollout.cfg_scale, gens, r.rollout.micro_batch)
    frames = torch.cat([t.model.decode(finals[i:i + r.rollout.micro_batch])
                        for i in range(0, len(prompts), r.rollout.micro_batch)])
    total, components = t.rewards(frames, prompts)
    if t.is_main:
        upscale = max(1, 128 // max(r.rollout.height, r.rollout.width))
        save_video_grid(frames, t.run_dir / "samples" / f"{tag}.gif", upscale=upscale)
    return {
        "tag": tag,
        "eval_reward": float(total.mean()),
        "eval_rewards": [round(float(x), 6) for x in total],  # per video, fixed seeds: paired comparisons
        **{f"eval/{k}": float(v.mean()) for k, v in components.items()},
    }
