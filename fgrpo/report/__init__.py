"""`fgrpo report`: one self-contained HTML file of a run, a sweep or several runs (works offline).

    fgrpo report RUN                 -> RUN/report.html
    fgrpo report SWEEP               -> SWEEP/report.html (its runs: SWEEP/sweep.json)
    fgrpo report RUN RUN ... --out F -> F

One run: its recipe, reward curves (train and held-out, with their components), guardrails (pixel
statistics of the held-out videos, fgrpo.report.guardrails), grad norm, clip fraction, |ratio - 1|,
advantage spread, a histogram of the SDE step indices trained, seconds per phase, memory per rank,
and the held-out sample videos before and after training with their prompts and rewards. Several
runs add a leaderboard ranked by held-out reward and curves overlaid against step, compute (FLOPs)
and wall time; runs that differ only in seed are one series (mean and min-max band), and series are
compared to a baseline series at their latest evaluation, paired by seed and held-out video, with a
bootstrap CI (fgrpo.report.comparison), and again at equal compute: each run at its latest
evaluation within one FLOPs budget, with a verdict (distinguishable from seed noise or not) and
how many seeds or prompts would settle the rest (fgrpo.report.equal_compute, statistics in
fgrpo.report.significance). Data comes from the run folders alone (fgrpo.report.data),
charts are Plotly specs (fgrpo.report.charts), the page embeds everything (fgrpo.report.render).
A run with a gold metric (eval.gold_rewards) gets "Proxy vs gold": the trained reward against
gold on the held-out videos, where the divergence rule fired and the best-gold evaluation
(fgrpo.report.gold). A run folder holding reward-audit.json (`fgrpo reward-audit RECIPE.py --run RUN`) gets a "Reward
audit" section (fgrpo.report.audit).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import NamedTuple

from fgrpo.fileio import atomic_write_text
from fgrpo.run_folder import RunFolder

from .audit import audit_section
from .charts import run_charts
from .comparison import HEADER, TOTAL, comparison_cells, comparison_rows, metric_name
from .data import RunData, group_board, label_runs, leaderboard, load_run, resolve_targets
from .equal_compute import significance_at_budget, significance_section
from .gold import gold_table, with_gold_chart
from .guardrails import guardrail_table, with_guardrail_chart
from .render import compute_cell as _compute_cell
from .render import fmt, page, samples_section, table
from .significance import DEFAULT_TOLERANCE


def summary_table(run: RunData) -> str:
    rows = [
        ["held-out reward (before -> latest)", f"{fmt(run.heldout_before())} -> {fmt(run.heldout())}"],
        [
            "train reward (first -> last step)",
            f"{fmt(run.train[0].get('reward_mean') if run.train else None)} -> "
            f"{fmt(run.train[-1].get('reward_mean') if run.train else None)}",
        ],
        ["steps", f"{run.step} / {run.recipe.get('optim.max_steps', '?')}"],
        ["state", html.escape(str(run.status.get("state", "-")))],
    ]
    for key, unit in (
        ("compute/videos", "videos"),
        ("compute/forward_passes", "forwards"),
        ("compute/flops", "FLOP"),
        ("compute/flops_rollout", "FLOP"),
        ("compute/flops_train", "FLOP"),
        ("compute/wall_s", "s"),
        ("compute/device_s", "device s"),
    ):
        rows.append([key, _compute_cell(run.last(key), unit)])
    keys = (
        "algorithm.mode",
        "model.preset",
        "model.dtype",
        "rollout.steps",
        "rollout.group_size",
        "rollout.prompts_per_step",
        "optim.lr",
        "prompts.seed",
        "parallelism.dp_shard",
        "parallelism.tp",
    )
    rows += [[k, html.escape(str(run.recipe.get(k)))] for k in keys if k in run.recipe]
    return table(["", "value"], rows)


def board_table(rows: list[dict]) -> str:
    return table(
        [
            "#",
            "run",
            "fields that differ",
            "held-out",
            "held-out before",
            "change",
            "train reward",
            "step",
            "compute",
            "wall",
            "state",
        ],
        [
            [
                str(r["rank"]),
                html.escape(r["run"]),
                html.escape(r["label"]),
                fmt(r["heldout"]),
                fmt(r["heldout_before"]),
                fmt(r["heldout"] - r["heldout_before"] if None not in (r["heldout"], r["heldout_before"]) else None),
                fmt(r["train_reward"]),
                str(r["step"]),
                _compute_cell(r["flops"], "FLOP"),
                _compute_cell(r["wall_s"], "s"),
                html.escape(r["state"])
                + (f' <span class="problem">{html.escape(r["problem"])}</span>' if r["problem"] else ""),
            ]
            for r in rows
        ],
        left=3,
    )


def comparison_section(rows: list[dict], resamples: int = 10000) -> str:
    """The paired comparison table and how its interval is made."""
    note = (
        "<p>Each run at its latest evaluation. Difference: the mean over (seed, held-out prompt) cells of "
        "configuration &minus; baseline, runs paired by <code>prompts.seed</code> (pairs: the seeds both have) "
        "and videos by index (same prompts, same initial noise); a cell is the mean of that prompt's videos. "
        f"95% CI: two-way bootstrap, seeds and prompts resampled independently ({resamples} resamples). "
        "Compute: mean cumulative FLOPs at the last train step.</p>"
    )
    return table(HEADER, [[html.escape(c) for c in comparison_cells(r)] for r in rows], left=1) + note


class Built(NamedTuple):
    html: str
    default: Path | None  # where it goes by default
    board: list[dict]  # the leaderboard
    compared: list[dict]  # the paired comparison at the latest evaluation (none for one series)
    significance: dict | None  # at equal compute (equal_compute.significance_at_budget)


def build(
    targets: list[Path], metric: str = TOTAL, baseline: str | None = None
) -> tuple[str, Path | None, list[dict], list[dict]]:
    """(the HTML, its default path, the leaderboard rows, the paired comparison rows: none for one
    series). `metric`: eval_reward or a reward component recorded at evaluation; `baseline`: the
    label (or a unique part of it) of the series the others are compared to."""
    built = build_report(targets, metric, baseline)
    return built.html, built.default, built.board, built.compared


def build_report(
    targets: list[Path],
    metric: str = TOTAL,
    baseline: str | None = None,
    budget_flops: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Built:
    """build's report, and the significance at equal compute of two or more series: at
    `budget_flops` (default the largest every run reached), evaluations up to `tolerance` above it."""
    paths, default = resolve_targets(targets)
    runs = [load_run(p) for p in paths]
    series = label_runs(runs)
    if budget_flops is not None and len(series) < 2:
        raise ValueError("--budget-flops compares configurations: these runs are one configuration")
    board = leaderboard(runs)
    sections, after, compared, matched = [], [], [], None
    if len(runs) == 1:
        run = runs[0]
        title, subtitle = f"fgrpo report: {run.name}", html.escape(str(run.path))
        sections.append(("Summary", summary_table(run)))
        reward_audit = RunFolder(run.path).read_reward_audit()  # fgrpo reward-audit --run RUN
        if reward_audit is not None:
            sections.append(("Reward audit", audit_section(reward_audit)))
        after.append(("Held-out samples, before and after", samples_section(run, per_prompt=True)))
    else:
        title = f"fgrpo report: {len(runs)} runs"
        subtitle = html.escape(", ".join(str(t) for t in targets))
        sections.append(("Leaderboard (held-out reward, latest evaluation)", board_table(board)))
        groups = group_board(series)
        if groups:
            sections.append(
                (
                    "By configuration: mean over seeds",
                    table(
                        ["configuration", "seeds", "held-out mean", "min", "max", "runs"],
                        [
                            [
                                html.escape(g["label"]),
                                str(g["seeds"]),
                                fmt(g["mean"]),
                                fmt(g["min"]),
                                fmt(g["max"]),
                                html.escape(", ".join(g["runs"])),
                            ]
                            for g in groups
                        ],
                        left=1,
                    ),
                )
            )
        if len(series) >= 2:
            compared = comparison_rows(series, metric, baseline)
            sections.append(
                (f"Paired comparison (latest evaluation): {metric_name(metric)}", comparison_section(compared))
            )
            matched = significance_at_budget(series, metric, baseline, budget_flops, tolerance)
            if matched is not None:
                sections.append((f"Significance at equal compute: {matched['metric']}", significance_section(matched)))
        after.append(
            (
                "Held-out samples, before and after (each run)",
                "\n".join(samples_section(r, per_prompt=False) for r in runs),
            )
        )
    gold = gold_table(runs[0]) if len(runs) == 1 else None  # eval.gold_rewards (fgrpo.report.gold)
    if gold is not None:
        sections.append(("Proxy vs gold (held-out)", gold))
    guards = guardrail_table(runs)
    if guards is not None:
        sections.append(("Guardrails (held-out video statistics)", guards))
    figures = with_guardrail_chart(with_gold_chart(run_charts(series), runs), runs)
    return Built(page(title, subtitle, sections, figures, after), default, board, compared, matched)


def write_report(
    targets: list[Path],
    out: Path | None = None,
    metric: str = TOTAL,
    baseline: str | None = None,
    budget_flops: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[Path, list[dict], list[dict], dict | None]:
    """Write the report (atomically); returns its path, the leaderboard rows, the paired
    comparison rows and the significance at equal compute (build_report)."""
    text, default, board, compared, matched = build_report(
        [Path(t) for t in targets], metric, baseline, budget_flops, tolerance
    )
    out = Path(out) if out is not None else default
    if out is None:
        raise ValueError("several targets: say where the report goes with --out FILE.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    return out, board, compared, matched


__all__ = ["Built", "build", "build_report", "write_report"]
