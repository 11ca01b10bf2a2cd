"""`fgrpo sweep`: grid and random search over recipe fields, one job array per resource spec.

  fgrpo sweep RECIPE.py --grid optim.lr=1e-4,3e-5 --grid rollout.group-size=8,16 \\
      [--random N --range optim.lr=1e-5:1e-3:log --choice lora.rank=8,16] [--seed 0] \\
      [--backend slurm] [--dry-run] [--section.field VALUE ...]

Every point gets its own run folder, named from its overrides. Running the same command again is
idempotent: finished points are skipped, points with a live job are left alone, and the others
are submitted again and resume from their checkpoints.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

@dataclass
class SweepSpec:
    recipe_path: str
    base_overrides: list[str]
    grid: list[tuple[str, list[str]]]
    random_n: int
    ranges: list[tuple[str, float, float, bool]]
    choices: list[tuple[str, list[str]]]
    seed: int
    backend: str
    dry_run: bool


def _split(item: str, flag: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"{flag} {item!r}: expected FIELD=VALUES")
    field, values = item.split("=", 1)
    return field.strip().lstrip("-").replace("_", "-"), values


def parse_args(argv: list[str]) -> SweepSpec:
    if not argv or argv[0].startswith("-"):
        raise ValueError("usage: fgrpo sweep RECIPE.py --grid FIELD=V1,V2 ... (see fgrpo sweep --help)")
    spec = SweepSpec(argv[0], [], [], 0, [], [], 0, "local", False)
    it = iter(argv[1:])
    for arg in it:
        if arg in ("--grid", "--choice"):
            field, values = _split(next(it, ""), arg)
            (spec.grid if arg == "--grid" else spec.choices).append((field, values.split(",")))
        elif arg == "--range":
            field, values = _split(next(it, ""), arg)
            parts = values.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("log", "lin")):
                raise ValueError(f"--range {field}: expected LOW:HIGH[:log]")
            spec.ranges.append((field, float(parts[0]), float(parts[1]), len(parts) == 3 and parts[2] == "log"))
        elif arg == "--random":
            spec.random_n = int(next(it, "0"))
        elif arg == "--seed":
            spec.seed = int(next(it, "0"))
        elif arg == "--backend":
            spec.backend = next(it, "")
        elif arg == "--dry-run":
            spec.dry_run = True
        else:
            spec.base_overrides.append(arg)
    if (spec.ranges or spec.choices) and spec.random_n < 1:
        raise ValueError("--range/--choice need --random N (how many random points)")
    if not spec.grid and not spec.random_n:
        raise ValueError("a sweep needs --grid FIELD=V1,V2 and/or --random N")
    return spec


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
    key = json.dumps([Path(spec.recipe_path).name, spec.base_overrides, spec.grid, spec.random_n, spec.ranges,
                      spec.choices, spec.seed])
    return runs_dir / f"{name}-sweep-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def cmd_sweep(argv: list[str]) -> int:
    from fgrpo.cli import _check_existing_run, _parse, resolve_run_dir
    from fgrpo.cli_runs import cmd_status
    from fgrpo.recipe.io import RecipeError, save_recipe_json
    from fgrpo.recipe.validate import recipe_problems
    from launchers import LaunchJob, get_backend
    from launchers.base import is_active
    from launchers.records import clear_cancel, latest_job, progress

    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    spec = parse_args(argv)
    backend = get_backend(spec.backend)
    resolved = []
    for i, pt in enumerate(points(spec)):
        base, recipe, _ = _parse("sweep", [spec.recipe_path, *spec.base_overrides, *pt])
        problems = recipe_problems(recipe)
        if problems:
            raise RecipeError(f"sweep point {i} ({' '.join(pt)}):\n  " + "\n  ".join(problems))
        resolved.append((pt, recipe, resolve_run_dir(base, recipe)))
    folder = sweep_dir(spec, resolved[0][2].parent, base.name)
    if spec.dry_run:
        for pt, _, run_dir in resolved:
            print(f"{' '.join(pt):<60} -> {run_dir}")
        print(f"{len(resolved)} points; sweep folder {folder}")
        return 0
    groups: dict[str, list[LaunchJob]] = {}
    for pt, recipe, run_dir in resolved:
        _check_existing_run(run_dir, recipe)
        job = latest_job(run_dir) if run_dir.exists() else None
        p = progress(run_dir) if run_dir.exists() else None
        if p and p["status"].get("state") == "completed" and p["step"] >= recipe.optim.max_steps:
            print(f"done     {run_dir.name}")
            continue
        if job and is_active(get_backend(job["backend"]).state(job["job_id"])):
            print(f"active   {run_dir.name} (job {job['job_id']})")
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        clear_cancel(run_dir)  # rerunning a sweep continues points that were cancelled
        save_recipe_json(recipe, run_dir / "recipe.json")
        key = json.dumps([recipe.procs_per_node, {k: v for k, v in vars(recipe.launch).items()}], sort_keys=True,
                         default=str)
        groups.setdefault(key, []).append(LaunchJob(run_dir, recipe, kind="sweep"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.json").write_text(json.dumps({"argv": argv, "runs": [str(r[2]) for r in resolved]}, indent=2))
    for jobs in groups.values():
        ids = backend.submit_array(jobs)
        print(f"submitted {len(ids)} of {len(jobs)} point(s) as {ids[0].split('_')[0] if ids else '-'}: "
              + ", ".join(j.run_dir.name for j in jobs[: len(ids)]))
    return cmd_status([str(folder)])
