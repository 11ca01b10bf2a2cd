"""Paired comparison of configurations (series) at their latest evaluation, with a bootstrap CI.

Every run of a recipe evaluates the same held-out prompts with the same initial noise (fixed
evaluation seeds), so video i of one run and video i of another differ only by what training did.
Runs of two series are paired by their seed (`prompts.seed`), videos by index; the difference
arm - baseline is taken cell by cell, a cell being one (seed, held-out prompt): the mean over that
prompt's `eval.videos_per_prompt` videos. Pairing removes what the two arms share (how hard a
prompt is, what a seed's data order did), so the interval is much narrower than comparing means.

Plain Python, seeded (random.Random): the same inputs give the same interval on every machine.
"""

from __future__ import annotations

import math
import random
import statistics

from .data import RunData, Series
from .render import compute_cell, fmt

TOTAL = "eval_reward"  # the metric of the total reward; any other name is a reward component


def _check(base: list[list[float]], arm: list[list[float]]) -> None:
    if not base or not base[0]:
        raise ValueError("paired_bootstrap needs at least one seed and one prompt")
    shape = (len(base), len(base[0]))
    if any(len(r) != shape[1] for r in base) or len(arm) != shape[0] or any(len(r) != shape[1] for r in arm):
        raise ValueError(f"paired_bootstrap: base and arm must both be {shape[0]} x {shape[1]} (seeds x prompts)")


def _resampled_means(x: list[list[float]], resamples: int, rng: random.Random) -> list[float]:
    """Two-way bootstrap of the grand mean of x [S x P]: each resample draws S rows (seeds) and P
    columns (prompts) with replacement, independently, and averages the S*P cells they cross:
    m* = 1/(S P) sum_a sum_b x[i_a][j_b]."""
    s, p = len(x), len(x[0])
    seeds, prompts, out = range(s), range(p), []
    for _ in range(resamples):
        rows, cols = rng.choices(seeds, k=s), rng.choices(prompts, k=p)
        out.append(sum(sum(map(x[i].__getitem__, cols)) for i in rows) / (s * p))
    return out


