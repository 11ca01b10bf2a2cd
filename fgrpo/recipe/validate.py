"""Recipe consistency checks, run before anything is launched, loaded or written."""

from __future__ import annotations

from pathlib import Path

from .config import Recipe
from .io import RecipeError


def time_limit_minutes(text: str) -> int:
    """'[D-]HH:MM:SS' or 'HH:MM' -> whole minutes (at least 1)."""
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not (2 <= len(parts) <= 3) or not all(p.isdigit() for p in parts) or (days and not days.isdigit()):
        raise ValueError(f"expected [D-]HH:MM:SS, got {text!r}")
    h, m, sec = (int(p) for p in (parts + ["0"])[:3])
    return max(1, (int(days or 0) * 24 + h) * 60 + m + (1 if sec else 0))


# Reward arguments that name local files or folders (reward model weights, tokenizers).
REWARD_PATH_ARGS = ("model_path", "checkpoint", "tokenizer_path")


def recipe_problems(recipe: Recipe, world_size: int | None = None) -> list[str]:
    """Every problem found, each starting with the dotted field name it concerns."""
    from fgrpo.algorithm import NOISE_SCHEDULES
    from fgrpo.data.prompts import read_prompts, resolve_prompt_file
    from fgrpo.models.wan import PRESETS, check_model_folder
    from fgrpo.rewards import missing_reward_args, validate_reward_spec

    errs: list[str] = []
    ro, ts, par = recipe.rollout, recipe.timesteps, recipe.parallelism
    world = world_size if world_size is not None else recipe.world_size

    if (ro.frames - 1) % 4 != 0 or ro.frames < 1:
        errs.append(f"rollout.frames: (frames - 1) must be a multiple of 4 (Wan VAE), got {ro.frames}")
    for name in ("height", "width"):
        v = getattr(ro, name)
        if v <= 0 or v % 16:
            errs.append(f"rollout.{name}: must be a positive multiple of 16, got {v}")
    if ro.steps < 1:
        errs.append(f"rollout.steps: must be >= 1, got {ro.steps}")
    if ro.group_size < 2:
        errs.append(f"rollout.group_size: GRPO needs at least 2 videos per prompt, got {ro.group_size}")
    if ro.prompts_per_step < 1:
        errs.append(f"rollout.prompts_per_step: must be >= 1, got {ro.prompts_per_step}")
    if ro.micro_batch < 1:
        errs.append(f"rollout.micro_batch: must be >= 1, got {ro.micro_batch}")
    if ro.noise_schedule not in NOISE_SCHEDULES:
        errs.append(f"rollout.noise_schedule: one of {NOISE_SCHEDULES}, got {ro.noise_schedule!r}")

    start, end = ts.window
    if not (0 <= start < end <= ro.steps):
        errs.append(f"timesteps.window: [start, end) must lie within the {ro.steps} rollout steps, got {ts.window}")
    if ts.weights and len(ts.weights) != end - start:
        errs.append(f"timesteps.weights: need {end - start} weights for window {ts.window}, got {len(ts.weights)}")
    if ts.weights and (min(ts.weights) < 0 or sum(ts.weights) <= 0):
        errs.append("timesteps.weights: must be non-negative with a positive sum")

    if world % max(1, recipe.launch.nodes):
        errs.append(f"launch.nodes: the world size {world} does not divide over {recipe.launch.nodes} nodes")
    for name in ("dp_replicate", "tp"):
        if getattr(par, name) < 1:
            errs.append(f"parallelism.{name}: must be >= 1, got {getattr(par, name)}")
    if par.dp_shard == 0 or par.dp_shard < -1:
        errs.append(f"parallelism.dp_shard: must be >= 1 or -1 (infer), got {par.dp_shard}")
    preset = PRESETS.get(recipe.model.preset)
    if preset and par.tp >= 1 and preset.num_heads % par.tp:
        errs.append(
            f"parallelism.tp: {par.tp} does not divide the {preset.num_heads} attention heads of {recipe.model.preset}"
        )
    elif preset and par.tp >= 1 and preset.ffn_dim % par.tp:
        errs.append(f"parallelism.tp: {par.tp} does not divide the FFN width {preset.ffn_dim} of {recipe.model.preset}")
    if not errs:
        from fgrpo.distributed.parallel_dims import ParallelDims

        try:
            dims = ParallelDims.from_config(par.dp_replicate, par.dp_shard, par.tp, world)
        except ValueError as e:
            errs.append(f"{e} (launch.nodes x launch.procs_per_node)")
        else:
            videos = ro.prompts_per_step * ro.group_size
            if videos % dims.dp:
                errs.append(
                    f"rollout.group_size: the global batch of {ro.prompts_per_step} prompts x {ro.group_size} "
                    f"videos = {videos} cannot be split evenly over {dims.dp} data-parallel ranks"
                )

    if recipe.model.path is not None:
        errs += [f"model.path: {p}" for p in check_model_folder(recipe.model.path)]
    elif recipe.model.preset != "tiny":
        errs.append(f"model.path: preset {recipe.model.preset} needs a local diffusers-format folder (no downloads)")

    a = recipe.algorithm
    if a.clip_range <= 0:
        errs.append(f"algorithm.clip_range: must be > 0, got {a.clip_range}")
    if a.adv_clip <= 0:
        errs.append(f"algorithm.adv_clip: must be > 0, got {a.adv_clip}")
    if a.kl_beta < 0:
        errs.append(f"algorithm.kl_beta: must be >= 0, got {a.kl_beta}")
    if a.kl_beta > 0 and not recipe.lora.enabled:
        errs.append("algorithm.kl_beta: the reference policy is the model with LoRA disabled; enable lora")
    if recipe.lora.enabled and recipe.lora.rank < 1:
        errs.append(f"lora.rank: must be >= 1, got {recipe.lora.rank}")
    if recipe.ema.enabled and not (0.0 <= recipe.ema.decay < 1.0):
        errs.append(f"ema.decay: must be in [0, 1), got {recipe.ema.decay}")
    for name in ("ema.interval", "checkpoint.interval", "checkpoint.keep_last", "eval.interval", "eval.steps"):
        section, field = name.split(".")
        if getattr(getattr(recipe, section), field) < 1:
            errs.append(f"{name}: must be >= 1")
    if recipe.optim.lr <= 0:
        errs.append(f"optim.lr: must be > 0, got {recipe.optim.lr}")
    if recipe.optim.max_steps < 0:
        errs.append(f"optim.max_steps: must be >= 0, got {recipe.optim.max_steps}")

    try:
        time_limit_minutes(recipe.launch.time_limit)
    except ValueError as e:
        errs.append(f"launch.time_limit: {e}")
    if not recipe.rewards:
        errs.append("rewards: at least one reward is needed")
    for i, spec in enumerate(recipe.rewards):
        try:
            validate_reward_spec(spec)
            missing = missing_reward_args(spec)  # each reward declares the args it cannot run without
        except ValueError as e:
            errs.append(f"rewards.{i}: {e}")
            missing = {}
        if recipe.reward_server.url is None:  # a running server has the files (and its args), not this machine
            for key, what in missing.items():
                errs.append(f"rewards.{i}.args.{key}: required by the {spec.name} reward ({what})")
            for key in REWARD_PATH_ARGS:
                path = spec.args.get(key)
                if isinstance(path, str) and not Path(path).exists():
                    errs.append(f"rewards.{i}.args.{key}: {path} does not exist")

    errs += _reward_server_problems(recipe.reward_server)

    prompt_file = resolve_prompt_file(recipe.prompts.file)
    if not prompt_file.is_file():
        errs.append(f"prompts.file: {recipe.prompts.file} does not exist")
    else:
        try:
            n = len(read_prompts(prompt_file))
            if n - recipe.prompts.heldout < 1:
                errs.append(f"prompts.heldout: {recipe.prompts.heldout} held out of {n} prompts leaves none to train on")
        except ValueError as e:
            errs.append(f"prompts.file: {e}")
    return errs


