"""Held-out evaluation: deterministic ODE sampling, fixed prompts and seeds, rewards, sample videos.

The held-out videos are split over the data-parallel ranks like training videos (each rank runs
the same number of forwards, as FSDP needs; the last slices are padded), one rank of each slice
(sp rank 0, tp rank 0) scores it, and rank 0 gathers the scores and a thumbnail of every video
for the sample grid.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from fgrpo.algorithm import wan_sigmas
from fgrpo.distributed import process_group as dist
from fgrpo.recipe.config import Recipe

from .failures import agree_on_scores, submit_safely
from .guardrails import guard_record, per_video_table
from .policy import Policy
from .reward_scoring import InProcessRewards, not_scored
from .rollout import initial_latents, sample, video_generators
from .samples import write_samples

EVAL_SEED_BASE = 10_000_000  # fixed seeds: the same noise before and after training
THUMBNAIL_PX = 128  # longest side of a video in the sample grid


def condition_thumbnails(files: list[Path], size: tuple[int, int]) -> torch.Tensor:
    """The conditioning images ``[P, 3, h, w]`` uint8 at the video thumbnails' `size` (h, w), read as
    the policy read them (fgrpo.data.image_prompts.load_image)."""
    import numpy as np

    from fgrpo.data.image_prompts import load_image

    x = torch.stack([torch.from_numpy(np.asarray(load_image(f))).permute(2, 0, 1) for f in files]).float() / 255
    return (F.interpolate(x, size=size, mode="area").clamp(0, 1) * 255).round().to(torch.uint8)


def thumbnails(frames: torch.Tensor, longest: int = THUMBNAIL_PX) -> torch.Tensor:
    """``[B, F, 3, H, W]`` in [0, 1] -> uint8 on CPU, the longest side at most ``longest`` pixels."""
    b, f, c, h, w = frames.shape
    scale = longest / max(h, w)
    x = frames.reshape(b * f, c, h, w).float()
    if scale < 1:
        x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().reshape(b, f, c, *x.shape[-2:])


@torch.no_grad()
def heldout_frames(policy: Policy, recipe: Recipe, prompts: list[str]) -> tuple[list[str], torch.Tensor]:
    """This rank's share of the held-out videos of `prompts` (`eval.videos_per_prompt` each, ODE with
    `eval.steps` steps, fixed seeds by global index; the last shares padded with the last video):
    (their prompts, decoded frames [b, F, 3, H, W] in [0, 1] on the policy's device)."""
    r, dims = recipe, policy.dims
    n = r.eval.videos_per_prompt
    prompts = [p for p in prompts for _ in range(n)]
    total_videos = len(prompts)
    per_rank = math.ceil(total_videos / dims.dp)
    start = dims.dp_rank * per_rank
    # Padding repeats the last video: every rank runs as many forwards; padded results are dropped.
    mine = [min(i, total_videos - 1) for i in range(start, start + per_rank)]
    local_prompts = [prompts[i] for i in mine]
    sigmas = wan_sigmas(r.eval.steps, r.rollout.flow_shift)
    gens = video_generators([EVAL_SEED_BASE + i for i in mine])  # seeds by global index: placement-free
    latents = initial_latents(policy.latent_shape, gens).to(policy.device)
    context, neg = policy.encode(local_prompts), policy.negative_context(len(local_prompts))
    no_sde = torch.zeros(len(local_prompts), r.eval.steps, dtype=torch.bool)
    with policy.rollout():
        finals, _ = sample(
            policy.transformer,
            latents,
            context,
            neg,
            sigmas,
            no_sde,
            policy.noise,
            policy.guidance(sigmas),  # each expert's steps of the evaluation's grid at its scale
            gens,
            r.rollout.micro_batch,
            policy.compute_dtype,
            image=policy.image_condition(local_prompts),
        )
    mb = r.rollout.micro_batch
    return local_prompts, torch.cat([policy.decode(finals[i : i + mb]) for i in range(0, len(local_prompts), mb)])


def gold_scorer(recipe: Recipe) -> InProcessRewards | None:
    """eval.gold_rewards, scored in this process (also when a reward server scores the trained
    rewards: gold metrics are meant to be cheap references); None when the recipe has none."""
    return InProcessRewards(recipe.eval.gold_rewards) if recipe.eval.gold_rewards else None


@torch.no_grad()
def evaluate_heldout(
    policy: Policy, rewards, recipe: Recipe, prompts: list[str], samples: Path, tag: str, gold=None
) -> dict:
    """Mean reward of the held-out `prompts` (ODE, `eval.steps` steps); rank 0 writes samples/<tag>.mp4
    (the captioned grid), samples/<tag>/prompt-NN.mp4 and samples/<tag>.json (fgrpo.trainer.samples).
    `gold` (gold_scorer) scores the same videos: `eval_gold` (its weighted total) and `eval/<name>`."""
    dims, n = policy.dims, recipe.eval.videos_per_prompt
    local_prompts, frames = heldout_frames(policy, recipe, prompts)
    files = policy.image_files(prompts)
    prompts = [p for p in prompts for _ in range(n)]
    total_videos = len(prompts)
    scorers = [rewards] if gold is None else [rewards, gold]
    pending = [
        submit_safely(s.submit, frames, local_prompts)
        if dims.scores_videos
        else not_scored(len(local_prompts), s.names)
        for s in scorers
    ]
    scored = agree_on_scores(pending)  # a failure on any rank is raised on every rank

    def gathered(x: torch.Tensor) -> torch.Tensor:
        return dims.gather_dp(x.to(policy.device).float()).cpu()[:total_videos]

    total = gathered(scored[0][0])
    components = {k: gathered(v) for _, parts in scored for k, v in parts.items()}  # gold keys never clash (validate)
    gold_total = {"eval_gold": float(gathered(scored[1][0]).mean())} if gold is not None else {}
    grid = dims.gather_dp(thumbnails(frames).to(policy.device)).cpu()[:total_videos]
    guards = dims.gather_dp(per_video_table(frames).to(policy.device)).cpu()[:total_videos]
    if dist.rank() == 0:
        size = (int(grid.shape[-2]), int(grid.shape[-1]))
        images = None if files is None else (condition_thumbnails(files, size), [str(f) for f in files])
        write_samples(Path(samples), tag, grid, prompts, total, n, images=images)
    return {
        "tag": tag,
        "eval_reward": float(total.mean()),
        **gold_total,
        "eval_rewards": [round(float(x), 6) for x in total],  # per video, fixed seeds: paired comparisons
        **{f"eval/{k}": float(v.mean()) for k, v in components.items()},
        # each reward's score per video, in the same order (weight-0 rewards too: a metric recorded
        # beside the trained reward is compared video by video, like the total)
        "eval_component_values": {k: [round(float(x), 6) for x in v] for k, v in components.items()},
        **guard_record(guards, grid, n),  # guard/...: pixel statistics, no model (fgrpo.trainer.guardrails)
    }


def load_trained_weights(policy: Policy, checkpoint_path: Path, weights: str = "ema") -> str:
    """Load a checkpoint's EMA (or model) weights into the policy's trained parameters, in place
    (DCP reshards whatever layout saved them). Returns which weights were loaded: "model" when
    the checkpoint has no EMA."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    from fgrpo.models.wan.lora import trainable_parameters

    saved = FileSystemReader(str(checkpoint_path)).read_metadata().state_dict_metadata
    if weights == "ema" and not any(k.startswith("ema.") for k in saved):
        warnings.warn(
            f"{checkpoint_path} has no EMA weights (ema disabled in the recipe?); using the model weights", stacklevel=2
        )
        weights = "model"
    params = trainable_parameters(policy.transformer)
    missing = [n for n in params if f"{weights}.{n}" not in saved]
    if missing:
        raise RuntimeError(
            f"{checkpoint_path} lacks {weights} weights {missing[:5]}...: a checkpoint of another recipe?"
        )
    with torch.no_grad():
        dcp.load({weights: params}, checkpoint_id=str(checkpoint_path))
    return weights


def evaluate_checkpoint(
    recipe: Recipe,
    run_dir: Path,
    checkpoint_path: Path,
    prompts: list[str],
    samples: Path,
    weights: str = "ema",
    tag: str = "videos",
    images: dict[str, Path] | None = None,
) -> dict:
    """Held-out evaluation of one checkpoint: the policy and the rewards, no optimizer. Text
    encodings (and image conditions) come from (or go into) the runs folder's cache. `images`: the
    prompts' images for an image-to-video model (default: the recipe's prompt file's). Returns
    evaluate_heldout's result plus "weights" (which were used)."""
    from fgrpo.distributed.parallel_dims import ParallelDims

    from .policy import build_policy
    from .reward_scoring import connect_rewards

    device = dist.init_distributed(recipe.launch.collective_timeout_s)
    par = recipe.parallelism
    dims = ParallelDims.from_config(par.dp_replicate, par.dp_shard, par.tp, dist.world_size(), sp=par.sp)
    dims.build_mesh(device.type)
    policy = build_policy(recipe, dims, device, prompts, Path(run_dir).parent, images)
    used = load_trained_weights(policy, checkpoint_path, weights)
    rewards = connect_rewards(recipe, Path(run_dir))
    try:
        result = evaluate_heldout(policy, rewards, recipe, prompts, samples, tag, gold_scorer(recipe))
        return {**result, "weights": used}
    finally:
        rewards.close()
