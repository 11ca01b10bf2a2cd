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

__all__ = [
    "EXACT",
    "OptionRow",
    "RolloutOption",
    "compare_rollout_options",
    "exact_plan",
    "rollout_options",
    "row_dict",
    "step_minutes",
    "with_rollout",
]

# The rollout fields an option may set: none of them is read by the fake run.
OPTION_FIELDS = ("share_prefix", "ode_solver", "ode_steps")
# The exact rollout: every video its own initial noise, Euler on every step of the grid.
EXACT = {"share_prefix": False, "ode_solver": "euler", "ode_steps": None}

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
    """exact, share_prefix, UniPC on each sub-grid, and share_prefix with UniPC on the coarsest, each
    applied to the exact rollout (EXACT). UniPC stands for every solver: its cost is its
    evaluations, the same for euler and dpmpp_2m on the same sub-grid."""
    subgrids = ode_step_choices(steps)
    out = [RolloutOption("exact", dict(EXACT)), RolloutOption("share_prefix", {"share_prefix": True})]
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
    """Why the option was not planned (a recipe problem it makes)."""


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


def exact_plan(rows: list[OptionRow]) -> Plan:
    """The exact rollout's plan, which every row's "x of exact" divides by."""
    plan_ = next(r.plan for r in rows if r.option.name == "exact")
    assert plan_ is not None  # the exact rollout is refused by no recipe that can be planned
    return plan_


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
    """The recipe's own plan first (RecipeError if it cannot be planned), as the row `recipe` when
    its rollout is not the exact one; then one row per option of `rollout_options`, each applied to
    the recipe with the exact rollout (so a recipe that defaults to an option is compared with what
    it saves). An option the recipe's other settings refuse (a solver in full-trajectory mode) is
    skipped with the reason; the option the recipe runs is its own plan."""
    spec = spec or ModelSpec.from_preset(recipe.model.preset)
    own = plan(recipe, gpus, gpu, spec, target)
    base = with_rollout(recipe, EXACT)
    recipe_row = RolloutOption("recipe", {k: getattr(recipe.rollout, k) for k in OPTION_FIELDS})
    rows = [] if base == recipe else [OptionRow(recipe_row, own)]
    for option in rollout_options(recipe.rollout.steps):
        changed = with_rollout(base, option.overrides)
        problems = planning_problems(changed, own.world)
        if changed == recipe:
            rows.append(OptionRow(option, own))
        elif problems:
            rows.append(OptionRow(option, skipped="; ".join(problems)))
        else:
            rows.append(OptionRow(option, plan(changed, own.world, gpu, spec, target, run=own.run)))
    return rows
