"""Arms compared at equal FLOPs on the miniature model, over seeds: the paper's comparison (flash,
full-trajectory, fast, no-ITG, no-TGR) and the rollout options' (exact against cheaper rollouts).

    python benchmarks/miniature_comparison.py [--design paper|rollout-options|rollout-options-2|rollout-options-3]
        [--seeds 5]
        [--budget-steps N] [--runs-dir DIR]

Each design is fixed before any of its runs (its version; do not change it because of an outcome).

**paper** (COMPARISON_VERSION 3):

* World, model and recipe: fgrpo.miniature.world WORLD_VERSION, the miniature model
  MINIATURE_VERSION (fgrpo/miniature/pretrain.py, its cached build), recipes/miniature.py with
  the design's overrides: Wan's 20 denoising steps (SDE window the first 10, as the paper's), so that a
  full-trajectory step costs more than 3x a flash step as on the real model (at the recipe's 10
  steps the VAE decode's fixed cost holds it to 2.7x), and Flow-GRPO's noise constant raised from
  0.7 to 1.0 so that the one SDE step of the finer grid moves a video about as much (its std goes
  with a sqrt(dt)). Without guidance, 4 prompts x 8 videos per step.
  Version 1 ran on the recipe with CFG 4 and 60 steps, version 2 on the recipe without guidance at
  10 steps (docs/miniature.md keeps their tables).
* Arms: flash (the recipe), `full-trajectory`, `fast` (Flow-GRPO-Fast), no-ITG (flash without
  iso-temporal grouping), no-TGR (flash without temporal gradient rectification). Budget: 30 flash
  steps.

**rollout-options** (version 1, issue 22: rollouts with at least 2x fewer model evaluations per
video against the exact one):

* recipes/miniature.py as users run it (10 steps on the shift-3 grid, SDE window [0, 5), no
  guidance: one model evaluation per step), no overrides.
* Arms: exact (the recipe: Euler on the whole grid, 10 evaluations per video); `euler 3` (the
  deterministic prefix and suffix on a 3-node sub-grid, `--rollout.ode-steps 3`: 4.4 evaluations per
  video averaged over the window's draw, 2.27x fewer, the coarsest sub-grid
  benchmarks/rollout_options.py measured, whose samples' gold was within its interval of exact's);
  `share_prefix + euler 5` (a group's prefix computed once and a 5-node sub-grid: 4.95, 2.02x fewer;
  the combination of two milder options; counts from fgrpo.planner.plan.rollout_evaluations). Euler
  rather than UniPC: at every sub-grid that table measured, the higher-order solvers did no better.
  Budget: the exact rollout's FLOPs at the recipe's 40 steps (cheaper arms take more steps in it).

**rollout-options-2** (version 1, fixed after rollout-options v1's outcome, before any of its runs):
rollout-options v1 showed each option alone, and the milder combination, not worse than exact;
the combination that brings the 14B recipe's plan under 0.6x of the exact rollout (`fgrpo plan
recipes/wan14b.py --rollout-options`: share_prefix + a sub-grid of 4 of its 12 steps, 0.54x; the
sub-grid alone, 0.61x) was not measured. Same recipe, budget and seeds as rollout-options v1, run into
the same folder so its exact arm's runs are reused (same overrides, same run names: the sweep
skips them). Arms: exact; `share_prefix + euler 3` (`--rollout.share-prefix --rollout.ode-steps 3`:
3.53 evaluations per video, 2.84x fewer). The paper recipes take it as their default if its
interval against exact holds 0 or lies above it, and not otherwise.

**rollout-options-3** (version 1, fixed before any of its runs): issue 22's training-free caches,
of which only TaylorSeer skips work on this model (benchmarks/rollout_options.py: 0.539 of 0.886
GFLOP per video, samples' gold +0.0327 [-0.0031, +0.0774] against no cache; FirstBlockCache never
skips at diffusers' threshold here and MagCache skips 3 %). Same recipe, budget, seeds and folder as
rollout-options v1 (its exact arm reused). Arms: exact; `cache taylorseer` (`--rollout.cache
taylorseer`: diffusers' TaylorSeerCache on the deterministic steps, off for the SDE step and the
training pass). Reported whatever it shows; no default changes with it (its samples are
approximations, unlike a sub-grid's exact ODE steps).

Common to all:

* Equal compute: the budget is the baseline arm's FLOPs at `--budget-steps` optimizer steps. Each
  arm's FLOPs per step are measured by a one-step probe run (the `compute/flops` every train record
  carries: rollout + training, measured by torch's FLOP counter); its `optim.max_steps` is the
  budget divided by that, rounded to the nearest step (the table shows the FLOPs each arm used).
* Seeds: `prompts.seed` 0 .. seeds-1 (prompt order, initial noise, SDE noise, timesteps); every
  arm runs every seed, through `fgrpo sweep` (one sweep per arm) on the local backend.
* Score: held-out gold faithfulness (`miniature_gold`, never trained on) at the final evaluation:
  24 held-out prompts x 2 fixed evaluation seeds, deterministic ODE, EMA weights. Per arm the
  mean +- std over seeds; against the baseline the paired difference (same seed, same held-out
  video) with a 95 % two-way bootstrap interval over seeds and prompts (fgrpo.report.comparison);
  and the same at one matched FLOPs budget, with a verdict per arm (distinguishable from seed noise
  or not) and about how many seeds or prompts would settle it (fgrpo.report.equal_compute).

Prints the table and writes RUNS_DIR/comparison.html (`fgrpo report` over every run, with the
paired comparison section) and RUNS_DIR/comparison.json. Run again, it resumes: finished runs
are skipped by `fgrpo sweep`. A benchmark, not a test: 15-25 runs of 1-3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPE = REPO / "recipes" / "miniature.py"


@dataclass(frozen=True)
class Design:
    version: int
    recipe_overrides: list[str]
    arms: dict[str, list[str]]
    """Arm name -> its overrides; the first arm is the baseline every other is compared with."""
    budget_steps: int
    """The compute budget, in the baseline arm's optimizer steps."""


