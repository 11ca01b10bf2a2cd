"""Significance at equal compute: the statistics, pure functions on metrics records and numbers.

A sweep's configurations cost different FLOPs per step (full-trajectory about 3x flash), so their
latest evaluations are not at equal compute. Here every run is read at one common budget B:

    record(run, B) = the evaluation with the largest compute/flops F such that F <= B (1 + tol)

(at_budget; `tol`, default 5 %, lets an arm whose step count was rounded to reach the budget count
as having reached it). By default B = min over runs of max F: the largest budget every run reached
(common_budget). Runs of a configuration (same swept overrides, different seeds) are paired with
the baseline's by `prompts.seed`, videos by index (pair_by_seed), and the paired two-way bootstrap
of fgrpo.report.comparison (paired_bootstrap: seeds and prompts resampled independently) gives the
95 % interval of the difference. verdict() says whether it excludes 0; for the rest, needed()
estimates how many seeds (or held-out prompts, or both) would.
"""

from __future__ import annotations

import math
import statistics

from .comparison import paired_bootstrap, prompt_cells, run_value, video_values

FLOPS = "compute/flops"  # cumulative FLOPs of the run; eval records carry it (the trainer's snapshot)
DEFAULT_TOLERANCE = 0.05
# 95 % two-sided (1.96) and 80 % power (0.84): with 1.96 alone, a true difference equal to the
# observed one would give an interval that excludes 0 only about half the time.
Z_SETTLE = 1.959964 + 0.841621
DISTINGUISHABLE = "distinguishable"
NOT_DISTINGUISHABLE = "not distinguishable from seed noise"

__all__ = [
    "DEFAULT_TOLERANCE",
    "DISTINGUISHABLE",
    "NOT_DISTINGUISHABLE",
    "Z_SETTLE",
    "at_budget",
    "both_needed",
    "cells_of",
    "common_budget",
    "eval_flops",
    "mean_std",
    "needed",
    "pair_by_seed",
    "paired_bootstrap",
    "reached_flops",
    "settle_counts",
    "variance_components",
    "verdict",
]


def eval_flops(record: dict) -> float | None:
    """The cumulative FLOPs an evaluation record was taken at (None for records without them)."""
    v = record.get(FLOPS)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _usable(evals: list[dict], metric: str) -> list[tuple[float, int, dict]]:
    """(FLOPs, position, record) of the evaluations that have FLOPs and a value of `metric`."""
    out = []
    for i, e in enumerate(evals):
        f = eval_flops(e)
        if f is not None and run_value(e, metric) is not None:
            out.append((f, i, e))
    return out


def reached_flops(evals: list[dict], metric: str) -> float | None:
    """max F over a run's evaluations with a value of `metric`: the budget the run reached."""
    usable = _usable(evals, metric)
    return max(f for f, _, _ in usable) if usable else None


def common_budget(reached: list[float | None]) -> float | None:
    """B = min over runs of their reached FLOPs: the largest budget every run reached (runs without
    FLOPs left out); None when no run has any."""
    known = [r for r in reached if r is not None]
    return min(known) if known else None


def at_budget(evals: list[dict], budget: float, metric: str, tolerance: float = DEFAULT_TOLERANCE) -> dict | None:
    """The run's latest evaluation at or below the budget: the largest F <= B (1 + tolerance), the
    later record on a tie (the final evaluation after a periodic one at the same step); None when
    every evaluation is above it."""
    if tolerance < 0:
        raise ValueError(f"budget tolerance must be >= 0, not {tolerance}")
    limit = budget * (1 + tolerance)
    found = [(f, i, e) for f, i, e in _usable(evals, metric) if f <= limit]
    return max(found, key=lambda x: (x[0], x[1]))[2] if found else None


def pair_by_seed(
    base: dict[object, list[float]], arm: dict[object, list[float]]
) -> tuple[list[object], list[list[float]], list[list[float]]]:
    """(seeds both have, base rows, arm rows): per seed the prompt cells of each side (the mean of a
    prompt's videos, comparison.prompt_cells), ready for paired_bootstrap. Raises ValueError with
    the reason when they cannot be paired (no common seed, different held-out prompts)."""
    common = sorted((k for k in arm if k in base), key=str)
    if not common:
        raise ValueError("no seed in common")
    rows = [base[k] for k in common], [arm[k] for k in common]
    if len({len(r) for side in rows for r in side}) != 1:
        raise ValueError("different held-out prompts")
    return common, *rows


def cells_of(record: dict, metric: str, videos_per_prompt: int) -> list[float] | None:
    """An evaluation's prompt cells for `metric` (None without per-video values)."""
    values = video_values(record, metric)
    return None if values is None else prompt_cells(values, videos_per_prompt)


def verdict(lo: float, hi: float) -> str:
    """Distinguishable when the interval [lo, hi] excludes 0."""
    return DISTINGUISHABLE if lo > 0 or hi < 0 else NOT_DISTINGUISHABLE


