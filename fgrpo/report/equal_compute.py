"""The report's "Significance at equal compute" section: configurations compared at one FLOPs budget.

`significance_at_budget` reads the runs (grouped into configurations by fgrpo.report.data's
label_runs: the fields that differ, seeds pooled) through the pure statistics of
fgrpo.report.significance and returns plain data (what `fgrpo report --json` prints);
`significance_section` renders it as HTML and `significance_table` as a rich table for a terminal.
"""

from __future__ import annotations

import html

from rich.table import Table

from .comparison import TOTAL, metric_name, paired_bootstrap, pick_baseline, run_value
from .data import RunData, Series
from .render import compute_cell, fmt, table
from .significance import (
    DEFAULT_TOLERANCE,
    DISTINGUISHABLE,
    Z_SETTLE,
    at_budget,
    cells_of,
    common_budget,
    eval_flops,
    mean_std,
    pair_by_seed,
    reached_flops,
    settle_counts,
    verdict,
)

CONFIDENCE = 0.95


def _videos_per_prompt(run: RunData) -> int:
    return int(run.recipe.get("eval.videos_per_prompt", 1) or 1)


def choose_budget(
    runs: list[RunData], metric: str, budget_flops: float | None, tolerance: float = DEFAULT_TOLERANCE
) -> tuple[float | None, str]:
    """(B, where it came from): `budget_flops` when given (checked: > 0, and at least one run has an
    evaluation at or below it), else the largest budget every run reached (None: no evaluation
    record carries compute/flops, runs from before they did)."""
    reached = [reached_flops(r.evals, metric) for r in runs]
    if budget_flops is None:
        return common_budget(reached), "the largest budget every run reached"
    if not budget_flops > 0:
        raise ValueError(f"--budget-flops must be a positive number of FLOPs, not {budget_flops}")
    if common_budget(reached) is None:
        raise ValueError(f"--budget-flops: no evaluation record of these runs carries compute/flops for {metric}")
    if not any(at_budget(r.evals, budget_flops, metric, tolerance) for r in runs):
        first = min(f for r in runs for e in r.evals if (f := eval_flops(e)) is not None)
        raise ValueError(
            f"--budget-flops {budget_flops:.3g}: no run has an evaluation at or below it "
            f"(the earliest is at {first:.3g})"
        )
    return budget_flops, "--budget-flops"


def _configuration(s: Series, metric: str, budget: float, tolerance: float) -> dict:
    """One configuration at the budget: its runs' chosen evaluations, mean and std over seeds."""
    chosen = [(r, at_budget(r.evals, budget, metric, tolerance)) for r in s.runs]
    used = [(r, e) for r, e in chosen if e is not None]
    mean, std = mean_std([v for _, e in used if (v := run_value(e, metric)) is not None])
    flops = [eval_flops(e) or 0.0 for _, e in used]
    cells: dict[object, list[float]] = {}
    for r, e in used:
        seed, c = r.recipe.get("prompts.seed"), cells_of(e, metric, _videos_per_prompt(r))
        if seed is not None and c is not None:
            cells.setdefault(seed, c)  # the first run of a seed
    return {
        "label": s.label,
        "seeds": len(used),
        "runs": [r.name for r, _ in used],
        "above_budget": [r.name for r, e in chosen if e is None],
        "steps": sorted({e.get("step") for _, e in used}, key=lambda x: (x is None, x)),
        "flops": sum(flops) / len(flops) if flops else None,
        "mean": mean,
        "std": std,
        "_cells": cells,
    }