def _quantile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values, linear between order statistics (numpy's default)."""
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _interval(stats: list[float], confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    ordered = sorted(stats)
    return _quantile(ordered, (1 - confidence) / 2), _quantile(ordered, (1 + confidence) / 2)


def paired_bootstrap(
    base: list[list[float]], arm: list[list[float]], resamples: int = 10000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """(mean difference, CI low, CI high) of arm - base, both [seeds x prompts] and paired cell by cell.

    d[i][j] = arm[i][j] - base[i][j] for seed i and prompt j; the estimate is the mean of d over all
    S*P cells. Two-way bootstrap: each of `resamples` resamples draws S seeds and P prompts with
    replacement, independently, and takes the mean of d over the S*P cells they cross; the CI is
    the (1 - confidence)/2 and (1 + confidence)/2 percentiles of those means. Resampling both ways
    lets the interval reflect that other seeds and other prompts would give other results (with
    one seed it reflects the prompts alone, with one prompt the seeds alone). Seeded: deterministic.
    """
    _check(base, arm)
    d = [[a - b for a, b in zip(ra, rb)] for ra, rb in zip(arm, base)]
    mean = sum(map(sum, d)) / (len(d) * len(d[0]))
    return (mean, *_interval(_resampled_means(d, resamples, random.Random(seed)), confidence))


def unpaired_bootstrap(
    base: list[list[float]], arm: list[list[float]], resamples: int = 10000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """The same, ignoring the pairing: mean(arm) - mean(base), each resampled (two-way) on its own.

    What comparing two series' means would give; the reference that shows what pairing gains."""
    _check(base, arm)
    rng = random.Random(seed)
    a, b = _resampled_means(arm, resamples, rng), _resampled_means(base, resamples, rng)
    mean = sum(map(sum, arm)) / (len(arm) * len(arm[0])) - sum(map(sum, base)) / (len(base) * len(base[0]))
    return (mean, *_interval([x - y for x, y in zip(a, b)], confidence))


def metric_name(metric: str) -> str:
    """ "eval_reward" (the total) or a component's name; "eval/miniature_gold" -> "miniature_gold"."""
    name = metric.removeprefix("eval/")
    return TOTAL if name in (TOTAL, "eval_rewards") else name


def video_values(record: dict | None, metric: str) -> list[float] | None:
    """The metric's score per held-out video in an evaluation record (fixed seeds, same order in
    every run of a recipe), or None when the record has none."""
    if not record:
        return None
    name = metric_name(metric)
    values = record.get("eval_rewards") if name == TOTAL else (record.get("eval_component_values") or {}).get(name)
    return [float(v) for v in values] if isinstance(values, list) and values else None


def run_value(record: dict | None, metric: str) -> float | None:
    """The metric of one evaluation: the mean over its videos (or the recorded mean)."""
    values = video_values(record, metric)
    if values:
        return sum(values) / len(values)
    name = metric_name(metric)
    v = (record or {}).get(TOTAL if name == TOTAL else f"eval/{name}")
    return float(v) if isinstance(v, (int, float)) else None


def prompt_cells(values: list[float], videos_per_prompt: int) -> list[float]:
    """Per held-out prompt, the mean of its videos: prompt i has videos i*n .. i*n + n - 1 (each
    video its own cell when the count is not a multiple of n)."""
    n = videos_per_prompt if videos_per_prompt >= 1 and len(values) % videos_per_prompt == 0 else 1
    return [sum(values[i : i + n]) / n for i in range(0, len(values), n)]


def pick_baseline(series: list[Series], wanted: str | None = None) -> int:
    """Index of the baseline series: the one whose label is or (uniquely) contains `wanted`; without
    it, the one labelled "mode=flash" if exactly one is, else the first."""
    labels = [s.label for s in series]
    if wanted:
        if wanted in labels:
            return labels.index(wanted)
        found = [i for i, label in enumerate(labels) if wanted in label]
        if len(found) != 1:
            raise ValueError(
                f"--baseline {wanted!r} matches {'no' if not found else len(found)} configurations "
                f"of {', '.join(repr(x) for x in labels)}"
            )
        return found[0]
    flash = [i for i, label in enumerate(labels) if "mode=flash" in label]
    return flash[0] if len(flash) == 1 else 0


def _latest(run: RunData) -> dict | None:
    return run.evals[-1] if run.evals else None


def _by_seed(s: Series, metric: str) -> dict[object, tuple[RunData, list[float]]]:
    """The series' runs with per-video values at their latest evaluation, by `prompts.seed` (first
    run of a seed)."""
    out: dict[object, tuple[RunData, list[float]]] = {}
    for r in s.runs:
        values = video_values(_latest(r), metric)
        if values is not None and r.recipe.get("prompts.seed") is not None:
            out.setdefault(r.recipe["prompts.seed"], (r, values))
    return out


def paired_difference(base: Series, arm: Series, metric: str, resamples: int = 10000, seed: int = 0) -> dict:
    """{diff, lo, hi, pairs, note}: arm - base over the seeds both have (paired_bootstrap)."""
    b, a = _by_seed(base, metric), _by_seed(arm, metric)
    common = sorted((k for k in a if k in b), key=str)
    none = {"diff": None, "lo": None, "hi": None, "pairs": len(common)}
    if not common:
        return {**none, "note": "no per-video values" if not a or not b else "no seed in common"}
    if len({len(v) for k in common for v in (a[k][1], b[k][1])}) != 1:
        return {**none, "note": "different held-out videos"}
    cells = [
        [prompt_cells(x[k][1], int(x[k][0].recipe.get("eval.videos_per_prompt", 1) or 1)) for k in common]
        for x in (b, a)
    ]
    if len({len(row) for m in cells for row in m}) != 1:
        return {**none, "note": "different videos per prompt"}
    diff, lo, hi = paired_bootstrap(cells[0], cells[1], resamples, seed)
    return {"diff": diff, "lo": lo, "hi": hi, "pairs": len(common), "note": ""}


def _summary(s: Series, metric: str) -> dict:
    """Mean, std (ddof=1, >= 2 seeds) over the runs' metric and their mean cumulative FLOPs."""
    vals = [v for v in (run_value(_latest(r), metric) for r in s.runs) if v is not None]
    flops = [
        r.train[-1]["compute/flops"]
        for r in s.runs
        if r.train and isinstance(r.train[-1].get("compute/flops"), (int, float))
    ]
    return {
        "label": s.label,
        "seeds": len(vals),
        "values": vals,
        "mean": statistics.fmean(vals) if vals else None,
        "std": statistics.stdev(vals) if len(vals) >= 2 else None,
        "flops": statistics.fmean(flops) if flops else None,
    }


def comparison_rows(
    series: list[Series], metric: str = TOTAL, baseline: str | None = None, resamples: int = 10000, seed: int = 0
) -> list[dict]:
    """One row per series, the baseline first: its metric at each run's latest evaluation (mean
    and std over seeds), the mean cumulative compute/flops at the last train record, and, for the
    others, the paired difference to the baseline with its CI (paired_difference)."""
    name = metric_name(metric)
    if name != TOTAL and not any(run_value(_latest(r), name) is not None for s in series for r in s.runs):
        seen = sorted({k for s in series for r in s.runs for k in (_latest(r) or {}).get("eval_component_values", {})})
        raise ValueError(f"no run records {metric!r} at its latest evaluation; recorded: {', '.join([TOTAL, *seen])}")
    b = pick_baseline(series, baseline)
    rows = []
    for i in [b, *(i for i in range(len(series)) if i != b)]:
        row = {**_summary(series[i], name), "baseline": i == b}
        if i != b:
            row.update(paired_difference(series[b], series[i], name, resamples, seed))
        rows.append(row)
    return rows


HEADER = ["configuration", "seeds", "mean ± std", "difference to baseline [95% CI]", "pairs", "compute"]


def comparison_cells(row: dict) -> list[str]:
    """A comparison row as plain text, in HEADER's order."""
    spread = "" if row["std"] is None else f" ± {row['std']:.4f}"
    if row["baseline"]:
        diff, pairs = "(baseline)", "-"
    elif row["diff"] is None:
        diff, pairs = "-" + (f" ({row['note']})" if row.get("note") else ""), str(row["pairs"])
    else:
        diff, pairs = f"{row['diff']:+.4f} [{row['lo']:+.4f}, {row['hi']:+.4f}]", str(row["pairs"])
    return [row["label"], str(row["seeds"]), fmt(row["mean"]) + spread, diff, pairs, compute_cell(row["flops"], "FLOP")]


def comparison_text(rows: list[dict], metric: str) -> list[str]:
    """The table for a terminal: a title line, the header and one aligned line per row."""
    cells = [HEADER] + [comparison_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = [f"paired comparison (latest evaluation): {metric_name(metric)}"]
    lines += [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
        for row in cells
    ]
    return lines
