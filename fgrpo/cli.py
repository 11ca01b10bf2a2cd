"""`fgrpo`: launch, show and train Flash-GRPO recipes.

  fgrpo launch RECIPE.py [--backend local|slurm|k8s] [--dry-run] [--section.field VALUE ...]
  fgrpo sweep  RECIPE.py --grid FIELD=V1,V2 [--random N --range FIELD=LO:HI[:log]] [--backend slurm|k8s]
  fgrpo status [RUN | SWEEP | RUNS_DIR]                  scheduler state + step, reward, checkpoint
  fgrpo logs RUN [-f] [--rank N]  |  fgrpo cancel RUN  |  fgrpo resume RUN
  fgrpo show   RECIPE.py [--section.field VALUE ...]     print the resolved recipe
  fgrpo train  --run-dir runs/NAME                       in-job entry point (backends start it)
  fgrpo export RUN_DIR OUT_DIR [--step N] [--weights ema|model]
                                                         trained transformer (LoRA merged) as a
                                                         diffusers folder + the LoRA safetensors
  fgrpo eval RUN_OR_CHECKPOINT [--prompts FILE] [--steps 50]
                                                         held-out rewards (EMA weights) + sample grid
  fgrpo reward-server --reward NAME [--model-path DIR] [--arg NAME KEY VALUE] [--port 8000]
  fgrpo reward-server --run-dir RUN                      serve rewards over HTTP (own GPUs or nodes)
  fgrpo make-tiny PATH                                   save the tiny model as a diffusers folder

`fgrpo launch RECIPE.py --help` lists every field with its value in that recipe.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from fgrpo.recipe.config import Recipe
from fgrpo.recipe.io import RecipeError, changed_fields, load_recipe_file, load_recipe_json, run_name, save_recipe_json, to_dict
from fgrpo.recipe.validate import recipe_problems


@dataclass
class LaunchArgs:
    recipe: Annotated[Recipe, tyro.conf.arg(name="")]
    backend: Literal["local", "slurm", "k8s"] = "local"
    """Where to run: `local` starts the processes on this machine; `slurm` submits through submitit
    and `k8s` creates a JobSet (or Indexed Job); both return at once."""
    dry_run: bool = False
    """Print what would run and the resolved recipe; start and write nothing."""


def _fail(msg: str, code: int = 2) -> int:
    print(f"fgrpo: error: {msg}", file=sys.stderr)
    return code


def _parse(command: str, argv: list[str]) -> tuple[Recipe, Recipe, LaunchArgs]:
    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        raise RecipeError(f"usage: fgrpo {command} RECIPE.py [--section.field VALUE ...]")
    base = load_recipe_file(argv[0])
    args = tyro.cli(
        LaunchArgs, default=LaunchArgs(recipe=base), args=argv[1:], prog=f"fgrpo {command} {argv[0]}",
        description=f"Recipe {argv[0]} ({base.name}); every field can be overridden.",
    )
    return base, args.recipe, args


def resolve_run_dir(base: Recipe, recipe: Recipe) -> Path:
    return (Path(recipe.logging.runs_dir) / run_name(base, recipe)).absolute()


def cmd_show(argv: list[str]) -> int:
    base, recipe, _ = _parse("show", argv)
    from rich.console import Console
    from rich.syntax import Syntax

    Console().print(Syntax(json.dumps(to_dict(recipe), indent=2), "json"))
    problems = recipe_problems(recipe)
    print(f"run folder: {resolve_run_dir(base, recipe)}")
    if problems:
        return _fail("invalid recipe:\n  " + "\n  ".join(problems))
    return 0


def _check_existing_run(run_dir: Path, recipe: Recipe) -> None:
    """A run folder belongs to one recipe; only run-neutral fields (launch, logging, eval,
    checkpointing, optim.max_steps: train longer) may change when it is resumed."""
    saved = run_dir / "recipe.json"
    if saved.exists():
        diff = changed_fields(load_recipe_json(saved), recipe)
        if diff:
            raise RecipeError(
                f"{run_dir} already holds a run with a different recipe ({', '.join(diff)} differ); "
                "pass --logging.run-name NEW_NAME or remove the folder"
            )


def cmd_launch(argv: list[str]) -> int:
    from launchers import LaunchJob, get_backend

    base, recipe, args = _parse("launch", argv)
    problems = recipe_problems(recipe)
    if problems:
        return _fail("invalid recipe:\n  " + "\n  ".join(problems))
    run_dir = resolve_run_dir(base, recipe)
    _check_existing_run(run_dir, recipe)
    backend = get_backend(args.backend)
    job = LaunchJob(run_dir=run_dir, recipe=recipe)
    if args.dry_run:
        print(json.dumps(to_dict(recipe), indent=2))
        print(f"run folder: {run_dir}")
        print(backend.describe(job))
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    save_recipe_json(recipe, run_dir / "recipe.json")
    print(f"run folder: {run_dir}", flush=True)
    return backend.launch(job)


def cmd_train(argv: list[str]) -> int:
    from fgrpo.trainer.entry import train_run
    from fgrpo.trainer.signals import StopFlag

    stop = StopFlag()  # before parsing: a signal during start-up is not lost
    a = tyro.cli(_TrainArgs, args=argv, prog="fgrpo train")
    run_dir = Path(a.run_dir)
    recipe = adopt_recipe_file(run_dir, Path(a.recipe_file)) if a.recipe_file else None
    return train_run(run_dir, stop, recipe)


def adopt_recipe_file(run_dir: Path, recipe_file: Path) -> Recipe:
    """Kubernetes pods get the recipe from a ConfigMap. Every rank trains with that file (so all
    agree, e.g. on a raised optim.max_steps); it must match the run folder's recipe up to
    run-neutral fields, and rank 0 records it in the run folder."""
    import os

    recipe = load_recipe_json(recipe_file)
    _check_existing_run(run_dir, recipe)
    if int(os.environ.get("RANK", "0")) == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_recipe_json(recipe, run_dir / ".recipe.json.tmp")
        os.replace(run_dir / ".recipe.json.tmp", run_dir / "recipe.json")
    return recipe


@dataclass
class _TrainArgs:
    run_dir: str
    """Run folder holding recipe.json (written by `fgrpo launch`)."""
    recipe_file: str | None = None
    """A resolved recipe.json to start the run folder from (Kubernetes mounts it from a ConfigMap)."""


def cmd_make_tiny(argv: list[str]) -> int:
    from fgrpo.models.wan.tiny import save_tiny_model

    if len(argv) != 1 or argv[0].startswith("-"):
        return _fail("usage: fgrpo make-tiny PATH")
    print(save_tiny_model(argv[0]))
    return 0


@dataclass
class _ExportArgs:
    run_dir: tyro.conf.Positional[str]
    """Run folder (holds recipe.json and checkpoints/)."""
    out_dir: tyro.conf.Positional[str]
    """Where to write transformer/, lora/ and export.json."""
    step: int | None = None
    """Checkpoint step; None = the newest complete one."""
    weights: Literal["ema", "model"] = "ema"
    """Export the EMA weights (what evaluation uses) or the raw trained weights."""


def cmd_export(argv: list[str]) -> int:
    from fgrpo.export import export_run

    a = tyro.cli(_ExportArgs, args=argv, prog="fgrpo export")
    print(export_run(Path(a.run_dir), Path(a.out_dir), a.step, a.weights))
    return 0


def _lazy(module: str, name: str):
    def run(argv: list[str]) -> int:
        import importlib

        return getattr(importlib.import_module(module), name)(argv)

    return run


COMMANDS = {"launch": cmd_launch, "show": cmd_show, "train": cmd_train, "make-tiny": cmd_make_tiny, "export": cmd_export,
            "sweep": _lazy("fgrpo.sweep", "cmd_sweep"), "status": _lazy("fgrpo.cli_runs", "cmd_status"),
            "logs": _lazy("fgrpo.cli_runs", "cmd_logs"), "cancel": _lazy("fgrpo.cli_runs", "cmd_cancel"),
            "resume": _lazy("fgrpo.cli_runs", "cmd_resume"), "eval": _lazy("fgrpo.cli_eval", "cmd_eval"),
            "reward-server": _lazy("fgrpo.rewards.serve", "main")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if (not argv or argv[0] in ("-h", "--help")) else _fail(f"unknown command {argv[0]!r}")
    try:
        return COMMANDS[argv[0]](argv[1:])
    except (RecipeError, ValueError, FileNotFoundError, FileExistsError) as e:
        return _fail(str(e))


if __name__ == "__main__":
    raise SystemExit(main())
