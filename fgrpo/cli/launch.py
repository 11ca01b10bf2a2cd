"""`fgrpo launch`, `show`, `train`, `make-tiny`: a recipe file becomes a run folder and a job.

  fgrpo launch RECIPE.py [--backend local|slurm|k8s] [--dry-run] [--section.field VALUE ...]
  fgrpo show   RECIPE.py [--section.field VALUE ...]
  fgrpo train  --run-dir runs/NAME [--recipe-file FILE]
  fgrpo make-tiny PATH

The recipe commands load RECIPE.py first and hand the rest of argv to tyro with that recipe as
the default, so `fgrpo launch RECIPE.py --help` lists every field with its value in that recipe.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Protocol, TypeVar

import tyro

from fgrpo.data.prompts import prompt_file_identity
from fgrpo.fileio import env_rank
from fgrpo.recipe.config import Recipe
from fgrpo.recipe.io import (
    RecipeError,
    changed_fields,
    load_recipe_file,
    load_recipe_json,
    run_name,
    to_dict,
    training_fingerprint,
)
from fgrpo.recipe.validate import validate
from fgrpo.run_folder import RunFolder, RunLockedError


@dataclass
class RecipeArgs:
    """Print the resolved recipe (RECIPE.py with the overrides applied) and its run folder."""

    recipe: Annotated[Recipe, tyro.conf.arg(name="")]


@dataclass
class LaunchArgs:
    """Start a run: validate the recipe, write RUN/recipe.json, hand the job to a backend. The run
    folder is runs/<recipe name + the overridden fields, paths as a hash>; launching the same recipe
    again resumes it."""

    recipe: Annotated[Recipe, tyro.conf.arg(name="")]
    backend: Literal["local", "slurm", "k8s"] = "local"
    """Where to run: local starts the processes on this machine; slurm submits through submitit and
    k8s creates a JobSet (or Indexed Job); both return at once."""
    dry_run: bool = False
    """Print what would run and the resolved recipe; start and write nothing."""
    no_preflight: bool = False
    """Skip the pre-flight check of slurm and k8s launches: the run is planned on its layout
    (`fgrpo plan`: peak memory per GPU of each phase, no GPU needed) and refused, before anything is
    written or submitted, when a phase exceeds launch.gpu_memory_gb. Local launches are not checked."""


class _RecipeCommandArgs(Protocol):
    """A command's arguments dataclass whose first field is the recipe (RecipeArgs, LaunchArgs,
    PlanArgs, DoctorArgs)."""

    recipe: Recipe

    def __init__(self, recipe: Recipe) -> None: ...


Args = TypeVar("Args", bound=_RecipeCommandArgs)


def parse_recipe_args(command: str, argv: list[str], args_type: type[Args]) -> tuple[Recipe, Args]:
    """`RECIPE.py [--section.field VALUE ...]` -> (the file's recipe, the parsed arguments).

    The file is loaded first: its recipe is the parser's default, so `--help` shows its values."""
    from fgrpo.cli import COMMANDS

    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            print(
                f"usage: fgrpo {COMMANDS[command].usage}\n\n{' '.join((args_type.__doc__ or '').split())}\n\n"
                f"`fgrpo {command} RECIPE.py --help` lists every field with its value in that recipe."
            )
            raise SystemExit(0)
        raise RecipeError(f"usage: fgrpo {command} RECIPE.py [--section.field VALUE ...]")
    base = load_recipe_file(argv[0])
    doc = " ".join((args_type.__doc__ or "").split())
    args = tyro.cli(
        args_type,
        default=args_type(recipe=base),
        args=argv[1:],
        prog=f"fgrpo {command} {argv[0]}",
        description=f"{doc}\n\nRecipe {argv[0]} ({base.name}): every field below can be overridden; "
        "the defaults shown are that recipe's values.",
    )
    return base, args


def resolve_run_dir(base: Recipe, recipe: Recipe) -> Path:
    """The run folder: a pure function of the recipe file's recipe and the overrides."""
    return (Path(recipe.logging.runs_dir) / run_name(base, recipe)).absolute()


def check_writable(run_dir: Path) -> None:
    """RecipeError (exit 2) naming logging.runs_dir unless this user can make and write the run
    folder: the nearest existing folder on its way must be a folder this user may write. Checked
    before anything is written (otherwise a file in the way, or another user's folder, fails the
    launch half-way with a raw OSError)."""
    existing = run_dir
    while not (existing.exists() or existing.is_symlink()) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        why = "not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = "not writable by this user"
    else:
        return
    if existing == run_dir:
        raise RecipeError(f"logging.runs_dir: the run folder {run_dir} is {why}")
    raise RecipeError(f"logging.runs_dir: {existing} is {why}, so the run folder {run_dir} cannot be made in it")


def check_existing_run(run_dir: Path, recipe: Recipe) -> None:
    """A run folder belongs to one recipe; only run-neutral fields (launch, logging, eval,
    checkpointing, optim.max_steps: train longer) may change when it is resumed. Checkpoints are
    adopted only with the recipe that trained them: with recipe.json gone, their manifests say. A
    folder written by a newer fgrpo (fgrpo.run_folder.versions) is refused first."""
    folder = RunFolder(run_dir)
    folder.check_format()
    other = "pass --logging.run-name NEW_NAME or remove the folder"
    if folder.is_run():
        diff = changed_fields(folder.read_recipe(), recipe)
        if diff:
            raise RecipeError(
                f"{run_dir} already holds a run with a different recipe ({', '.join(diff)} differ); {other}"
            )
    elif folder.orphan_checkpoints():
        raise RecipeError(
            f"{run_dir} holds checkpoints but no recipe.json, so whether this recipe trained them "
            f"is unknown; restore {folder.recipe_file} or {other}"
        )
    foreign = folder.checkpoints_match(training_fingerprint(recipe))
    if foreign:
        raise RecipeError(f"{foreign[-1]} was trained with a different recipe than this one; {other}")
    problem = folder.prompts_problem(prompt_file_identity(recipe.prompts.file))
    if problem:
        raise RecipeError(f"{run_dir}: {problem}")


def refuse_if_running(folder: RunFolder, grace_s: float = 120.0) -> None:
    """One job per run folder: refuse while another holds its lock, or while the scheduler still
    has its newest job (queued jobs hold no lock yet; on filesystems without locks, the only check).
    A trainer whose job the scheduler already reports ended is winding down (saving, exiting): it
    gets `grace_s` to let go before the refusal."""
    from launchers.base import is_active

    lock = folder.lock()
    held = lock.probe() == "held"
    job = folder.latest_job()
    state = scheduler_state(job) if job is not None else None
    active = state is not None and is_active(state)
    if held and state is not None and not active:  # ended, by a scheduler that could be asked
        assert job is not None  # state came from it
        print(
            f"waiting up to {grace_s:g} s for the ended {job['backend']} job {job['job_id']} to finish saving "
            f"{folder.path}",
            file=sys.stderr,
            flush=True,
        )
        deadline = time.monotonic() + grace_s
        while held and time.monotonic() < deadline:
            time.sleep(1.0)
            held = lock.probe() == "held"
    if held:
        raise RunLockedError(
            f"{folder.path} is in use by {lock.describe_holder()}; "
            f"wait for it to end, or stop it with fgrpo cancel {folder.path}"
        )
    if active:
        assert job is not None  # state came from it
        raise RunLockedError(
            f"{folder.path} has {job['backend']} job {job['job_id']} still {state}; "
            f"wait for it to end, or stop it with fgrpo cancel {folder.path}"
        )


def scheduler_state(job: dict) -> str | None:
    """The scheduler's state of a recorded job; None when it cannot be asked from here (no
    kubeconfig, no squeue): the lock is then the only check."""
    from launchers import get_backend

    try:
        return get_backend(job["backend"]).state(job["job_id"])
    except Exception:  # noqa: BLE001 - that scheduler cannot be asked from here
        return None


def cmd_show(argv: list[str]) -> int:
    from rich.console import Console
    from rich.syntax import Syntax

    base, args = parse_recipe_args("show", argv, RecipeArgs)
    validate(args.recipe)  # first: a refused recipe (a run name like ../x) is never echoed as a folder
    Console().print(Syntax(json.dumps(to_dict(args.recipe), indent=2), "json"))
    print(f"run folder: {resolve_run_dir(base, args.recipe)}")
    return 0


def cmd_launch(argv: list[str]) -> int:
    from launchers import LaunchJob, get_backend

    base, args = parse_recipe_args("launch", argv, LaunchArgs)
    recipe = args.recipe
    validate(recipe)
    run_dir = resolve_run_dir(base, recipe)
    if not args.dry_run:  # a dry run writes nothing, and may name a folder only the cluster has
        check_writable(run_dir)
    check_existing_run(run_dir, recipe)
    backend = get_backend(args.backend)
    job = LaunchJob(run_dir=run_dir, recipe=recipe)
    if args.backend in ("slurm", "k8s") and not args.no_preflight:
        preflight(recipe)
    if args.dry_run:
        print(json.dumps(to_dict(recipe), indent=2))
        print(f"run folder: {run_dir}")
        print(backend.describe(job))
        return 0
    folder = RunFolder(run_dir)
    refuse_if_running(folder)
    folder.write_recipe(recipe)
    folder.clear_cancel()  # launching a cancelled run again means: continue it (as `fgrpo resume`)
    print(f"run folder: {run_dir}", flush=True)
    return backend.launch(job)


def preflight(recipe: Recipe) -> None:
    """Plan the recipe on its own layout (its world size, launch.gpu_memory_gb per GPU) and refuse
    it, naming the phase and what to change, when it will not fit: RecipeError (exit 2), before
    anything is written or submitted. Silent when it fits (a launch's output is its own)."""
    from fgrpo.planner import Gpu, plan
    from fgrpo.planner.report import refusal

    # Cached per recipe and layout ($FGRPO_CACHE/plans): a dry run and the launch after it plan once.
    p = plan(recipe, recipe.world_size, Gpu(memory=int(recipe.launch.gpu_memory_gb * 2**30)), cache=True)
    if not p.fits:
        raise RecipeError(
            f"pre-flight: this recipe will not fit in launch.gpu_memory_gb="
            f"{recipe.launch.gpu_memory_gb:g} GiB per GPU on {p.world} GPUs:\n{refusal(p)}\n"
            "(`fgrpo plan` shows the whole plan; --no-preflight launches anyway)"
        )


@dataclass
class TrainArgs:
    """The in-job entry point: every process of a run starts this (the backends do, not you). It
    trains from RUN/recipe.json and continues from the newest complete checkpoint."""

    run_dir: str
    """Run folder holding recipe.json (written by `fgrpo launch`)."""
    recipe_file: str | None = None
    """A resolved recipe.json to start the run folder from (Kubernetes mounts it from a ConfigMap)."""


def cmd_train(argv: list[str]) -> int:
    from fgrpo.trainer.entry import rank_main
    from fgrpo.trainer.signals import StopFlag

    stop = StopFlag()  # before parsing: a signal during start-up is not lost
    a = tyro.cli(TrainArgs, args=argv, prog="fgrpo train")
    run_dir = Path(a.run_dir)
    recipe = adopt_recipe_file(run_dir, Path(a.recipe_file)) if a.recipe_file else None
    rank_main(run_dir, recipe, stop)


def adopt_recipe_file(run_dir: Path, recipe_file: Path) -> Recipe:
    """Kubernetes pods get the recipe from a ConfigMap. Every rank trains with that file (so all
    agree, e.g. on a raised optim.max_steps); it must match the run folder's recipe up to
    run-neutral fields, and rank 0 records it in the run folder."""
    recipe = load_recipe_json(recipe_file)
    check_existing_run(run_dir, recipe)
    if env_rank() == 0:
        RunFolder(run_dir).write_recipe(recipe)  # atomic: the other ranks never see half a file
    return recipe


@dataclass
class MakeTinyArgs:
    """Save the tiny Wan-architecture model (random weights, CPU-sized) as a diffusers folder, for
    the --model.path of recipes like recipes/tiny.py and for tests."""

    path: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="PATH")]
    """Folder to write, in the diffusers layout `WanPipeline.from_pretrained` reads."""


