"""Recipe consistency checks, run before anything is launched, loaded or written."""

from __future__ import annotations

import re
from pathlib import Path

from .config import Recipe
from .experts import expert_problems
from .io import REWARD_PATH_ARGS, RecipeError
from .ranges import is_type_problem, range_problems
from .refill import refill_problems


def time_limit_minutes(text: str) -> int:
    """'[D-]HH:MM:SS' or 'HH:MM' -> whole minutes (at least 1)."""
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not (2 <= len(parts) <= 3) or not all(p.isdigit() for p in parts) or (days and not days.isdigit()):
        raise ValueError(f"expected [D-]HH:MM:SS, got {text!r}")
    h, m, sec = (int(p) for p in (parts + ["0"])[:3])
    return max(1, (int(days or 0) * 24 + h) * 60 + m + (1 if sec else 0))


# Characters of a run folder name: those run_name() derives them from (a name is a path segment,
# a Slurm job name and a Kubernetes label, so no separators, spaces, quotes or shell syntax).
_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=,+-]*")
_RUN_NAME_MAX = 200


def run_name_problem(name: str) -> str | None:
    """Why `name` cannot be a run folder under runs_dir (it could escape or hide it), or None."""
    if not name.strip():
        return "must not be empty"
    if name in (".", ".."):
        return f"must be a folder name, got {name!r}"
    if "/" in name or "\\" in name:
        return f"must be a folder name without / or \\ (the run folder stays inside logging.runs_dir), got {name!r}"
    if len(name) > _RUN_NAME_MAX:
        return f"must be at most {_RUN_NAME_MAX} characters, got {len(name)}"
    if not _RUN_NAME.fullmatch(name):
        return f"must be letters, digits and _.=,+- not starting with . or -, got {name!r}"
    return None


def _ode_problems(recipe: Recipe) -> list[str]:
    """rollout.ode_solver / ode_steps: a known solver, a sub-grid no finer than the grid, and neither
    in full-trajectory mode, where every step is an SDE step (no deterministic step to solve)."""
    from fgrpo.algorithm.ode_grid import ODE_SOLVERS

    ro, errs = recipe.rollout, []
    if ro.ode_solver not in ODE_SOLVERS:
        errs.append(f"rollout.ode_solver: one of {ODE_SOLVERS}, got {ro.ode_solver!r}")
    if isinstance(ro.ode_steps, int) and ro.ode_steps > ro.steps:
        errs.append(
            f"rollout.ode_steps: at most rollout.steps={ro.steps} (a sub-grid of the recipe's grid), got {ro.ode_steps}"
        )
    if recipe.algorithm.mode == "full-trajectory":
        if ro.ode_solver != "euler":
            errs.append(
                f"rollout.ode_solver: {ro.ode_solver!r} needs deterministic steps, but algorithm.mode=full-trajectory "
                "takes an SDE step at every step; use euler"
            )
        if ro.ode_steps is not None and ro.ode_steps != ro.steps:
            errs.append(
                f"rollout.ode_steps: algorithm.mode=full-trajectory takes an SDE step at every one of the "
                f"{ro.steps} steps; leave it unset, got {ro.ode_steps}"
            )
    return errs


def _cache_problems(recipe: Recipe) -> list[str]:
    """rollout.cache / cache_mag_ratios: a known kind, with ratios for mag, where a cache has
    deterministic steps to act on and every rank runs its own blocks alone."""
    from typing import get_args

    from .config import RolloutCacheKind

    ro, par, errs = recipe.rollout, recipe.parallelism, []
    kinds = get_args(RolloutCacheKind)
    if ro.cache not in kinds:
        return [f"rollout.cache: one of {kinds}, got {ro.cache!r}"]
    if ro.cache_mag_ratios and ro.cache != "mag":
        errs.append(f"rollout.cache_mag_ratios: read by rollout.cache=mag only, but rollout.cache={ro.cache}")
    if ro.cache == "none":
        return errs
    if ro.cache == "mag" and not ro.cache_mag_ratios:
        errs.append(
            "rollout.cache: mag needs the model's magnitude ratios in rollout.cache_mag_ratios; diffusers ships "
            "them for Flux only, none for Wan: measure them with fgrpo.trainer.rollout_cache.calibrate_mag_ratios"
        )
    if recipe.algorithm.mode == "full-trajectory":
        errs.append(
            f"rollout.cache: {ro.cache!r} acts on deterministic steps, but algorithm.mode=full-trajectory takes an "
            "SDE step at every step (never cached); use none"
        )
    if par.compile:
        errs.append(
            f"rollout.cache: {ro.cache!r} is not supported with parallelism.compile: the cache hooks branch on "
            "Python state at every step, which dynamo guards on (recompiling the blocks)"
        )
    if par.tp > 1 or par.sp > 1:
        errs.append(
            f"rollout.cache: {ro.cache!r} is not supported with parallelism.tp > 1 or parallelism.sp > 1: the ranks "
            "of a tensor- or sequence-parallel group must run the same blocks (each holds collectives), and each "
            "rank decides what to skip on its own (first_block from its own activations)"
        )
    return errs


