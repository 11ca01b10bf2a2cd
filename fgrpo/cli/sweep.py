"""`fgrpo sweep`: grid and random search over recipe fields, one job array per resource spec.

  fgrpo sweep RECIPE.py --grid optim.lr=1e-4,3e-5 --grid rollout.group-size=8,16 \\
      [--random N --range optim.lr=1e-5:1e-3:log --choice lora.rank=8,16] [--seed 0] \\
      [--backend slurm] [--dry-run] [--section.field VALUE ...]

This module parses the command line; the points and the sweep folder are fgrpo.recipe.sweep's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from fgrpo.fileio import atomic_write_json
from fgrpo.recipe.sweep import SweepSpec, points, sweep_dir

Repeated = tyro.conf.UseAppendAction


@dataclass
class SweepArgs:
    """Grid and random search over recipe fields. Every point gets its own run folder, named from
    its overrides; points that share a resource spec are submitted as one job array. Running the
    same command again is idempotent: finished points are skipped, points with a live job are left
    alone, and the others are submitted again and resume from their checkpoints. Every other flag,
    such as --section.field VALUE, overrides the recipe for all points; fgrpo launch RECIPE.py --help
    lists them. fgrpo status SWEEP_FOLDER ranks the points by held-out reward."""

    recipe_file: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RECIPE.py")]
    """The recipe file every point starts from."""
    grid: Annotated[tuple[str, ...], Repeated, tyro.conf.arg(metavar="FIELD=V1,V2")] = ()
    """Grid axis: every combination of the grid's values is a point, e.g. --grid optim.lr=1e-4,3e-5."""
    random: Annotated[int, tyro.conf.arg(metavar="N")] = 0
    """Random points (per grid point) drawn from --range and --choice, seeded by --seed."""
    range: Annotated[tuple[str, ...], Repeated, tyro.conf.arg(metavar="FIELD=LO:HI[:log]")] = ()
    """A field drawn uniformly (log-uniformly with :log) between LO and HI for each random point."""
    choice: Annotated[tuple[str, ...], Repeated, tyro.conf.arg(metavar="FIELD=V1,V2")] = ()
    """A field drawn from these values for each random point."""
    seed: int = 0
    """Seed of the random draws (the same seed draws the same points)."""
    backend: Literal["local", "slurm", "k8s"] = "local"
    """Where the job arrays run (`fgrpo launch --backend`)."""
    dry_run: bool = False
    """Print each point's overrides and run folder; submit and write nothing."""


def split_axis(item: str, flag: str) -> tuple[str, str]:
    """`FIELD=VALUES` -> (field as on the command line, with dashes: rollout.group-size, VALUES)."""
    if "=" not in item:
        raise ValueError(f"{flag} {item!r}: expected FIELD=VALUES")
    name, values = item.split("=", 1)
    return name.strip().lstrip("-").replace("_", "-"), values


def parse_range(item: str) -> tuple[str, float, float, bool]:
    name, values = split_axis(item, "--range")
    parts = values.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("log", "lin")):
        raise ValueError(f"--range {name}: expected LOW:HIGH[:log]")
    return name, float(parts[0]), float(parts[1]), len(parts) == 3 and parts[2] == "log"


def parse_sweep(argv: list[str]) -> tuple[SweepSpec, SweepArgs]:
    """The sweep's flags with tyro; what tyro does not know are the base recipe overrides."""
    args, overrides = tyro.cli(SweepArgs, args=argv, prog="fgrpo sweep", return_unknown_args=True)
    axes = [(f, v.split(",")) for f, v in (split_axis(g, "--grid") for g in args.grid)]
    choices = [(f, v.split(",")) for f, v in (split_axis(c, "--choice") for c in args.choice)]
    spec = SweepSpec(
        args.recipe_file, list(overrides), axes, args.random, [parse_range(r) for r in args.range], choices, args.seed
    )
    return spec, args


def cmd_sweep(argv: list[str]) -> int:
    from fgrpo.cli.launch import RecipeArgs, check_existing_run, check_writable, parse_recipe_args, resolve_run_dir
    from fgrpo.cli.runs import print_status
    from fgrpo.recipe.validate import validate
    from fgrpo.run_folder import RunFolder
    from launchers import LaunchJob, get_backend
    from launchers.base import is_active

    spec, args = parse_sweep(argv)
    backend = get_backend(args.backend)
    resolved = []
    for i, pt in enumerate(points(spec)):
        base, parsed = parse_recipe_args("sweep", [spec.recipe_path, *spec.base_overrides, *pt], RecipeArgs)
        validate(parsed.recipe, what=f"sweep point {i} ({' '.join(pt)})")
        resolved.append((pt, parsed.recipe, resolve_run_dir(base, parsed.recipe)))
    folder = sweep_dir(spec, resolved[0][2].parent, base.name)
    if args.dry_run:
        for pt, _, run_dir in resolved:
            print(f"{' '.join(pt):<60} -> {run_dir}")
        print(f"{len(resolved)} points; sweep folder {folder}")
        return 0
    for _, _, run_dir in resolved:  # every point's folder, before the first is written
        check_writable(run_dir)
    groups: dict[str, list[LaunchJob]] = {}
    for _, recipe, run_dir in resolved:
        check_existing_run(run_dir, recipe)
        run = RunFolder(run_dir)
        job = run.latest_job() if run_dir.exists() else None
        p = run.progress() if run_dir.exists() else None
        finished = p and (p["step"] >= recipe.optim.max_steps or p["status"].get("stopped_early"))  # eval.on_divergence
        if p and p["status"].get("state") == "completed" and finished:
            print(f"done     {run_dir.name}")
            continue
        if job and is_active(get_backend(job["backend"]).state(job["job_id"])):
            print(f"active   {run_dir.name} (job {job['job_id']})")
            continue
        run.write_recipe(recipe)
        run.clear_cancel()  # rerunning a sweep continues points that were cancelled
        # Points with the same processes per node and launch settings share one job array.
        key = json.dumps([recipe.procs_per_node, vars(recipe.launch)], sort_keys=True, default=str)
        groups.setdefault(key, []).append(LaunchJob(run_dir, recipe, kind="sweep"))
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "sweep.json", {"argv": argv, "runs": [str(r[2]) for r in resolved]})
    for jobs in groups.values():
        ids = backend.submit_array(jobs)
        print(
            f"submitted {len(ids)} of {len(jobs)} point(s) as {ids[0].split('_')[0] if ids else '-'}: "
            + ", ".join(j.run_dir.name for j in jobs[: len(ids)])
        )
    return print_status(folder)


__all__ = ["SweepArgs", "cmd_sweep", "parse_range", "parse_sweep", "split_axis"]