def cmd_make_tiny(argv: list[str]) -> int:
    from fgrpo.models.wan.tiny import save_tiny_model

    a = tyro.cli(MakeTinyArgs, args=argv, prog="fgrpo make-tiny")
    print(save_tiny_model(a.path))
    return 0


@dataclass
class MakeMiniatureArgs:
    """Pre-train the miniature world's text-to-video model (fgrpo/miniature/pretrain.py: Wan's VAE,
    UMT5 and transformer, seeded, a fixed number of steps; a few minutes on 2 CPU cores) and print
    its held-out gold faithfulness per attribute. Recipes with `model.preset miniature` copy the
    released build of seed 0 (committed with fgrpo) into $FGRPO_CACHE on first use, and pre-train
    other seeds there; this command builds it elsewhere (PATH), or fills the cache ahead."""

    path: Annotated[str | None, tyro.conf.Positional, tyro.conf.arg(metavar="[PATH]")] = None
    """Folder to write (diffusers layout), pre-trained. None: the cache folder recipes use (filled only if
    missing: from the released build when the seed has one)."""
    seed: int = 0
    """Seed of the build (model.seed in a recipe)."""


def cmd_make_miniature(argv: list[str]) -> int:
    from fgrpo.miniature.pretrain import QUALITY_FILE, PretrainConfig, miniature_model_path, pretrain

    a = tyro.cli(MakeMiniatureArgs, args=argv, prog="fgrpo make-miniature")
    path = miniature_model_path(a.seed) if a.path is None else pretrain(a.path, PretrainConfig(seed=a.seed))
    print((path / QUALITY_FILE).read_text(), end="")
    print(path)
    return 0


__all__ = [
    "LaunchArgs",
    "MakeMiniatureArgs",
    "MakeTinyArgs",
    "RecipeArgs",
    "TrainArgs",
    "adopt_recipe_file",
    "check_existing_run",
    "check_writable",
    "cmd_launch",
    "cmd_make_miniature",
    "cmd_make_tiny",
    "cmd_show",
    "cmd_train",
    "parse_recipe_args",
    "preflight",
    "refuse_if_running",
    "resolve_run_dir",
]