DESIGNS = {
    "paper": Design(
        version=3,
        recipe_overrides=["--rollout.steps", "20", "--timesteps.window", "0", "10", "--rollout.noise-constant", "1.0"],
        arms={
            "flash": [],
            "full-trajectory": ["--algorithm.mode", "full-trajectory"],
            "fast": ["--algorithm.mode", "fast"],
            "no-ITG": ["--algorithm.no-iso-temporal"],
            "no-TGR": ["--algorithm.no-rectification"],
        },
        budget_steps=30,
    ),
    "rollout-options": Design(
        version=1,
        recipe_overrides=[],
        arms={
            "exact": [],
            "euler 3": ["--rollout.ode-steps", "3"],
            "share_prefix + euler 5": ["--rollout.share-prefix", "--rollout.ode-steps", "5"],
        },
        budget_steps=40,
    ),
    "rollout-options-2": Design(
        version=1,
        recipe_overrides=[],
        arms={
            "exact": [],
            "share_prefix + euler 3": ["--rollout.share-prefix", "--rollout.ode-steps", "3"],
        },
        budget_steps=40,
    ),
    "rollout-options-3": Design(
        version=1,
        recipe_overrides=[],
        arms={"exact": [], "cache taylorseer": ["--rollout.cache", "taylorseer"]},
        budget_steps=40,
    ),
}
COMPARISON_VERSION = DESIGNS["paper"].version  # the paper design's version, as docs/miniature.md cites it


@dataclass
class Args:
    design: Literal["paper", "rollout-options", "rollout-options-2", "rollout-options-3"] = "paper"
    """Which comparison (the module's docstring states each design)."""
    seeds: int = 5
    """Seeds per arm (prompts.seed 0 .. seeds-1)."""
    budget_steps: int | None = None
    """The compute budget, in the baseline arm's optimizer steps (default: the design's)."""
    runs_dir: str | None = None
    """Where the runs, the probes, the report and the JSON go (default: runs/comparison for the paper
    design, runs/comparison-DESIGN for the others)."""
    metric: str = "miniature_gold"
    """The held-out score compared (a reward component recorded at evaluation)."""