def variance_components(d: list[list[float]]) -> tuple[float | None, float | None, float]:
    """(seed, prompt, residual) variances of the paired differences d [S seeds x P prompts], from
    the two-way random-effects model d_ij = m + a_i + b_j + e_ij (ANOVA, method of moments):

        r_i = 1/P sum_j d_ij,  c_j = 1/S sum_i d_ij,  m = mean of d
        MS_s = P sum_i (r_i - m)^2 / (S - 1)                       E = s_e^2 + P s_a^2
        MS_p = S sum_j (c_j - m)^2 / (P - 1)                       E = s_e^2 + S s_b^2
        MS_e = sum_ij (d_ij - r_i - c_j + m)^2 / ((S - 1)(P - 1))  E = s_e^2
        s_a^2 = max(0, (MS_s - MS_e) / P),  s_b^2 = max(0, (MS_p - MS_e) / S),  s_e^2 = MS_e

    s_a^2: how much the difference moves from seed to seed (seed noise), s_b^2: from prompt to
    prompt. Var(m) = s_a^2 / S + s_b^2 / P + s_e^2 / (S P). With one seed (or one prompt) that
    dimension's variance is None and the residual cannot be told apart: it is counted with the
    other dimension's (s_e^2 = 0)."""
    s, p = len(d), len(d[0])
    m = sum(map(sum, d)) / (s * p)
    rows = [sum(r) / p for r in d]
    cols = [sum(d[i][j] for i in range(s)) / s for j in range(p)]
    if s < 2 or p < 2:
        return (statistics.variance(rows) if s >= 2 else None, statistics.variance(cols) if p >= 2 else None, 0.0)
    ms_s = p * sum((r - m) ** 2 for r in rows) / (s - 1)
    ms_p = s * sum((c - m) ** 2 for c in cols) / (p - 1)
    resid = sum((d[i][j] - rows[i] - cols[j] + m) ** 2 for i in range(s) for j in range(p))
    ms_e = resid / ((s - 1) * (p - 1))
    return max(0.0, (ms_s - ms_e) / p), max(0.0, (ms_p - ms_e) / s), ms_e


def no_difference(mean: float) -> bool:
    """A mean paired difference that is zero but for floating-point rounding: two arms that scored
    every video alike sum their differences to ~1e-17, which would ask for ~1e14 seeds."""
    return abs(mean) < 1e-9


def needed(mean: float, shrinking: float, fixed: float, n_now: int, z: float = Z_SETTLE) -> int | None:
    """How many of one dimension (seeds, or prompts) would settle a difference, the other fixed.

    With Var(m)(n) = shrinking / n + fixed (seeds: shrinking = s_a^2 + s_e^2 / P, fixed =
    s_b^2 / P; prompts the other way round), the interval excludes 0 once z^2 Var(m) <= m^2:

        n >= shrinking / (m^2 / z^2 - fixed)

    z = 1.96 + 0.84 (95 % interval, 80 % power), m = the observed mean difference taken as the true
    one: a rough planning number, not a promise. None when no n would (m = 0, or the fixed part
    alone, z^2 fixed >= m^2). At least n_now + 1: the interval did not exclude 0 with n_now."""
    if no_difference(mean):
        return None
    room = mean * mean / (z * z) - fixed
    if room <= 0:
        return None
    return max(n_now + 1, math.ceil(shrinking / room))


def both_needed(mean: float, var_mean: float, s: int, p: int, z: float = Z_SETTLE) -> tuple[int, int] | None:
    """(seeds, prompts) when both grow by one factor k, for a difference neither settles alone:

        k = z^2 Var(m) / m^2      (each term of Var(m) shrinks at least k-fold)

    i.e. n_needed = n (z se / |m|)^2 for each; None when m = 0."""
    if no_difference(mean):
        return None
    k = z * z * var_mean / (mean * mean)
    return max(s + 1, math.ceil(k * s)), max(p + 1, math.ceil(k * p))


def settle_counts(d: list[list[float]], z: float = Z_SETTLE) -> dict:
    """{seeds, prompts, both} for the paired differences d [S x P] (variance_components): needed()
    for each dimension, the other held at its size, and both_needed(). Seeds None with one seed
    (seed noise unmeasured), prompts None with one prompt."""
    s, p = len(d), len(d[0])
    mean = sum(map(sum, d)) / (s * p)
    v_a, v_b, v_e = variance_components(d)
    a, b = v_a or 0.0, v_b or 0.0
    return {
        "seeds": None if v_a is None else needed(mean, a + v_e / p, b / p, s, z),
        "prompts": None if v_b is None else needed(mean, b + v_e / s, a / s, p, z),
        "both": both_needed(mean, a / s + b / p + v_e / (s * p), s, p, z),
    }


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof 1, None below 2 values)."""
    return (
        statistics.fmean(values) if values else None,
        statistics.stdev(values) if len(values) >= 2 else None,
    )
