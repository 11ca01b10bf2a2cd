"""The divergence rule: the trained (proxy) reward still rising while the gold metric falls.

A policy that games its reward (docs/miniature.md: `miniature_proxy` pays for saturation) keeps
raising the proxy on held-out prompts while a metric it is never trained on (eval.gold_rewards)
drops. Over the evaluations recorded so far, in order, with their steps x_i, proxy p_i and gold
g_i, the rule fires at the latest evaluation when all of:

* there are at least `window` evaluations (window >= 2);
* over the last `window` of them, the least-squares slope of p against x is > 0 and that of g
  against x is < 0 (a straight line fitted to each; one noisy evaluation moves it less than a
  first-to-last difference would);
* the latest gold is below the best gold of all evaluations so far by more than `tolerance`
  (a gold that dips while still at its best is not a loss).

Pure functions of the numbers: the trainer applies it at each evaluation, the tests on synthetic
sequences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TypeGuard


def least_squares_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Slope of the least-squares line through (xs, ys): cov(x, y) / var(x); 0 when every x is equal
    (or fewer than two points): no trend can be read."""
    n = len(xs)
    if n != len(ys):
        raise ValueError(f"{n} x values for {len(ys)} y values")
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var


@dataclass(frozen=True)
class Divergence:
    """Why the rule fired, for the record (metrics.jsonl), the console and `fgrpo status`."""

    step: int  # the latest evaluation's
    first_step: int  # the window's first evaluation's
    proxy_slope: float  # per optimizer step
    gold_slope: float
    gold: float  # the latest
    best_gold: float
    best_step: int

    def record(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"gold fell while the proxy rose over steps {self.first_step}-{self.step} (slopes per step: proxy "
            f"{self.proxy_slope:+.3g}, gold {self.gold_slope:+.3g}); gold {self.gold:.4f} is below its best "
            f"{self.best_gold:.4f} (step {self.best_step})"
        )


def divergence(
    steps: Sequence[int],
    proxy: Sequence[float | None],
    gold: Sequence[float | None],
    window: int,
    tolerance: float = 0.0,
) -> Divergence | None:
    """The rule of the module docstring at the latest evaluation: a Divergence when it fires, else None.
    Evaluations whose proxy or gold is not a finite number (None: not recorded) are left out first."""
    if window < 2:
        raise ValueError(f"window must be at least 2, got {window}")
    if not len(steps) == len(proxy) == len(gold):
        raise ValueError(f"{len(steps)} steps, {len(proxy)} proxy and {len(gold)} gold values")
    points = [(int(s), float(p), float(g)) for s, p, g in zip(steps, proxy, gold) if _finite(p) and _finite(g)]
    if len(points) < window:
        return None
    best_step, _, best = max(points, key=lambda t: (t[2], -t[0]))  # the earliest of equal bests
    last = points[-window:]
    xs = [float(s) for s, _, _ in last]
    proxy_slope = least_squares_slope(xs, [p for _, p, _ in last])
    gold_slope = least_squares_slope(xs, [g for _, _, g in last])
    latest_step, _, latest = last[-1]
    if proxy_slope > 0 and gold_slope < 0 and best - latest > tolerance:
        return Divergence(latest_step, last[0][0], proxy_slope, gold_slope, latest, best, best_step)
    return None


def _finite(v) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
