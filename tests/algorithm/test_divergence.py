"""The divergence rule (fgrpo.algorithm.divergence) on synthetic evaluation sequences: it fires when
the proxy's fitted slope is up, gold's down and gold below its best by more than the tolerance, and
not otherwise."""

import math

import pytest

from fgrpo.algorithm.divergence import Divergence, divergence, least_squares_slope

STEPS = [0, 2, 4, 6, 8]


def test_least_squares_slope_of_lines_and_degenerate_inputs():
    assert least_squares_slope([0, 1, 2], [1, 3, 5]) == pytest.approx(2.0)
    assert least_squares_slope([0, 2, 4], [5, 4, 3]) == pytest.approx(-0.5)  # per unit of x (steps)
    assert least_squares_slope([0, 1, 2], [1, 5, 1]) == pytest.approx(0.0)  # a spike, no trend
    assert least_squares_slope([3, 3, 3], [1, 2, 3]) == 0.0  # every x equal: no trend can be read
    assert least_squares_slope([1], [1]) == 0.0
    with pytest.raises(ValueError, match="2 x values for 3 y values"):
        least_squares_slope([0, 1], [1, 2, 3])


def test_fires_when_proxy_rises_and_gold_falls_below_its_best():
    proxy = [0.80, 0.82, 0.85, 0.90, 0.95]
    gold = [0.50, 0.52, 0.49, 0.45, 0.40]
    found = divergence(STEPS, proxy, gold, window=3)
    assert isinstance(found, Divergence)
    assert (found.step, found.first_step, found.best_step) == (8, 4, 2)
    assert found.gold == 0.40 and found.best_gold == 0.52
    assert found.proxy_slope == pytest.approx(least_squares_slope([4, 6, 8], [0.85, 0.90, 0.95]))
    assert found.gold_slope == pytest.approx(least_squares_slope([4, 6, 8], [0.49, 0.45, 0.40]))
    assert "steps 4-8" in found.describe() and "best 0.5200 (step 2)" in found.describe()
    assert Divergence(**found.record()) == found  # the record (metrics.jsonl) round-trips


@pytest.mark.parametrize(
    ("why", "proxy", "gold"),
    [
        ("both rise", [0.8, 0.82, 0.85, 0.9, 0.95], [0.4, 0.42, 0.45, 0.5, 0.55]),
        ("both fall (training broke, not hacking)", [0.9, 0.88, 0.85, 0.8, 0.75], [0.5, 0.48, 0.45, 0.4, 0.35]),
        ("proxy flat", [0.8, 0.8, 0.8, 0.8, 0.8], [0.5, 0.52, 0.49, 0.45, 0.40]),
        ("gold flat below its best", [0.8, 0.82, 0.85, 0.9, 0.95], [0.5, 0.6, 0.45, 0.45, 0.45]),
    ],
)
def test_does_not_fire_without_opposite_trends(why, proxy, gold):
    assert divergence(STEPS, proxy, gold, window=3) is None, why


def test_the_window_decides_which_evaluations_the_trend_is_read_from():
    proxy = [0.80, 0.85, 0.90, 0.95, 0.96]
    gold = [0.60, 0.50, 0.40, 0.45, 0.44]  # fell early, then recovered a little
    assert divergence(STEPS, proxy, gold, window=3) is None  # last 3 gold: 0.40, 0.45, 0.44: rising
    assert divergence(STEPS, proxy, gold, window=5) is not None  # all 5: falling


def test_tolerance_on_the_drop_below_the_best():
    proxy, gold = [0.8, 0.85, 0.9], [0.50, 0.49, 0.47]  # 0.03 below the best
    assert divergence([0, 2, 4], proxy, gold, window=3, tolerance=0.02) is not None
    assert divergence([0, 2, 4], proxy, gold, window=3, tolerance=0.05) is None
    # at its best (the first of a flat top): falling within the window is no loss yet
    assert divergence([0, 2, 4], [0.8, 0.85, 0.9], [0.4, 0.6, 0.6], window=2) is None


def test_edge_cases_fewer_evaluations_than_the_window_and_missing_values():
    assert divergence([], [], [], window=3) is None
    assert divergence([0, 2], [0.8, 0.9], [0.5, 0.4], window=3) is None  # not enough evaluations yet
    assert divergence([0, 2], [0.8, 0.9], [0.5, 0.4], window=2) is not None
    # an evaluation without a gold value (or a NaN one) is left out, not read as a fall
    steps, proxy = [0, 2, 4, 6], [0.8, 0.85, 0.9, 0.95]
    assert divergence(steps, proxy, [None, 0.5, 0.45, 0.4], window=3) is not None
    assert divergence(steps, proxy, [math.nan, 0.5, math.nan, 0.4], window=3) is None
    with pytest.raises(ValueError, match="window must be at least 2"):
        divergence(steps, proxy, proxy, window=1)
    with pytest.raises(ValueError, match="4 steps, 3 proxy"):
        divergence(steps, proxy[:3], proxy, window=2)