def fgrpo(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fgrpo", *args], check=True, cwd=REPO)


def step_flops(design: Design, arm: str, runs: Path) -> float:
    """FLOPs of one optimizer step of `arm`, from a one-step probe run's train record."""
    name = "probe-" + arm.replace(" ", "").replace("+", "-")
    if (
        not (runs / name / "metrics.jsonl").is_file()
        or '"kind": "train"' not in (runs / name / "metrics.jsonl").read_text()
    ):
        fgrpo(
            "launch",
            str(RECIPE),
            *design.recipe_overrides,
            *design.arms[arm],
            "--optim.max-steps",
            "1",
            "--eval.interval",
            "1000",
            "--logging.runs-dir",
            str(runs),
            "--logging.run-name",
            name,
        )
    records = [json.loads(x) for x in (runs / name / "metrics.jsonl").read_text().splitlines()]
    return float(next(r for r in records if r["kind"] == "train")["compute/flops"])


def main() -> int:
    from rich.console import Console

    from fgrpo.report.comparison import comparison_rows, comparison_text
    from fgrpo.report.data import label_runs, load_run
    from fgrpo.report.equal_compute import significance_at_budget, significance_table

    a = tyro.cli(Args)
    design = DESIGNS[a.design]
    budget_steps = a.budget_steps or design.budget_steps
    default_dir = "runs/comparison" if a.design == "paper" else f"runs/comparison-{a.design}"
    root = Path(a.runs_dir or default_dir).resolve()
    probes, runs_dir = root / "probes", root / "runs"
    flops = {arm: step_flops(design, arm, probes) for arm in design.arms}
    base_arm = next(iter(design.arms))
    budget = flops[base_arm] * budget_steps
    steps = {arm: max(1, round(budget / f)) for arm, f in flops.items()}
    for arm in design.arms:
        print(
            f"{arm:>22}: {flops[arm] / 1e9:8.2f} GFLOP/step ({flops[arm] / flops[base_arm]:.2f}x {base_arm}) "
            f"-> {steps[arm]} steps",
            flush=True,
        )
    seeds = ",".join(str(s) for s in range(a.seeds))
    for arm, overrides in design.arms.items():
        fgrpo(
            "sweep",
            str(RECIPE),
            "--grid",
            f"prompts.seed={seeds}",
            *design.recipe_overrides,
            *overrides,
            "--optim.max-steps",
            str(steps[arm]),
            "--eval.interval",
            str(steps[arm]),
            "--logging.runs-dir",
            str(runs_dir),
        )
    run_dirs = sorted(p.parent for p in runs_dir.glob("*/recipe.json"))
    series = label_runs([load_run(p) for p in run_dirs])  # read once: the report and the JSON share it
    baseline = baseline_label(series, design)
    fgrpo(
        "report",
        *map(str, run_dirs),
        "--metric",
        a.metric,
        "--baseline",
        baseline,
        "--out",
        str(root / "comparison.html"),
    )
    rows = comparison_rows(series, a.metric, baseline)
    matched = significance_at_budget(series, a.metric, baseline)
    out = {
        "design": a.design,
        "comparison_version": design.version,
        "recipe_overrides": design.recipe_overrides,
        "arms": design.arms,
        "seeds": a.seeds,
        "budget_steps": budget_steps,
        "budget_flops": budget,
        "flops_per_step": flops,
        "steps": steps,
        "rows": rows,
        "significance": matched,
    }
    (root / "comparison.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    print("\n".join(comparison_text(rows, a.metric)))
    if matched is not None:
        Console(width=240).print(significance_table(matched))
    return 0


def baseline_label(series, design: Design) -> str:
    """The label of the series whose runs match the baseline arm on every field the arms differ in."""
    from fgrpo.recipe.config import Recipe
    from fgrpo.recipe.io import load_recipe_file, to_dict
    from fgrpo.report.data import flatten

    base = load_recipe_file(RECIPE)
    arms = [
        flatten(to_dict(tyro.cli(Recipe, default=base, args=design.recipe_overrides + o))) for o in design.arms.values()
    ]
    differ = [k for k in arms[0] if len({json.dumps(arm.get(k)) for arm in arms}) > 1]
    for s in series:
        if all(json.dumps(s.runs[0].recipe.get(k)) == json.dumps(arms[0][k]) for k in differ):
            return s.label
    raise SystemExit("no run of the baseline arm found")


if __name__ == "__main__":
    raise SystemExit(main())
