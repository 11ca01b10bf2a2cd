"""`fgrpo plan`: peak memory per GPU for each phase, FLOPs per step and GPU-hours of a recipe.

  fgrpo plan RECIPE.py [--section.field VALUE ...] [--gpus N] [--gpu-memory 80GiB]
                       [--gpu-tflops 989] [--mfu 0.4] [--rollout-options] [--json]

The recipe's architecture (its preset) is built on the meta device and parallelised for the
target world size on a fake process group; every phase then runs on fake tensors under torch's
memory tracker and FLOP counter (fgrpo.planner). No weights are read, `model.path` and the
reward model files need not exist, nothing is written. `--rollout-options` adds a table of
GPU-minutes per step for the recipe and for each rollout option applied to it
(fgrpo.planner.rollout_options).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated

import tyro

from fgrpo.recipe.config import Recipe

from .launch import parse_recipe_args


@dataclass
class PlanArgs:
    """Plan a run without a GPU: peak memory per GPU of each phase (start-up text encoding, rollout,
    VAE decode, training, evaluation), FLOPs per optimizer step and GPU-hours for optim.max_steps.
    Only the architecture is needed (the recipe's preset); no weights are read, nothing is written.
    --rollout-options: GPU-minutes per step for the recipe and with each rollout option applied."""

    recipe: Annotated[Recipe, tyro.conf.arg(name="")]
    gpus: int | None = None
    """World size to plan for (default: the recipe's, launch.nodes x launch.procs_per_node or the
    parallel dims); parallelism.dp_shard -1 takes what dp_replicate x sp x tp leave."""
    gpu_memory: str = "80GiB"
    """Memory per GPU, e.g. 80GiB, 141GB; phases above it are flagged with what to change."""
    gpu_tflops: float = 989.0
    """Dense bf16 TFLOP/s per GPU (H100 SXM: 989)."""
    mfu: float = 0.4
    """Model FLOPs utilisation assumed for GPU-hours."""
    rollout_options: bool = False
    """Also plan the recipe with each rollout option applied (rollout.share_prefix; rollout.ode_solver
    unipc with rollout.ode_steps at 1/2 and 3/10 of rollout.steps; both together at the coarser) and
    print evaluations per video and GPU-minutes per step (rollout, training, total, x of the recipe's);
    an option the recipe refuses (a solver in full-trajectory mode) is listed as skipped, with why.
    With --json: the plan's JSON plus `rollout_options`, one entry per option."""
    json: bool = False
    """Print the plan as JSON instead of tables."""


def cmd_plan(argv: list[str]) -> int:
    from fgrpo.planner import Gpu, parse_bytes, plan
    from fgrpo.planner.report import render

    _, args = parse_recipe_args("plan", argv, PlanArgs)
    if not (0 < args.mfu <= 1):
        raise ValueError(f"--mfu: must be in (0, 1], got {args.mfu}")
    if not args.gpu_tflops > 0:
        raise ValueError(f"--gpu-tflops: must be > 0, got {args.gpu_tflops}")
    if args.gpus is not None and args.gpus < 1:
        raise ValueError(f"--gpus: must be >= 1, got {args.gpus}")
    gpu = Gpu(parse_bytes(args.gpu_memory), args.gpu_tflops, args.mfu)
    if args.rollout_options:
        return _plan_rollout_options(args.recipe, args.gpus, gpu, args.json)
    p = plan(args.recipe, args.gpus, gpu)
    if args.json:
        print(json.dumps(p.to_dict(), indent=2))
    else:
        render(p)
    return 0


def _plan_rollout_options(recipe: Recipe, gpus: int | None, gpu, as_json: bool) -> int:
    from fgrpo.planner.report import render, render_rollout_options
    from fgrpo.planner.rollout_options import compare_rollout_options, exact_plan, row_dict

    rows = compare_rollout_options(recipe, gpus, gpu)
    own, exact = rows[0].plan, exact_plan(rows)
    assert own is not None  # the recipe's own plan is always made
    if as_json:
        print(json.dumps({**own.to_dict(), "rollout_options": [row_dict(r, exact) for r in rows]}, indent=2))
    else:
        render(own)
        render_rollout_options(rows)
    return 0


__all__ = ["PlanArgs", "cmd_plan"]
