"""`plan(recipe, gpus)`: peak memory per GPU for each phase of a run, FLOPs per optimizer step and
GPU-hours, from the real architecture and the real parallelisation on fake tensors.

    text encoding  start-up: UMT5 + VAE + one batch of prompts (then the encoder is freed)
    image encoding image-to-video only, start-up: VAE + CLIP image encoder (Wan2.1 I2V) + one
                   prompt's image and condition video (then the CLIP encoder is freed)
    rollout        no-grad forward with CFG at rollout.micro_batch, and its ODE/SDE step
    VAE decode     a rollout micro-batch's latents to frames
    training       old log-probs recomputed, forward + backward (activation checkpointing per
                   the recipe), AdamW step; gradients and moments in fp32 (precision policy)
    evaluation     held-out videos, EMA weights swapped in, all frames decoded

Every phase after start-up also holds the sharded transformer, AdamW moments, EMA shadow, VAE
and an in-process reward model's weights (counted from its config: the planner does not run it).
Only the architecture is needed: the recipe's preset (or a `ModelSpec`), never `model.path`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Literal

from fgrpo.recipe.config import Recipe

from .phases import Phase, Sizes
from .spec import ModelSpec, RewardWeights

if TYPE_CHECKING:
    from fgrpo.distributed.unsharded import Setting

__all__ = ["FakeRun", "Gpu", "Plan", "fake_run", "parse_bytes", "plan", "planning_problems"]

GIB = 2**30


@dataclass(frozen=True)
class Gpu:
    memory: int = 80 * GIB
    """Bytes per GPU (an 80GB H100 or A100 has 79.6 GiB; the default is the CLI's 80GiB)."""
    tflops: float = 989.0
    """Dense bf16 TFLOP/s per GPU (H100 SXM)."""
    mfu: float = 0.4
    """Model FLOPs utilisation assumed for the GPU-hour estimate."""


def parse_bytes(text: str | int | float) -> int:
    """'80GiB', '80GB', '141 GB', '2.5TiB', or a number of bytes -> bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"expected a size like 80GiB or 80GB, got {text!r}")
    unit = (m.group(2) or "B").upper().replace("IB", "iB")
    scale = {
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KiB": 2**10,
        "MiB": 2**20,
        "GiB": 2**30,
        "TiB": 2**40,
    }[unit if "i" in unit else unit.upper()]
    return int(float(m.group(1)) * scale)


@dataclass
class Plan:
    recipe: str
    model: str
    world: int
    layout: dict
    sizes: Sizes
    phases: list[Phase]
    rewards: list[RewardWeights]
    gpu: Gpu
    flops: dict[str, int]
    """Per rank doing it (`ranks_doing`): per optimizer step (rollout, VAE decode, training), per
    evaluation, per prompt encoded."""
    steps: int
    evaluations: int
    target: str
    heads: int = 0
    notes: list[str] = field(default_factory=list)
    rollout_evaluations: float = 0.0
    """Model evaluations per rollout video (rollout_evaluations): rollout.steps unless ode_steps or
    share_prefix save some."""
    run: FakeRun | None = field(default=None, repr=False, compare=False)
    """The fake run it was computed from, for re-planning settings the fake run does not read
    (fgrpo.planner.rollout_options); not in `to_dict`."""

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    @property
    def peak(self) -> Phase:
        return max(self.phases, key=lambda p: p.peak)

    def over(self) -> list[Phase]:
        """Phases whose peak exceeds the GPU's memory."""
        return [p for p in self.phases if p.peak > self.gpu.memory]

    @property
    def fits(self) -> bool:
        return not self.over()

    def ranks_doing(self, work: str) -> int:
        """How many ranks do `work`: all, but only one rank per data-parallel slice decodes the
        rollout's videos (the one that scores them: flash_grpo_step)."""
        if work == "VAE decode":
            return self.world // (self.layout["sp"] * self.layout["tp"])
        return self.world

    def total_flops(self, work: str) -> int:
        return self.flops[work] * self.ranks_doing(work)

    @property
    def step_flops(self) -> int:
        """All ranks' FLOPs per optimizer step (rollout + VAE decode + training)."""
        return sum(self.total_flops(k) for k in ("rollout", "VAE decode", "training"))

    def gpu_seconds(self, flops: int) -> float:
        return flops / (self.gpu.tflops * 1e12 * self.gpu.mfu)

    @property
    def gpu_minutes_per_step(self) -> float:
        return self.gpu_seconds(self.step_flops) / 60

    @property
    def gpu_hours(self) -> float:
        """optim.max_steps steps plus the evaluations they trigger."""
        evals = self.total_flops("evaluation") * self.evaluations if "evaluation" in self.flops else 0
        return self.gpu_seconds(self.steps * self.step_flops + evals) / 3600

    def advice(self, phase: Phase) -> list[str]:
        return advice(self, phase)

    def to_dict(self) -> dict:
        return {
            "recipe": self.recipe,
            "model": self.model,
            "world": self.world,
            "layout": self.layout,
            "target": self.target,
            "sizes": asdict(self.sizes),
            "gpu": {"memory_bytes": self.gpu.memory, "tflops": self.gpu.tflops, "mfu": self.gpu.mfu},
            "phases": [
                {"name": p.name, "peak_bytes": p.peak, "parts": p.parts, "fits": p.peak <= self.gpu.memory}
                for p in self.phases
            ],
            "peak_phase": self.peak.name,
            "fits": self.fits,
            "rewards": [asdict(r) for r in self.rewards],
            "flops_per_rank": self.flops,
            "ranks_doing": {k: self.ranks_doing(k) for k in self.flops},
            "flops_per_step": self.step_flops,
            "gpu_minutes_per_step": self.gpu_minutes_per_step,
            "rollout_evaluations_per_video": self.rollout_evaluations,
            "steps": self.steps,
            "evaluations": self.evaluations,
            "gpu_hours": self.gpu_hours,
            "advice": {p.name: self.advice(p) for p in self.over()},
            "notes": self.notes,
        }


_NOT_PLANNED = ("model.path", "rewards.", "prompts.", "reward_server.")  # files and services a plan never reads


def planning_problems(recipe: Recipe, world: int) -> list[str]:
    """recipe_problems without those about files a plan does not read (model folder, reward
    model files, prompt file), the architecture coming from the preset, nor what fgrpo cannot
    run yet but plans (`unsupported_model_problems`: two experts' rollout.share_prefix and cache)."""
    from fgrpo.recipe.validate import recipe_problems, unsupported_model_problems

    planned = set(unsupported_model_problems(recipe))
    return [
        p
        for p in recipe_problems(recipe, world)
        if not p.startswith(_NOT_PLANNED) and "prompts.heldout=" not in p and p not in planned
    ]


def world_for(recipe: Recipe, gpus: int | None) -> int:
    """--gpus, else the recipe's world size (launch.nodes x procs_per_node, or the parallel dims)."""
    return int(gpus) if gpus else recipe.world_size


@dataclass
class FakeRun:
    """What running the phases on fake tensors gives for one rank: the slow part of a plan (a
    minute for 14B on 2 cores), which the pre-flight caches (fgrpo.planner.cache)."""

    layout: dict[str, int]
    """dp_replicate, dp_shard, tp, sp, dp of the trainer's mesh."""
    sizes: Sizes
    text: Phase
    """Start-up text encoding (before any reward model is loaded)."""
    phases: list[Phase]
    """Rollout, VAE decode, training, evaluation: without the reward model's weights."""
    gathered: int
    """Bytes of the rank's gathered transformer weights (parallelism.rollout_unsharded)."""
    image: Phase | None = None
    """Start-up image encoding of an image-to-video model (after the text's); None for text-to-video."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FakeRun":
        """Inverse of `to_dict`; KeyError, TypeError or ValueError on anything else."""
        sizes = {**d["sizes"], "latent": tuple(d["sizes"]["latent"])}
        return cls(
            {k: int(v) for k, v in d["layout"].items()},
            Sizes(**sizes),
            Phase(**d["text"]),
            [Phase(**p) for p in d["phases"]],
            int(d["gathered"]),
            Phase(**d["image"]) if d.get("image") is not None else None,
        )


def fake_run(recipe: Recipe, world: int, spec: ModelSpec, target: Literal["gpu", "cpu"]) -> FakeRun:
    """Every phase of one rank on fake tensors, on a fake process group of `world` ranks (this
    process must not have a process group of its own)."""
    import warnings

    from torch._subclasses.fake_tensor import FakeTensorMode

    from fgrpo.distributed.precision import PrecisionPolicy
    from fgrpo.distributed.unsharded import gathered_weight_bytes

    from .attention import FlashAttentionRouting
    from .image_phase import image_encoding
    from .phases import Rank, rank_sizes, text_encoding
    from .world import fake_world, parallel_dims

    # As the trainer: FSDP2 warns that Wan's output is a view; velocity() never modifies it in place.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    precision = PrecisionPolicy.from_name(recipe.model.dtype)
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    routing = FlashAttentionRouting(backward_workspace=target == "gpu")
    with fake_world(world), routing:
        dims = parallel_dims(recipe, world)
        dims.build_mesh("cpu")
        sizes = rank_sizes(recipe, spec, dims)
        text = text_encoding(spec, recipe, precision, fake)
        image = image_encoding(spec, recipe, fake)
        rank = Rank(spec, recipe, dims, precision, fake, sizes, foreach=target == "gpu")
        phases = rank.run()
        gathered = gathered_weight_bytes(rank.transformer)
    if not routing.routed:
        raise RuntimeError(
            "no attention call was routed to fgrpo::flash_attention: the plan would model "
            "another attention kernel (has diffusers' Wan attention changed?)"
        )
    layout = {"dp_replicate": dims.dp_replicate, "dp_shard": dims.dp_shard, "tp": dims.tp, "sp": dims.sp, "dp": dims.dp}
    return FakeRun(layout, sizes, text, phases, gathered, image)


def plan(
    recipe: Recipe,
    gpus: int | None = None,
    gpu: Gpu = Gpu(),
    spec: ModelSpec | None = None,
    target: Literal["gpu", "cpu"] = "gpu",
    cache: bool = False,
    run: FakeRun | None = None,
) -> Plan:
    """Plan `recipe` on `gpus` GPUs (default: its world size). Runs in this process on a fake
    process group, which must not have a process group of its own. `target="cpu"` models what a
    CPU run allocates (the benchmark's comparison): AdamW's for-loop update instead of the foreach
    one GPUs use, and no flash-attention backward workspace. `cache`: reuse (and store) the fake
    run of an identical plan in $FGRPO_CACHE/plans (fgrpo.planner.cache), as the pre-flight does.
    `run`: the fake run of a plan of the same recipe, world and target but for settings the fake run
    does not read (rollout_options: the rollout's solver, sub-grid and shared prefix)."""
    from fgrpo.recipe.io import RecipeError

    from .spec import reward_weights

    world = world_for(recipe, gpus)
    problems = planning_problems(recipe, world)
    if problems:
        raise RecipeError("cannot plan this recipe:\n  " + "\n  ".join(problems))
    preset = spec is None
    spec = spec or ModelSpec.from_preset(recipe.model.preset)
    if run is None and cache and preset:  # a given spec is not in the cache's key
        from .cache import cached, plan_key

        run = cached(
            plan_key(recipe, world, target),
            lambda: fake_run(recipe, world, spec, target),
            FakeRun.to_dict,
            FakeRun.from_dict,
        )
    elif run is None:
        run = fake_run(recipe, world, spec, target)
    sizes = run.sizes
    rewards = reward_weights(recipe, on_gpu=target == "gpu")
    held = sum(r.bytes for r in rewards)
    startup = [run.text, *([run.image] if run.image else [])]
    phases = startup + [replace(p, peak=p.peak + held, parts={**p.parts, "reward model": held}) for p in run.phases]
    flops = step_flops(recipe, sizes, phases)
    interval = recipe.eval.interval
    evaluations = (2 + (recipe.optim.max_steps - 1) // interval) if sizes.eval_videos and recipe.optim.max_steps else 0
    layout = {**run.layout, "activation_checkpointing": recipe.parallelism.activation_checkpointing}
    notes = [
        f"architecture: {spec.source}; attention: flash (out + fp32 logsumexp kept, no N^2 scores)",
        *spec.notes,
        rollout_note(recipe),
        "reward models: weights from their configs; their activations are not modelled",
        rollout_unsharded_note(
            recipe.parallelism.rollout_unsharded,
            run.gathered,
            next(p for p in phases if p.name == "rollout"),
            gpu.memory,
            target,
        ),
    ]
    return Plan(
        recipe.name,
        spec.source,
        world,
        layout,
        sizes,
        phases,
        rewards,
        gpu,
        flops,
        recipe.optim.max_steps,
        evaluations,
        target,
        spec.heads,
        notes,
        float(rollout_evaluations(recipe)),
        run,
    )


def rollout_unsharded_note(setting: Setting, gathered: int, rollout: Phase, memory: int, target: str) -> str:
    """One line on parallelism.rollout_unsharded: the rank's gathered weights, whether the setting
    keeps them through the rollout (`auto` on a GPU: the decision fgrpo.distributed.unsharded
    takes, with the free memory at the rollout's start taken as the GPU's memory less what the
    rollout phase holds besides its gathered block and activations), and the rollout's peak then."""
    from fgrpo.distributed.unsharded import SAFE_FRACTION, rollout_unsharded_decision

    def size(n: int) -> str:
        return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"

    held = rollout.peak - rollout.parts.get("gathered", 0) - rollout.parts.get("activations", 0)
    free = max(0, memory - held)
    keep = rollout_unsharded_decision(setting, "cuda" if target == "gpu" else "cpu", gathered, free)
    why = (
        f" ({'at most' if keep else 'more than'} {SAFE_FRACTION:.0%} of the ~{size(free)} free at its start)"
        if setting == "auto" and target == "gpu"
        else ""
    )
    line = (
        f"rollout weights gathered: {size(gathered)} per GPU; rollout_unsharded={setting} "
        f"{'keeps them for the whole rollout' if keep else 'reshards after every block'}{why}"
    )
    if keep:
        line += f"; rollout peak then ~{size(rollout.peak - rollout.parts.get('gathered', 0) + gathered)}"
    return line


def rollout_evaluations(recipe: Recipe, cost: list[int] | None = None) -> Fraction:
    """Model evaluations (forwards, CFG's halves batched as one) per rollout video, averaged over the
    SDE step's draw: what `rollout.sample` makes with the recipe's ode_steps and share_prefix
    (fgrpo.algorithm.ode_grid counts them for both). `cost`: each grid step's evaluation weighted
    (its passes: fgrpo.planner.guidance)."""
    from fgrpo.algorithm.ode_grid import expected_evaluations_per_video

    ro, alg, ts = recipe.rollout, recipe.algorithm, recipe.timesteps
    return expected_evaluations_per_video(
        ro.steps,
        ro.ode_steps,
        alg.mode == "full-trajectory",
        (int(ts.window[0]), int(ts.window[1])),
        list(ts.weights),
        ro.group_size,
        alg.mode == "flash" and alg.iso_temporal,
        ro.share_prefix,
        cost,
    )


def rollout_note(recipe: Recipe) -> str:
    ro = recipe.rollout
    return (
        f"rollout: {float(rollout_evaluations(recipe)):.2f} model evaluations per video (the grid has "
        f"{ro.steps} steps; ode_solver={ro.ode_solver}, ode_steps={ro.ode_steps}, share_prefix={ro.share_prefix})"
    )


def step_flops(recipe: Recipe, s: Sizes, phases: list[Phase]) -> dict[str, int]:
    """Per rank. Each phase counted one micro-batch; FLOPs are linear in the batch. A forward was
    measured at `measured_scale` (its passes: 2 with CFG); each step costs it x the step's passes /
    the measured passes (a step at guidance scale 1 one pass: fgrpo.planner.guidance)."""
    from .guidance import measured_scale, passes_at, step_passes, transition_passes

    by = {p.name: p.flops for p in phases}
    measured = passes_at(measured_scale(recipe))
    rollout_passes = step_passes(recipe, recipe.rollout.steps)
    passes = rollout_evaluations(recipe, rollout_passes)  # per video, over the draw (x measured when uniform)
    first = rollout_passes[0]
    train_mb = min(s.micro_batch, s.transitions)

    def forwards(f: dict[str, int], first_passes: int, all_passes) -> Fraction:
        # the first step's forward computes the text-side projections, later steps' reuse them
        return Fraction(f["first"] * first_passes + f["later"] * (all_passes - first_passes), measured)

    out = {
        "rollout": int(forwards(by["rollout"], first, passes) * s.videos / s.micro_batch),
        "VAE decode": int(Fraction(by["VAE decode"]["decode"] * s.videos, s.micro_batch)),
        "training": int(
            Fraction((by["training"].get("recompute", 0) + by["training"]["train"]) * s.transitions, train_mb)
            * transition_passes(recipe)
            / measured
        ),
        "text encoding (per prompt)": int(Fraction(by["text encoding"]["batch"], _text_batch())),
    }
    if "image encoding" in by:  # once per prompt, as the text's
        out["image encoding (per prompt)"] = sum(by["image encoding"].values())
    if "evaluation" in by:
        e, eval_passes = by["evaluation"], step_passes(recipe, recipe.eval.steps)
        out["evaluation"] = int(forwards(e, eval_passes[0], sum(eval_passes))) + e["decode"]
    return out


def _text_batch() -> int:
    from .phases import TEXT_BATCH

    return TEXT_BATCH


def _next_degree(p: Plan, dim: str) -> int | None:
    """The next sp or tp degree this world size allows (dividing the heads together with the other
    one, sp also the tokens of a video), taken from dp_shard; None when there is none."""
    lay, s = p.layout, p.sizes
    tokens = s.latent[1] * (s.latent[2] // 2) * (s.latent[3] // 2)
    other = lay["tp"] if dim == "sp" else lay["sp"]
    for d in range(lay[dim] + 1, p.world + 1):
        fits_world = p.world % (lay["dp_replicate"] * other * d) == 0
        if fits_world and p.heads % (d * other) == 0 and (dim == "tp" or tokens % d == 0):
            return d
    return None


def advice(p: Plan, phase: Phase) -> list[str]:
    """Changes to try for a phase that does not fit, each naming the recipe field."""
    out = []
    parts = phase.parts
    model = phase.name in ("rollout", "training", "evaluation")
    sp, tp = _next_degree(p, "sp"), _next_degree(p, "tp")
    if model and sp:
        out.append(
            f"more sequence parallelism (--parallelism.sp {sp}): each GPU holds 1/{sp} of every video's "
            "tokens in the blocks' activations"
        )
    if model and p.sizes.micro_batch > 1:
        out.append(f"a smaller --rollout.micro-batch (now {p.sizes.micro_batch}): activations scale with it")
    if phase.name == "VAE decode" and p.sizes.micro_batch > 1:
        out.append(
            f"a smaller --rollout.micro-batch (now {p.sizes.micro_batch}): the VAE decodes a micro-batch at once"
        )
    if phase.name == "training" and not p.layout["activation_checkpointing"]:
        out.append(
            "activation checkpointing (--parallelism.activation-checkpointing): keeps only each block's "
            "input, recomputing one block at a time in backward"
        )
    if model and tp:
        out.append(
            f"more tensor parallelism (--parallelism.tp {tp}): weights and each block's activations "
            "split over the TP group"
        )
    if parts.get("reward model"):
        out.append(
            "serve the reward model (--reward-server.launch or --reward-server.url): "
            f"frees {parts['reward model'] / GIB:.1f} GiB on every training GPU"
        )
    if model and not (sp or tp):
        out.append("more GPUs (launch.nodes / launch.procs_per_node), for more sequence or tensor parallelism")
    if phase.name == "text encoding":
        out.append("a GPU with more memory for start-up (the UMT5 encoder is freed before training)")
    if phase.name == "image encoding":
        out.append(
            "a GPU with more memory for start-up, or a smaller video (--rollout.frames, --rollout.height, "
            "--rollout.width): the VAE encodes one condition video (the CLIP encoder is freed before training)"
        )
    return out
