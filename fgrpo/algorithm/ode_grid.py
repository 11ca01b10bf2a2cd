"""Where a rollout evaluates the model when its deterministic parts take fewer steps (`rollout.ode_steps`).

Nodes are indices into the recipe's sigma grid sigma_0 > ... > sigma_N = 0, so every sub-grid lands
exactly on grid sigmas: the deterministic sub-grid is the grid's points at round(j * N / ode_steps),
j = 0..ode_steps (with N divisible by ode_steps exactly Wan's grid of ode_steps steps: the shift maps
a sub-linspace to a sub-grid), and each SDE step i adds its own sigma_i and sigma_{i+1}, so the SDE
step keeps its place and size on the recipe's grid. A video takes one model evaluation per node but
its last. Pure integer arithmetic: the sampler and the planner count the same evaluations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction

# rollout.ode_solver: the recipe's Euler step, or diffusers' UniPC / DPM-Solver++ 2M (fgrpo.trainer.ode_solvers)
ODE_SOLVERS: tuple[str, ...] = ("euler", "unipc", "dpmpp_2m")


def subgrid_indices(num_steps: int, ode_steps: int | None) -> list[int]:
    """Grid indices of the deterministic sub-grid over sigma_0 -> 0: every index when `ode_steps` is
    None (or the whole grid), else round(j * N / ode_steps) for j = 0..ode_steps (halves up)."""
    if ode_steps is None or ode_steps >= num_steps:
        return list(range(num_steps + 1))
    if ode_steps < 1:
        raise ValueError(f"ode_steps must be >= 1, got {ode_steps}")
    return sorted({(2 * j * num_steps + ode_steps) // (2 * ode_steps) for j in range(ode_steps + 1)})


def trajectory_nodes(subgrid: Sequence[int], start: int, end: int, sde_steps: Iterable[int]) -> list[int]:
    """Grid indices a video integrating sigma_start -> sigma_end visits: the sub-grid's points between
    them, both ends, and sigma_i, sigma_{i+1} of each of its SDE steps i (start <= i < end)."""
    nodes = {i for i in subgrid if start <= i <= end} | {start, end}
    for i in sde_steps:
        if start <= i < end:
            nodes |= {i, i + 1}
    return sorted(nodes)


def evaluations(
    subgrid: Sequence[int], start: int, end: int, sde_steps: Iterable[int], cost: Sequence[int] | None = None
) -> int:
    """Model evaluations of one video from sigma_start to sigma_end (one per node but the last);
    `cost`: each grid step's weight instead of 1 (e.g. its forward passes: 1 at guidance scale 1, 2 with CFG)."""
    nodes = trajectory_nodes(subgrid, start, end, sde_steps)[:-1]
    return len(nodes) if cost is None else sum(cost[i] for i in nodes)


def expected_evaluations_per_video(
    num_steps: int,
    ode_steps: int | None,
    full_trajectory: bool,
    window: tuple[int, int],
    weights: Sequence[float],
    group_size: int,
    iso_temporal: bool,
    share_prefix: bool,
    cost: Sequence[int] | None = None,
) -> Fraction:
    """Model evaluations per video (CFG's two halves count once) averaged over the SDE step's draw:
    what `rollout.sample` makes. With `share_prefix` a group's prefix (to its earliest SDE step m) is
    integrated once for its G videos, and each video continues from m. `cost`: each evaluation
    weighted by its grid step's (`evaluations`)."""
    grid = subgrid_indices(num_steps, ode_steps)

    def count(start: int, end: int, sde_steps: Iterable[int]) -> int:
        return evaluations(grid, start, end, sde_steps, cost)

    if full_trajectory:
        return Fraction(count(0, num_steps, range(num_steps)))
    start, stop = window
    raw = [Fraction(w) for w in weights] if weights else [Fraction(1)] * (stop - start)
    p = {start + j: w / sum(raw) for j, w in enumerate(raw)}
    if not share_prefix:
        return sum((q * count(0, num_steps, [k]) for k, q in p.items()), Fraction(0))
    prefix = {m: Fraction(count(0, m, []), group_size) for m in p}
    if iso_temporal:  # the group's one step is everyone's: m = k
        return sum((q * (prefix[k] + count(k, num_steps, [k])) for k, q in p.items()), Fraction(0))
    # Independent draws: m = min(k, m') with m' the minimum of the group's other G - 1 draws.
    survive = {a: sum((q for k, q in p.items() if k >= a), Fraction(0)) for a in range(start, stop + 1)}
    others = {a: survive[a] ** (group_size - 1) - survive[a + 1] ** (group_size - 1) for a in range(start, stop)}
    total = Fraction(0)
    for k, q in p.items():
        for a, r in others.items():
            m = min(k, a)
            total += q * r * (prefix[m] + count(m, num_steps, [k]))
    return total