def recipe_problems(recipe: Recipe, world_size: int | None = None) -> list[str]:
    """Every problem found, each starting with the dotted field name it concerns."""
    from fgrpo.algorithm.names import NOISE_SCHEDULES
    from fgrpo.models.model_folder import BUILT_PRESETS
    from fgrpo.models.wan import PRESETS, check_model_folder
    from fgrpo.rewards import duplicate_reward_keys, missing_reward_args, validate_reward_spec

    ranged = range_problems(recipe)  # every numeric field against the range declared beside it
    if any(is_type_problem(e) for e in ranged):
        return ranged  # a value of the wrong type: the checks below would only stumble on it
    errs: list[str] = []
    ro, ts, par = recipe.rollout, recipe.timesteps, recipe.parallelism
    world = world_size if world_size is not None else recipe.world_size

    for name, value in (("name", recipe.name), ("logging.run_name", recipe.logging.run_name)):
        problem = None if value is None else run_name_problem(value)
        if problem:
            errs.append(f"{name}: {problem}")
    if (ro.frames - 1) % 4 != 0:
        errs.append(f"rollout.frames: (frames - 1) must be a multiple of 4 (Wan VAE), got {ro.frames}")
    preset = PRESETS.get(recipe.model.preset)
    # A patch covers (VAE spatial factor x patch) pixels a side: 8 x 2 for Wan2.1, 4 x 4 for the miniature.
    multiple = preset.pixel_multiple if preset else 16
    for name in ("height", "width"):
        if getattr(ro, name) % multiple:
            errs.append(
                f"rollout.{name}: must be a multiple of {multiple} (the VAE's spatial factor x the patch "
                f"of {recipe.model.preset}), got {getattr(ro, name)}"
            )
    # Wan's rotary embedding has a table of rope_max_seq_len (1024) positions per axis: latent frames
    # (F - 1)/4 + 1 and patch rows/columns must fit (beyond, diffusers fails mid-forward).
    rope = 1024
    if (ro.frames - 1) // 4 + 1 > rope:
        errs.append(
            f"rollout.frames: at most {4 * (rope - 1) + 1} (Wan's rotary table holds {rope} latent frames), "
            f"got {ro.frames}"
        )
    for name in ("height", "width"):
        if getattr(ro, name) // multiple > rope:
            errs.append(
                f"rollout.{name}: at most {multiple * rope} (Wan's rotary table holds {rope} patches per axis), "
                f"got {getattr(ro, name)}"
            )
    if ro.noise_schedule not in NOISE_SCHEDULES:
        errs.append(f"rollout.noise_schedule: one of {NOISE_SCHEDULES}, got {ro.noise_schedule!r}")
    errs += _ode_problems(recipe)
    errs += _cache_problems(recipe)
    errs += refill_problems(recipe)

    start, end = ts.window
    if not (0 <= start < end <= ro.steps):
        errs.append(f"timesteps.window: [start, end) must lie within the {ro.steps} rollout steps, got {ts.window}")
    if ts.weights and len(ts.weights) != end - start:
        errs.append(f"timesteps.weights: need {end - start} weights for window {ts.window}, got {len(ts.weights)}")
    elif ts.weights and sum(ts.weights) <= 0:
        errs.append(f"timesteps.weights: must have a positive sum, got {ts.weights}")

    if world % max(1, recipe.launch.nodes):
        errs.append(f"launch.nodes: the world size {world} does not divide over {recipe.launch.nodes} nodes")
    if preset and par.tp >= 1 and preset.num_heads % par.tp:
        errs.append(
            f"parallelism.tp: {par.tp} does not divide the {preset.num_heads} attention heads of {recipe.model.preset}"
        )
    elif preset and par.tp >= 1 and preset.ffn_dim % par.tp:
        errs.append(f"parallelism.tp: {par.tp} does not divide the FFN width {preset.ffn_dim} of {recipe.model.preset}")
    elif preset and par.tp >= 1 and par.sp >= 1:
        errs += _sequence_parallel_problems(recipe, preset)
    if preset and preset.image_dim is not None and recipe.model.max_text_tokens != 512:
        errs.append(
            f"model.max_text_tokens: 512 for {recipe.model.preset} (diffusers' image cross-attention takes the "
            f"context's last 512 tokens as text, the rest as image), got {recipe.model.max_text_tokens}"
        )
    if not errs and not ranged:
        from fgrpo.distributed.parallel_dims import ParallelDims

        try:
            dims = ParallelDims.from_config(par.dp_replicate, par.dp_shard, par.tp, world, sp=par.sp)
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
    elif recipe.model.preset not in BUILT_PRESETS:
        errs.append(f"model.path: preset {recipe.model.preset} needs a local diffusers-format folder (no downloads)")
    errs += unsupported_model_problems(recipe)
    errs += expert_problems(recipe)
    errs += _guidance_problems(recipe)
    errs += _attention_backend_problems(recipe)

    if recipe.algorithm.kl_beta > 0 and not recipe.lora.enabled:
        errs.append("algorithm.kl_beta: the reference policy is the model with LoRA disabled; enable lora")

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

    if repeated := duplicate_reward_keys(recipe.rewards):
        errs.append(f"rewards: {', '.join(repeated)} would record two rewards under one name; give them labels")
    errs += _reward_server_problems(recipe.reward_server)
    errs += _gold_reward_problems(recipe)
    errs += _prompt_problems(recipe)
    reported = {e.split(":", 1)[0] for e in ranged}  # one message per field: its range says enough
    return ranged + [e for e in errs if e.split(":", 1)[0] not in reported]


