"""`fgrpo plan --rollout-options`: GPU-minutes per optimizer step of a recipe as it is and with each
rollout option applied to it (`rollout.share_prefix`, `rollout.ode_solver` with `rollout.ode_steps`).

Each row is the planner's own plan of the recipe with those rollout fields overridden, so its
numbers are `fgrpo plan`'s for that recipe (evaluations per video: plan.rollout_evaluations). The
fake run, the slow part of a plan (a minute for 14B on 2 cores), reads none of these fields: they
change how many model evaluations a rollout makes, not the shape of any forward. So every row
re-plans on the recipe's fake run (tests/planner/test_plan_rollout_options.py checks they are equal).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Literal

from fgrpo.recipe.config import Recipe

from .plan import Gpu, Plan, plan, planning_problems
from .spec import ModelSpec

__all__ = ["OptionRow", "RolloutOption", "compare_rollout_options", "rollout_options", "row_dict", "step_minutes"]

# The rollout fields an option may set: none of them is read by the fake run.
OPTION_FIELDS = ("share_prefix", "ode_solver", "ode_steps")

# rollout.ode_steps as fractions of rollout.steps: a half (for an even grid exactly Wan's own grid of
# steps/2 steps), and three tenths, the coarsest sub-grid benchmarks/rollout_options.py measured
# (3 of 10 steps: 4.6 evaluations per video, held-out gold within noise of the full grid).
ODE_STEP_FRACTIONS = (Fraction(1, 2), Fraction(3, 10))


@dataclass(frozen=True)
class RolloutOption:
    name: str
    """`unipc K`: rollout.ode_solver unipc with rollout.ode_steps K."""
    overrides: dict[str, object] = field(default_factory=dict)
    """rollout fields set on top of the recipe's (OPTION_FIELDS only)."""


def ode_step_choices(steps: int) -> list[int]:
    """The sub-grids to show for a grid of `steps` steps, finest first: each fraction of
    ODE_STEP_FRACTIONS rounded, at least 1 and coarser than the grid itself."""
    rounded = {max(1, round(f * steps)) for f in ODE_STEP_FRACTIONS}
    return sorted((k for k in rounded if k < steps), reverse=True)


def rollout_options(steps: int) -> list[RolloutOption]:
    """exact (the recipe), share_prefix, UniPC on each sub-grid, and share_prefix with UniPC on the
    coarsest. UniPC stands for every solver: its cost is its evaluations, the same for euler and
    dpmpp_2m on the same sub-grid."""
    subgrids = ode_step_choices(steps)
    out = [RolloutOption("exact"), RolloutOption("share_prefix", {"share_prefix": True})]
    out += [RolloutOption(f"unipc {k}", {"ode_solver": "unipc", "ode_steps": k}) for k in subgrids]
    if subgrids:
        k = subgrids[-1]
        out.append(
            RolloutOption(f"share_prefix + unipc {k}", {"share_prefix": True, "ode_solver": "unipc", "ode_steps": k})
        )
    return out


@dataclass
class OptionRow:
    option: RolloutOption
    plan: Plan | None = None
    skipped: str = ""
    """Why the option was not planned (the recipe already runs it, or a recipe problem it makes)."""


def step_minutes(p: Plan) -> dict[str, float]:
    """A plan's GPU-minutes per optimizer step, all GPUs, and where they go."""
    rollout = p.gpu_seconds(p.total_flops("rollout")) / 60
    total = p.gpu_minutes_per_step
    return {
        "evaluations_per_video": p.rollout_evaluations,
        "rollout_gpu_minutes": rollout,
        "training_gpu_minutes": p.gpu_seconds(p.total_flops("training")) / 60,
        "gpu_minutes_per_step": total,
        "rollout_share": rollout / total if total else 0.0,
    }


def row_dict(row: OptionRow, exact: Plan) -> dict:
    out: dict = {"option": row.option.name, "overrides": {f"rollout.{k}": v for k, v in row.option.overrides.items()}}
    if row.plan is None:
        return {**out, "skipped": row.skipped}
    minutes = step_minutes(row.plan)
    return {**out, **minutes, "x_of_exact": minutes["gpu_minutes_per_step"] / exact.gpu_minutes_per_step}


def with_rollout(recipe: Recipe, overrides: dict[str, object]) -> Recipe:
    unknown = set(overrides) - set(OPTION_FIELDS)
    if unknown:  # another field could change what the fake run computes
        raise ValueError(f"rollout options may set only {OPTION_FIELDS}, got {sorted(unknown)}")
    return replace(recipe, rollout=replace(recipe.rollout, **overrides))


def compare_rollout_options(
    recipe: Recipe,
    gpus: int | None = None,
    gpu: Gpu = Gpu(),
    spec: ModelSpec | None = None,
    target: Literal["gpu", "cpu"] = "gpu",
) -> list[OptionRow]:
    """One row per option of `rollout_options`, the first the recipe's own plan (RecipeError if the
    recipe cannot be planned). An option that changes nothing, or that the recipe's other settings
    refuse (a solver in full-trajectory mode), is skipped with the reason."""
    spec = spec or ModelSpec.from_preset(recipe.model.preset)
    exact = plan(recipe, gpus, gpu, spec, target)
    first, *others = rollout_options(recipe.rollout.steps)
    rows = [OptionRow(first, exact)]
    for option in others:
        changed = with_rollout(recipe, option.overrides)
        problems = planning_problems(changed, exact.world)
        if changed == recipe:
            rows.append(OptionRow(option, skipped="the recipe already runs it (the exact row)"))
        elif problems:
            rows.append(OptionRow(option, skipped="; ".join(problems)))
        else:
            rows.append(OptionRow(option, plan(changed, exact.world, gpu, spec, target, run=exact.run)))
    return rows
