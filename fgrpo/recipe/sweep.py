"""Sweeps over recipe fields: the points of a grid and random search, and the sweep's folder.

A point is a list of command-line overrides (`--optim.lr 1e-4 --lora.rank 16`) applied to the
recipe file after the sweep's own base overrides; `fgrpo sweep` (fgrpo.cli.sweep) resolves each
point to a recipe and a run folder and submits them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SweepSpec:
    recipe_path: str
    base_overrides: list[str] = field(default_factory=list)
    """Overrides every point gets (command-line form: `--section.field VALUE ...`)."""
    grid: list[tuple[str, list[str]]] = field(default_factory=list)
    """(field, values): every combination is a point (times each random draw)."""
    random_n: int = 0
    """Random draws (seeded); each samples every range and choice."""
    ranges: list[tuple[str, float, float, bool]] = field(default_factory=list)
    """(field, low, high, log-uniform)."""
    choices: list[tuple[str, list[str]]] = field(default_factory=list)
    """(field, values): one drawn uniformly per random point."""
    seed: int = 0

    def __post_init__(self):
        if (self.ranges or self.choices) and self.random_n < 1:
            raise ValueError("--range/--choice need --random N (how many random points)")
        if not self.grid and not self.random_n:
            raise ValueError("a sweep needs --grid FIELD=V1,V2 and/or --random N")


def points(spec: SweepSpec) -> list[list[str]]:
    """Override lists, one per point: the grid's product times the random draws (seeded)."""
    grid = [[(f, v) for v in values] for f, values in spec.grid] or [[]]
    combos = [list(c) for c in itertools.product(*grid)] if spec.grid else [[]]
    rng = random.Random(spec.seed)
    draws: list[list[tuple[str, str]]] = [[]]
    if spec.random_n:
        draws = []
        for _ in range(spec.random_n):
            d = []
            for f, lo, hi, log in spec.ranges:
                x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if log else rng.uniform(lo, hi)
                d.append((f, f"{x:.4g}"))
            d += [(f, rng.choice(values)) for f, values in spec.choices]
            draws.append(d)
    out = []
    for c in combos:
        for d in draws:
            out.append([x for f, v in c + d for x in (f"--{f}", v)])
    return out


def sweep_dir(spec: SweepSpec, runs_dir: Path, name: str) -> Path:
    """The sweep's folder (sweep.json lists its runs): named from the recipe file and the whole
    sweep, so the same command finds the same folder again."""
    key = json.dumps(
        [
            Path(spec.recipe_path).name,
            spec.base_overrides,
            spec.grid,
            spec.random_n,
            spec.ranges,
            spec.choices,
            spec.seed,
        ]
    )
    return runs_dir / f"{name}-sweep-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
