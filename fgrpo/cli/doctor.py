"""`fgrpo doctor`: is this machine (or cluster) ready for a run? One table, before any GPU-hour is spent.

  fgrpo doctor [RECIPE.py] [--backend local|slurm|k8s] [--no-smoke] [--section.field VALUE ...]

The checks are small functions, each returning one `Check` (doctor_checks.py: torch, GPUs, bf16,
recipe, attention, memory, Slurm, Kubernetes; doctor_files.py: model and reward files;
doctor_smoke.py: the 1-step tiny run). A check that raises is reported as failed, never as a crash.
Exit status: 1 when a check failed (a blocking problem), 0 otherwise (warnings included); 2 for a
usage or recipe-file error, as every command.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

import tyro

from fgrpo.recipe.config import Recipe

from .doctor_checks import Check

CHECKS = """checks (one row each; FAIL blocks, exit status 1; a warning does not):
  torch         torch, CUDA, cuDNN and NCCL versions; torch.distributed with gloo
  GPUs          name, memory and free memory of each visible GPU; on --backend local, one per process of
                the recipe. No GPU: a warning (training runs on the CPU), not a failure
  bf16          bf16 compute on every GPU (compute capability >= 8.0), or a bf16 matmul on the CPU;
                blocking when the recipe's model.dtype is bfloat16
  recipe        the recipe's validation, as `fgrpo launch` runs it
  attention     model.attention_backend (forward and backward) and a different
                model.rollout_attention_backend (forward): known, its package present, one small call
                run on this machine's device in model.dtype
  memory        the peak memory per GPU of `fgrpo plan` (the same planner, for the detected GPU) against
                each GPU's free memory; "no GPU: plan skipped" without one
  slurm         (--backend slurm) sbatch, squeue, scancel, sinfo on PATH, submitit, `sinfo` answering,
                launch.partition among its partitions
  kubernetes    (--backend k8s) the kubernetes client, a kubeconfig or the pod's service account, the API
                server answering; kubectl (optional)
  model folder  model.path (or the preset's cached build): transformer, VAE, text encoder and tokenizer
                files the loaders read, present and readable, with their sizes
  reward N      each reward's model files (its required path arguments set; what its loader reads)
  smoke run     `fgrpo launch recipes/tiny.py` for 1 step into a temporary folder, on this machine's
                devices (one process per GPU, up to 4; --no-smoke skips it)

Without RECIPE.py only torch, GPUs, bf16, the scheduler and the smoke run are checked."""


@dataclass
class DoctorOptions:
    backend: Literal["local", "slurm", "k8s"] = "local"
    """Where the run will go: local checks this machine's devices; slurm and k8s also check the
    scheduler's tools and access from here (run `fgrpo doctor` inside a job to check its GPUs)."""
    smoke: bool = True
    """Run one step of the tiny model on this machine (--no-smoke skips it; seconds on a CPU)."""


@dataclass
class DoctorArgs:
    """Check this machine, or the cluster it submits to, before spending GPU-hours on a run: torch,
    CUDA, cuDNN and NCCL versions, GPUs, bf16, the recipe, its attention backends, memory (`fgrpo
    plan`'s peak against free GPU memory), Slurm or Kubernetes access (--backend), the model folder's
    and the rewards' files, and a 1-step run of the tiny model. Prints a table (check | result |
    detail); exit status 1 when a check failed (blocking), 0 otherwise (warnings do not block).
    `fgrpo doctor --help` says what each check does."""

    recipe: Annotated[Recipe, tyro.conf.arg(name="")]
    options: Annotated[DoctorOptions, tyro.conf.arg(name="")] = field(default_factory=DoctorOptions)


def guarded(name: str, check: Callable[[], Check | list[Check]]) -> list[Check]:
    """Run one check; an exception becomes its failed row (the doctor reports, it does not crash)."""
    try:
        out = check()
    except Exception as e:  # noqa: BLE001 - every failure is a finding
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return [Check(name, "fail", f"{type(e).__name__}: {first}")]
    return out if isinstance(out, list) else [out]


def run_checks(recipe: Recipe | None, backend: str, smoke: bool) -> list[Check]:
    """Every check for `recipe` (None: the machine only) and `backend`, in the table's order."""
    import torch

    from . import doctor_checks as c
    from .doctor_files import model_folder_check, reward_checks
    from .doctor_smoke import smoke_check

    rows = guarded("torch", c.torch_check)
    try:
        gpus = c.detect_gpus()
    except Exception as e:  # noqa: BLE001 - a broken driver is a finding; the checks go on without GPUs
        gpus = []
        rows.append(Check("GPUs", "fail", f"probing the GPUs failed: {type(e).__name__}: {e}"))
    else:
        world = recipe.world_size if recipe else None
        rows += guarded("GPUs", lambda: c.gpus_check(gpus, backend, world, bool(torch.version.cuda)))
    rows += guarded(
        "bf16",
        lambda: c.bf16_check(gpus, recipe.model.dtype if recipe else None, None if gpus else c.cpu_bf16_problem()),
    )
    if recipe is None:
        rows.append(
            Check(
                "recipe",
                "skip",
                "none given: attention, memory plan, model and reward files not checked "
                "(fgrpo doctor RECIPE.py checks them)",
            )
        )
    else:
        rows += guarded("recipe", lambda: c.recipe_check(recipe))
        rows += guarded("attention", lambda: c.attention_checks(recipe, gpus, backend))
        rows += guarded("memory", lambda: c.plan_memory_check(recipe, gpus))
    if backend == "slurm":
        rows += guarded("slurm", lambda: c.slurm_check(recipe.launch.partition if recipe else None))
    elif backend == "k8s":
        rows += guarded("kubernetes", c.k8s_check)
    if recipe is not None:
        rows += guarded("model folder", lambda: model_folder_check(recipe.model))
        rows += guarded("rewards", lambda: reward_checks(recipe))
    rows += guarded("smoke run", lambda: smoke_check(gpus)) if smoke else [Check("smoke run", "skip", "--no-smoke")]
    return rows


RESULT = {"ok": "[green]ok[/]", "warn": "[yellow]warning[/]", "fail": "[bold red]FAIL[/]", "skip": "[dim]skipped[/]"}


def render(rows: list[Check]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("check", "result", "detail", title="fgrpo doctor", title_justify="left")
    for r in rows:
        table.add_row(r.name, RESULT[r.status], escape(r.detail))
    console = Console()
    console.print(table)
    failed = [r.name for r in rows if r.blocking]
    warned = [r.name for r in rows if r.status == "warn"]
    notes = f"; warnings (not blocking): {', '.join(warned)}" if warned else ""
    if failed:
        console.print(f"[bold red]blocking:[/] {', '.join(failed)}{notes}")
    else:
        console.print(f"no blocking problem{notes}")


def parse(argv: list[str]) -> tuple[Recipe | None, DoctorOptions]:
    """`[RECIPE.py] [--section.field VALUE ...] [--backend B] [--no-smoke]`."""
    from .launch import parse_recipe_args

    if argv and not argv[0].startswith("-"):
        _, args = parse_recipe_args("doctor", argv, DoctorArgs)
        return args.recipe, args.options
    summary = " ".join(
        (DoctorArgs.__doc__ or "").split("`fgrpo doctor --help`")[0].split()
    )  # less the pointer to this help
    options = tyro.cli(DoctorOptions, args=argv, prog="fgrpo doctor [RECIPE.py]", description=f"{summary}\n\n{CHECKS}")
    return None, options


def cmd_doctor(argv: list[str]) -> int:
    recipe, options = parse(argv)
    rows = run_checks(recipe, options.backend, options.smoke)
    render(rows)
    sys.stdout.flush()
    return 1 if any(r.blocking for r in rows) else 0


__all__ = ["DoctorArgs", "DoctorOptions", "cmd_doctor", "guarded", "render", "run_checks"]