def unsupported_model_problems(recipe: Recipe) -> list[str]:
    """What fgrpo does not implement yet for the recipe's preset: refused at launch, but planned
    (`fgrpo plan` models these presets as they would run: fgrpo.planner.spec). Image-to-video
    presets run; their prompt files are checked by `_prompt_problems`. Two experts run
    (fgrpo.models.wan.experts), without the rollout options that assume one transformer."""
    from fgrpo.models.wan import PRESETS

    name, ro, errs = recipe.model.preset, recipe.rollout, []
    preset = PRESETS.get(name)
    if preset is None or preset.experts == 1:
        return []
    if ro.share_prefix:
        errs.append(
            f"rollout.share_prefix: not implemented for the two experts of {name}: the ranks' shared prefixes end "
            "at different steps, so they would switch experts (a collective gather) at different times"
        )
    if ro.cache != "none":
        errs.append(f"rollout.cache: {ro.cache!r} is not implemented for the two experts of {name}; use none")
    return errs


def _guidance_problems(recipe: Recipe) -> list[str]:
    """rollout.cfg_scale_2 guides the low-noise expert's steps: a model without one (one transformer,
    per its preset) has none, as diffusers' pipelines refuse guidance_scale_2 without a boundary_ratio."""
    from fgrpo.models.wan import PRESETS

    preset = PRESETS.get(recipe.model.preset)
    if recipe.rollout.cfg_scale_2 is None or preset is None or preset.experts > 1:
        return []
    return [
        f"rollout.cfg_scale_2: the low-noise expert's guidance scale, but {recipe.model.preset} has one "
        "transformer (no second expert); leave it unset: rollout.cfg_scale guides every step"
    ]