def _against(base: dict, row: dict, resamples: int, seed: int) -> dict:
    """{diff, lo, hi, pairs, prompts, verdict, seeds_needed, prompts_needed, both_needed, note} of
    row - base."""
    out = dict.fromkeys(("diff", "lo", "hi", "verdict", "seeds_needed", "prompts_needed", "both_needed"))
    out |= {"pairs": 0, "prompts": 0, "note": ""}
    if not base["seeds"] or not row["seeds"]:
        return out | {"note": "no evaluation at or below the budget"}
    if not base["_cells"] or not row["_cells"]:
        return out | {"note": "no per-video values at the budget"}
    try:
        seeds, b, a = pair_by_seed(base["_cells"], row["_cells"])
    except ValueError as e:
        return out | {"note": str(e)}
    diff, lo, hi = paired_bootstrap(b, a, resamples, seed, CONFIDENCE)
    out |= {"diff": diff, "lo": lo, "hi": hi, "pairs": len(seeds), "prompts": len(b[0]), "verdict": verdict(lo, hi)}
    if out["verdict"] != DISTINGUISHABLE:
        d = [[x - y for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]
        settle = settle_counts(d)
        out |= {"seeds_needed": settle["seeds"], "prompts_needed": settle["prompts"], "both_needed": settle["both"]}
    return out


def significance_at_budget(
    series: list[Series],
    metric: str = TOTAL,
    baseline: str | None = None,
    budget_flops: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    resamples: int = 10000,
    seed: int = 0,
) -> dict | None:
    """Every configuration at one compute budget against the baseline (comparison.pick_baseline),
    the baseline's row first; None when no evaluation record carries compute/flops (and no budget
    was asked for). Rows: label, seeds, runs, above_budget (runs with no evaluation at or below
    it), steps and mean flops of the evaluations used, mean and std over seeds, and for the others
    diff, lo, hi (95 % paired bootstrap), pairs, prompts, verdict, seeds_needed, prompts_needed and
    both_needed ([seeds, prompts] grown together)."""
    if tolerance < 0:
        raise ValueError(f"--budget-tolerance must be >= 0, not {tolerance}")
    name = metric_name(metric)
    budget, source = choose_budget([r for s in series for r in s.runs], name, budget_flops, tolerance)
    if budget is None:
        return None
    b = pick_baseline(series, baseline)
    configs = [_configuration(s, name, budget, tolerance) for s in series]
    rows = []
    for i in [b, *(i for i in range(len(series)) if i != b)]:
        row = {**configs[i], "baseline": i == b}
        if i != b:
            row |= _against(configs[b], configs[i], resamples, seed)
        rows.append({k: v for k, v in row.items() if k != "_cells"})
    return {
        "metric": name,
        "budget_flops": budget,
        "budget_from": source,
        "tolerance": tolerance,
        "confidence": CONFIDENCE,
        "resamples": resamples,
        "z_settle": Z_SETTLE,
        "rows": rows,
    }


HEADER = [
    "configuration",
    "seeds",
    "evaluation used",
    "mean ± std",
    "difference [95% CI]",
    "pairs",
    "verdict",
    "to settle",
]


def _settle_text(row: dict) -> str:
    if row["baseline"] or row.get("verdict") in (None, DISTINGUISHABLE):
        return "-"
    parts = [
        f"≈{n} {what} (+{n - have})"
        for n, what, have in (
            (row["seeds_needed"], "seeds", row["pairs"]),
            (row["prompts_needed"], "prompts", row["prompts"]),
        )
        if n is not None
    ]
    if parts:
        return " or ".join(parts)
    if row.get("both_needed"):
        seeds, prompts = row["both_needed"]
        return f"≈{seeds} seeds and {prompts} prompts"
    return "no difference seen"


def significance_cells(row: dict) -> list[str]:
    """A row as plain text, in HEADER's order."""
    steps = row["steps"]
    where = ("step " + str(steps[0]) if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}") if steps else "none"
    spread = "" if row["std"] is None else f" ± {row['std']:.4f}"
    if row["baseline"]:
        diff, pairs, say = "(baseline)", "-", "-"
    elif row["diff"] is None:
        diff, pairs, say = "-", "-", row["note"] or "-"
    else:
        diff = f"{row['diff']:+.4f} [{row['lo']:+.4f}, {row['hi']:+.4f}]"
        pairs, say = f"{row['pairs']} × {row['prompts']}", row["verdict"]
    return [
        row["label"],
        str(row["seeds"]) + (f" ({len(row['above_budget'])} above)" if row["above_budget"] else ""),
        f"{where}, {compute_cell(row['flops'], 'FLOP')}",
        fmt(row["mean"]) + spread,
        diff,
        pairs,
        say,
        _settle_text(row),
    ]


def _title(result: dict) -> str:
    return f"significance at equal compute: {result['metric']} at {compute_cell(result['budget_flops'], 'FLOP')}"


def significance_table(result: dict) -> Table:
    """The section for a terminal (rich)."""
    t = Table(title=_title(result), title_justify="left")
    for i, h in enumerate(HEADER):
        t.add_column(h, justify="left" if i in (0, 6, 7) else "right")
    for row in result["rows"]:
        cells = significance_cells(row)
        style = "bold green" if row.get("verdict") == DISTINGUISHABLE else None
        t.add_row(*cells[:6], f"[{style}]{cells[6]}[/]" if style else cells[6], cells[7])
    return t


def significance_section(result: dict) -> str:
    """The section's HTML: the table and how every number in it is made."""
    note = (
        f"<p>Budget B = {html.escape(compute_cell(result['budget_flops'], 'FLOP'))} "
        f"({html.escape(result['budget_from'])}). Each run at its latest evaluation with cumulative "
        f"<code>compute/flops</code> &le; B&thinsp;&times;&thinsp;{1 + result['tolerance']:g}; runs above it "
        "have none that low. Configurations: runs that differ only in seeds; mean &plusmn; std over seeds. "
        "Difference to the baseline: runs paired by <code>prompts.seed</code>, held-out videos by index, "
        f"cells = (seed, prompt); {result['confidence']:.0%} interval by a two-way bootstrap over seeds and "
        f"prompts ({result['resamples']} resamples); pairs = seeds &times; prompts. "
        "Distinguishable: the interval excludes 0. To settle the rest, with the observed difference m and "
        "the seed, prompt and residual variances of the differences (two-way ANOVA: d<sub>ij</sub> = m + "
        "a<sub>i</sub> + b<sub>j</sub> + e<sub>ij</sub>): n<sub>seeds</sub> = (s<sub>a</sub>&sup2; + "
        "s<sub>e</sub>&sup2;/P) / (m&sup2;/z&sup2; &minus; s<sub>b</sub>&sup2;/P), "
        f"z = {result['z_settle']:.2f} (95% interval, 80% power), and the same for prompts; when neither "
        "alone would, both grow by k = z&sup2; Var(m) / m&sup2;. A rough planning number that takes m as "
        "the true difference.</p>"
    )
    rows = [[html.escape(c) for c in significance_cells(r)] for r in result["rows"]]
    return table(HEADER, rows, left=1) + note


__all__ = [
    "HEADER",
    "choose_budget",
    "significance_at_budget",
    "significance_cells",
    "significance_section",
    "significance_table",
]
