"""The paper's comparison in miniature: flash, full-trajectory, fast, no-ITG and no-TGR at equal FLOPs.

    python benchmarks/miniature_comparison.py [--seeds 5] [--budget-steps 30] [--runs-dir runs/comparison]

Design, fixed before any run (COMPARISON_VERSION; do not change it because of an outcome):

* World, model and recipe: fgrpo.miniature.world WORLD_VERSION, the miniature model
  MINIATURE_VERSION (fgrpo/miniature/pretrain.py, its cached build), recipes/miniature.py with
  RECIPE_OVERRIDES: Wan's 20 denoising steps (SDE window the first 10, as the paper's), so that a
  full-trajectory step costs more than 3x a flash step as on the real model (at the recipe's 10
  steps the VAE decode's fixed cost holds it to 2.7x), and Flow-GRPO's noise constant raised from
  0.7 to 1.0 so that the one SDE step of the finer grid moves a video about as much (its std goes
  with a sqrt(dt)). Without guidance, 4 prompts x 8 videos per step.
  Version 1 ran on the recipe with CFG 4 and 60 steps, version 2 on the recipe without guidance at
  10 steps (docs/miniature.md keeps their tables).
* Arms: flash (the recipe), `full-trajectory`, `fast` (Flow-GRPO-Fast), no-ITG (flash without
  iso-temporal grouping), no-TGR (flash without temporal gradient rectification).
* Equal compute: the budget is flash's FLOPs at `--budget-steps` optimizer steps. Each arm's
  FLOPs per step are measured by a one-step probe run (the `compute/flops` every train record
  carries: rollout + training, measured by torch's FLOP counter); its `optim.max_steps` is the
  budget divided by that, rounded to the nearest step (the table shows the FLOPs each arm used).
* Seeds: `prompts.seed` 0 .. seeds-1 (prompt order, initial noise, SDE noise, timesteps); every
  arm runs every seed, through `fgrpo sweep` (one sweep per arm) on the local backend.
* Score: held-out gold faithfulness (`miniature_gold`, never trained on) at the final evaluation:
  24 held-out prompts x 2 fixed evaluation seeds, deterministic ODE, EMA weights. Per arm the
  mean +- std over seeds; against flash the paired difference (same seed, same held-out video)
  with a 95 % two-way bootstrap interval over seeds and prompts (fgrpo.report.comparison); and
  the same at one matched FLOPs budget, with a verdict per arm (distinguishable from seed noise or
  not) and about how many seeds or prompts would settle it (fgrpo.report.equal_compute).

Prints the table and writes RUNS_DIR/comparison.html (`fgrpo report` over every run, with the
paired comparison section) and RUNS_DIR/comparison.json. Run again, it resumes: finished runs
are skipped by `fgrpo sweep`. A benchmark, not a test: about 25 runs of 1-3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COMPARISON_VERSION = 3
RECIPE = REPO / "recipes" / "miniature.py"
RECIPE_OVERRIDES = ["--rollout.steps", "20", "--timesteps.window", "0", "10", "--rollout.noise-constant", "1.0"]
ARMS: dict[str, list[str]] = {
    "flash": [],
    "full-trajectory": ["--algorithm.mode", "full-trajectory"],
    "fast": ["--algorithm.mode", "fast"],
    "no-ITG": ["--algorithm.no-iso-temporal"],
    "no-TGR": ["--algorithm.no-rectification"],
}


@dataclass
class Args:
    seeds: int = 5
    """Seeds per arm (prompts.seed 0 .. seeds-1)."""
    budget_steps: int = 30
    """The compute budget, in flash optimizer steps."""
    runs_dir: str = "runs/comparison"
    """Where the runs, the probes, the report and the JSON go."""
    metric: str = "miniature_gold"
    """The held-out score compared (a reward component recorded at evaluation)."""


def fgrpo(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fgrpo", *args], check=True, cwd=REPO)


def step_flops(arm: str, runs: Path) -> float:
    """FLOPs of one optimizer step of `arm`, from a one-step probe run's train record."""
    name = f"probe-{arm}"
    if (
        not (runs / name / "metrics.jsonl").is_file()
        or '"kind": "train"' not in (runs / name / "metrics.jsonl").read_text()
    ):
        fgrpo(
            "launch",
            str(RECIPE),
            *RECIPE_OVERRIDES,
            *ARMS[arm],
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
    root = Path(a.runs_dir).resolve()
    probes, runs_dir = root / "probes", root / "runs"
    flops = {arm: step_flops(arm, probes) for arm in ARMS}
    budget = flops["flash"] * a.budget_steps
    steps = {arm: max(1, round(budget / f)) for arm, f in flops.items()}
    for arm in ARMS:
        print(
            f"{arm:>16}: {flops[arm] / 1e9:8.2f} GFLOP/step ({flops[arm] / flops['flash']:.2f}x flash) "
            f"-> {steps[arm]} steps",
            flush=True,
        )
    seeds = ",".join(str(s) for s in range(a.seeds))
    for arm, overrides in ARMS.items():
        fgrpo(
            "sweep",
            str(RECIPE),
            "--grid",
            f"prompts.seed={seeds}",
            *RECIPE_OVERRIDES,
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
    baseline = baseline_label(series)
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
        "comparison_version": COMPARISON_VERSION,
        "recipe_overrides": RECIPE_OVERRIDES,
        "seeds": a.seeds,
        "budget_steps": a.budget_steps,
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


def baseline_label(series) -> str:
    """The flash arm's series label (mode flash, iso-temporal and rectification on)."""
    for s in series:
        r = s.runs[0].recipe
        if (r.get("algorithm.mode"), r.get("algorithm.iso_temporal"), r.get("algorithm.rectification")) == (
            "flash",
            True,
            True,
        ):
            return s.label
    raise SystemExit("no flash run found")


if __name__ == "__main__":
    raise SystemExit(main())