def _gold_reward_problems(recipe: Recipe) -> list[str]:
    """eval.gold_rewards: rewards that resolve, with their required args, never also trained on (a
    gold metric the policy optimises guards nothing), on held-out prompts that exist."""
    from fgrpo.rewards import duplicate_reward_keys, missing_reward_args, validate_reward_spec

    gold = recipe.eval.gold_rewards
    if not gold:
        return []
    errs = [] if recipe.prompts.heldout > 0 else ["eval.gold_rewards: needs held-out prompts (prompts.heldout > 0)"]
    trained = {spec.name for spec in recipe.rewards}
    for i, spec in enumerate(gold):
        try:
            validate_reward_spec(spec)
            missing = missing_reward_args(spec)
        except ValueError as e:
            errs.append(f"eval.gold_rewards.{i}: {e}")
            continue
        errs += [
            f"eval.gold_rewards.{i}.args.{k}: required by the {spec.name} reward ({w})" for k, w in missing.items()
        ]
        if spec.name in trained:
            errs.append(
                f"eval.gold_rewards.{i}.name: {spec.name} is also in rewards (trained on, even at weight 0 "
                "it is recorded under the same name); a gold metric is never trained on: drop it from rewards"
            )
    in_rewards = set(duplicate_reward_keys(recipe.rewards))  # reported under `rewards` already
    if repeated := [k for k in duplicate_reward_keys((*recipe.rewards, *gold)) if k not in in_rewards]:
        errs.append(
            f"eval.gold_rewards: {', '.join(repeated)} would record two held-out scores under one name "
            "(eval/<name>); give them distinct labels"
        )
    return errs