def _reward_server_problems(rs) -> list[str]:
    errs = []
    if rs.url is not None and rs.launch:
        errs.append("reward_server.url: give either a running server's url or reward_server.launch, not both")
    if rs.url is not None and not rs.url.startswith(("http://", "https://")):
        errs.append(f"reward_server.url: must start with http:// or https://, got {rs.url!r}")
    if not 0 < rs.port < 65536:
        errs.append(f"reward_server.port: must be in 1..65535, got {rs.port}")
    for name in ("timeout_s", "startup_timeout_s"):
        if getattr(rs, name) <= 0:
            errs.append(f"reward_server.{name}: must be > 0, got {getattr(rs, name)}")
    if rs.retries < 0 or rs.gpus < 0 or rs.cpus < 1:
        errs.append("reward_server: retries and gpus must be >= 0 and cpus >= 1, got "
                    f"retries={rs.retries} gpus={rs.gpus} cpus={rs.cpus}")
    return errs


def validate(recipe: Recipe, world_size: int | None = None, what: str = "invalid recipe") -> Recipe:
    """The recipe, or RecipeError listing every problem (one per line, each naming its field)."""
    problems = recipe_problems(recipe, world_size)
    if problems:
        raise RecipeError(f"{what}:\n  " + "\n  ".join(problems))
    return recipe
