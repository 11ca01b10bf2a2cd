"""`fgrpo report`: a self-contained HTML report of a run, a sweep or several runs (fgrpo.report).

fgrpo report RUN | SWEEP | RUNS_DIR | RUN RUN ... [--out FILE.html] [--metric NAME] [--baseline LABEL]
    [--budget-flops F] [--budget-tolerance 0.05] [--json] [--quiet]
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro


@dataclass
class ReportArgs:
    """Write one HTML file that works offline (charts and videos embedded): reward curves (train and
    held-out, with their components), grad norm, clip fraction, |ratio - 1|, advantage spread, the
    SDE step indices trained, seconds per phase, memory per rank, and the held-out samples before
    and after training. For a sweep or several runs: a leaderboard by held-out reward, curves
    against step, compute (FLOPs) and wall time, seeds averaged into a mean with a band, and a
    paired comparison of each configuration with a baseline at the latest evaluation (`--metric`):
    mean ± std over seeds, the difference paired by seed and held-out video with a 95% bootstrap
    CI over seeds and prompts, and the compute (FLOPs) it took; then the same at equal compute:
    each run at its latest evaluation within one FLOPs budget (`--budget-flops`, default the
    largest every run reached), each difference called distinguishable (its interval excludes 0)
    or not distinguishable from seed noise, with about how many seeds or held-out prompts would
    settle it."""

    targets: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="RUN|SWEEP|RUNS_DIR ...")]
    """A run folder, a sweep folder, a folder of runs, or several run folders."""
    out: str | None = None
    """Where to write it; default RUN/report.html, SWEEP/report.html (required for several targets)."""
    metric: str = "eval_reward"
    """What the paired comparison compares: eval_reward (the total) or any reward component
    recorded at evaluation, e.g. miniature_gold (eval/miniature_gold works too)."""
    baseline: str | None = None
    """The configuration the others are compared to: its label or a unique part of it (e.g.
    mode=fast); default the one labelled mode=flash, else the first."""
    budget_flops: float | None = None
    """The compute budget (cumulative FLOPs, e.g. 3e12) at which configurations are compared; default
    the largest budget every run reached (the least of their last evaluations' compute/flops)."""
    budget_tolerance: float = 0.05
    """An evaluation up to this fraction above the budget still counts as at it (arms whose step
    counts were rounded to match a budget)."""
    json: bool = False
    """Print the leaderboard, the paired comparison and the significance at equal compute as one
    JSON object (with the report's path) instead of tables."""
    quiet: bool = False
    """Print only the report's path (no leaderboard, no comparison)."""


def cmd_report(argv: list[str]) -> int:
    from fgrpo.report import write_report

    a = tyro.cli(ReportArgs, args=argv, prog="fgrpo report")
    if not a.targets:
        raise ValueError("name a run folder, a sweep folder or several runs")
    out, board, compared, matched = write_report(
        [Path(t) for t in a.targets],
        Path(a.out) if a.out else None,
        a.metric,
        a.baseline,
        a.budget_flops,
        a.budget_tolerance,
    )
    if a.json:
        found = {"report": str(out), "leaderboard": board, "comparison": compared, "significance": matched}
        print(json.dumps(found, indent=1, default=str))
        return 0
    if not a.quiet and len(board) > 1:
        for r in board:
            held = "-" if r["heldout"] is None else f"{r['heldout']:+.4f}"
            print(f"{r['rank']:>3}  {held:>8}  {r['run']}  ({r['label']})")
    if not a.quiet and len(compared) > 1:
        from fgrpo.report.comparison import comparison_text

        print("\n".join(["", *comparison_text(compared, a.metric), ""]))
    if not a.quiet and matched is not None:
        from rich.console import Console

        from fgrpo.report.equal_compute import significance_table

        Console(width=None if sys.stdout.isatty() else 240).print(significance_table(matched))
    print(f"report: {out}")
    return 0


__all__ = ["ReportArgs", "cmd_report"]