def _sequence_parallel_problems(recipe: Recipe, preset) -> list[str]:
    """Ulysses gives each sp rank whole heads (of its tp rank's heads) and an even run of every
    video's tokens; fgrpo does not pad, so both must divide."""
    par, ro, heads = recipe.parallelism, recipe.rollout, preset.num_heads
    if par.sp == 1:
        return []
    errs = []
    if heads % (par.tp * par.sp):
        per_tp = (
            f"the {heads // par.tp} heads of each tensor-parallel rank (parallelism.tp={par.tp})"
            if par.tp > 1
            else f"the {heads} attention heads of {recipe.model.preset}"
        )
        sizes = [d for d in range(1, heads // par.tp + 1) if (heads // par.tp) % d == 0]
        errs.append(
            f"parallelism.sp: {par.sp} does not divide {per_tp}; sequence parallelism gives each sp rank "
            f"whole heads, choose one of {sizes}"
        )
    multiple = preset.pixel_multiple
    if (ro.frames - 1) % 4 == 0 and ro.height % multiple == 0 and ro.width % multiple == 0:  # else reported above
        grid = preset.tokens(ro.frames, ro.height, ro.width)
        tokens = grid[0] * grid[1] * grid[2]
        if tokens % par.sp:
            errs.append(
                f"parallelism.sp: {par.sp} does not divide the {tokens} tokens of a video (latent frames x "
                f"patch rows x patch columns = {grid[0]} x {grid[1]} x {grid[2]} for rollout.frames="
                f"{ro.frames}, height={ro.height}, width={ro.width}); sequence parallelism splits every "
                "video's tokens evenly, without padding"
            )
    return errs


def _attention_backend_problems(recipe: Recipe) -> list[str]:
    """Training needs a backend with a backward (the table and its reasons: fgrpo/models/wan/attention.py);
    a forward-only one may serve rollouts. Whether its package and device are there is checked when
    the model is set up (`apply_attention_backend`), on the machine that runs it."""
    from fgrpo.models.wan.attention import FORWARD_ONLY_BACKENDS, TRAINABLE_BACKENDS, training_problem

    m, errs = recipe.model, []
    problem = training_problem(m.attention_backend)
    if problem and m.attention_backend in FORWARD_ONLY_BACKENDS:
        errs.append(
            f"model.attention_backend: {problem}, and training needs gradients through attention; "
            f"use it for rollouts and evaluation only: model.rollout_attention_backend={m.attention_backend} "
            f"(with a trainable model.attention_backend, e.g. native or flash)"
        )
    elif problem:
        errs.append(f"model.attention_backend: {problem}")
    rollout = m.rollout_attention_backend
    if rollout is not None and rollout not in TRAINABLE_BACKENDS and rollout not in FORWARD_ONLY_BACKENDS:
        errs.append(f"model.rollout_attention_backend: {training_problem(rollout)}")
    elif rollout not in (None, m.attention_backend) and not recipe.algorithm.recompute_old_log_prob:
        errs.append(
            f"model.rollout_attention_backend: sampling with {rollout!r} but training with "
            f"{m.attention_backend!r} needs algorithm.recompute_old_log_prob=true (log pi_old from the "
            "rollout's kernel would move the on-policy ratio off 1)"
        )
    return errs


def image_to_video_prompt_problems(preset_name: str, prompt_file: str, path: Path, lines, width: int, height: int):
    """Why the prompt file cannot condition the preset's videos on images (each record's image:
    fgrpo.data.image_prompts), [] when it can or the preset takes no image. `prompt_file` is the name
    messages give the file (as the user wrote it).

    Image-to-video presets need an image per prompt. Wan2.2-TI2V (`expand_timesteps`) takes either
    mode: a file without images trains text-to-video; one where any record has an `image` asks for
    its text+image mode (the image as the first latent frame, fgrpo.models.wan.first_frame), so every
    record is checked as for image-to-video. For a text-to-video-only model an `image` is just
    another field (carried into `fgrpo eval`'s results)."""
    from fgrpo.data.image_prompts import IMAGE_FIELD, image_prompt_problems
    from fgrpo.models.wan import PRESETS

    preset = PRESETS.get(preset_name)
    if preset is None:
        return []
    if preset.expand_timesteps:
        with_image = any(IMAGE_FIELD in r for _, r in lines)
        return image_prompt_problems(path, lines, width, height) if with_image else []
    if not preset.image_to_video:
        return []
    if path.suffix != ".jsonl":
        return [
            f"{prompt_file} holds text only (one prompt per line), but {preset_name} is an image-to-video model "
            "that conditions every video on an image: give a JSONL file whose records have `prompt` and `image` "
            "(a path relative to the file's folder)"
        ]
    return image_prompt_problems(path, lines, width, height)


def _prompt_problems(recipe: Recipe) -> list[str]:
    from fgrpo.data.prompts import read_prompt_lines, resolve_prompt_file

    pr, per_step = recipe.prompts, recipe.rollout.prompts_per_step
    path = resolve_prompt_file(pr.file)
    if path.is_dir():
        return [f"prompts.file: {pr.file} is a directory, not a prompt file"]
    if not path.is_file():
        return [f"prompts.file: {pr.file} does not exist"]
    try:
        lines = read_prompt_lines(path)
    except (ValueError, OSError) as e:
        return [f"prompts.file: {e}"]
    records = [r for _, r in lines]
    n = len(records)
    if n == 0:
        return [f"prompts.file: {pr.file} holds no prompts"]
    ro = recipe.rollout
    images = image_to_video_prompt_problems(recipe.model.preset, pr.file, path, lines, ro.width, ro.height)
    if images:
        return [f"prompts.file: {p}" for p in images]
    train = n - max(0, pr.heldout)
    if train < 1:
        return [f"prompts.heldout: {pr.heldout} held out of the {n} prompts of {pr.file} leaves none to train on"]
    if train < per_step:
        return [
            f"rollout.prompts_per_step: {per_step} prompts per step, but {pr.file} has only {train} training "
            f"prompts ({n} minus prompts.heldout={pr.heldout}); a step would repeat prompts"
        ]
    return []


def _reward_server_problems(rs) -> list[str]:
    errs = []
    if rs.url is not None and rs.launch:
        errs.append("reward_server.url: give either a running server's url or reward_server.launch, not both")
    if rs.url is not None and not rs.url.startswith(("http://", "https://")):
        errs.append(f"reward_server.url: must start with http:// or https://, got {rs.url!r}")
    return errs


def validate(recipe: Recipe, world_size: int | None = None, what: str = "invalid recipe") -> Recipe:
    """The recipe, or RecipeError listing every problem (one per line, each naming its field)."""
    problems = recipe_problems(recipe, world_size)
    if problems:
        raise RecipeError(f"{what}:\n  " + "\n  ".join(problems))
    return recipe
