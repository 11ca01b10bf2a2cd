"""`fgrpo`: the command line. One module per command group, one parser style (tyro).

    fgrpo/cli/__init__.py       this dispatcher: `fgrpo COMMAND ...` -> that command's function
    fgrpo/cli/launch.py         launch, show, train, make-tiny, make-miniature
    fgrpo/cli/plan.py           plan                             (memory per GPU, FLOPs, GPU-hours)
    fgrpo/cli/doctor.py         doctor                           (is this machine or cluster ready? checks:
                                                                  doctor_checks.py, doctor_files.py, doctor_smoke.py)
    fgrpo/cli/reward_audit.py   reward-audit                     (what the recipe's rewards prefer, before training)
    fgrpo/cli/sweep.py          sweep                            (many points, one job array each)
    fgrpo/cli/runs.py           status, logs, cancel, resume     (a launched run, any backend)
    fgrpo/cli/eval.py           eval, export                     (a trained run's checkpoints)
    fgrpo/cli/report.py         report                           (HTML report of runs and sweeps)
    fgrpo/cli/reward_server.py  reward-server                    (rewards over HTTP)

Parser style: every command parses its arguments with `tyro.cli` on a dataclass whose field
docstrings are its `--help`. The top level is this small dispatcher rather than tyro subcommands
because the recipe commands (launch, show, sweep) take their defaults from a recipe *file* named
by the first argument: `fgrpo launch RECIPE.py --help` lists every field with its value in that
recipe, so the file must be loaded before the parser is built, which one static tyro subcommand
tree cannot do. The dispatcher only picks the command by name and hands it the rest of argv;
each command module imports only the public names of the others, and loads torch, the trainer
and the backends lazily, so `fgrpo --help` and `fgrpo status` start fast.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple

from fgrpo.recipe.io import RecipeError
from fgrpo.run_folder import RunLockedError


class Command(NamedTuple):
    module: str  # under fgrpo.cli
    function: str  # (argv: list[str]) -> int
    usage: str
    summary: str


COMMANDS: dict[str, Command] = {
    "launch": Command(
        "launch",
        "cmd_launch",
        "launch RECIPE.py [--backend local|slurm|k8s] [--dry-run] [--section.field VALUE ...]",
        "start a run (its folder: runs/<name from the overrides>)",
    ),
    "show": Command(
        "launch",
        "cmd_show",
        "show RECIPE.py [--section.field VALUE ...]",
        "print the resolved recipe and its run folder",
    ),
    "plan": Command(
        "plan",
        "cmd_plan",
        "plan RECIPE.py [--gpus N] [--gpu-memory 80GiB] [--gpu-tflops 989] "
        "[--mfu 0.4] [--rollout-options] [--json] [--section.field VALUE ...]",
        "peak memory per GPU of each phase, FLOPs per step, GPU-hours (no GPU, no weights)",
    ),
    "doctor": Command(
        "doctor",
        "cmd_doctor",
        "doctor [RECIPE.py] [--backend local|slurm|k8s] [--no-smoke] [--section.field VALUE ...]",
        "check this machine or cluster before a run: torch/CUDA/NCCL, "
        "GPUs, bf16, attention, memory, scheduler, model and reward files, a 1-step tiny run",
    ),
    "reward-audit": Command(
        "reward_audit",
        "cmd_reward_audit",
        "reward-audit RECIPE.py [--videos N] [--no-samples] [--json PATH] [--run RUN_DIR] [--section.field VALUE ...]",
        "score held-out probe videos under controlled edits (blur, noise, saturation, frozen...) with every "
        "reward; flag rewards that prefer degenerate edits or are motion-blind",
    ),
    "sweep": Command(
        "sweep",
        "cmd_sweep",
        "sweep RECIPE.py --grid FIELD=V1,V2 [--random N --range FIELD=LO:HI[:log]] [--backend slurm|k8s]",
        "grid and random search, one job array per resource spec",
    ),
    "status": Command(
        "runs",
        "cmd_status",
        "status [RUN | SWEEP | RUNS_DIR] [--json]",
        "scheduler state + step, reward, held-out reward, checkpoint",
    ),
    "logs": Command("runs", "cmd_logs", "logs RUN [-f] [--rank N]", "a rank's console output (-f: follow)"),
    "cancel": Command("runs", "cmd_cancel", "cancel RUN", "stop a run (and the reward server started for it)"),
    "resume": Command(
        "runs", "cmd_resume", "resume RUN", "submit a run again; it continues from its newest checkpoint"
    ),
    "eval": Command(
        "eval",
        "cmd_eval",
        "eval RUN_OR_CHECKPOINT [--prompts FILE] [--steps 50]",
        "held-out rewards (EMA weights) + sample grid",
    ),
    "report": Command(
        "report",
        "cmd_report",
        "report RUN | SWEEP | RUN RUN ... [--out FILE.html] [--metric M] [--baseline L] [--budget-flops F] [--json]",
        "one self-contained HTML report: curves, leaderboard, sample videos, paired comparison at equal compute",
    ),
    "export": Command(
        "eval",
        "cmd_export",
        "export RUN_DIR OUT_DIR [--step N | --best gold] [--weights ema|model]",
        "trained transformer (LoRA merged) as a diffusers folder + the LoRA safetensors",
    ),
    "reward-server": Command(
        "reward_server",
        "cmd_reward_server",
        "reward-server --reward NAME [--model-path DIR] [--arg NAME KEY VALUE] [--port 8000]",
        "serve rewards over HTTP (own GPUs or nodes); --run-dir RUN: a run's own rewards",
    ),
    "train": Command("launch", "cmd_train", "train --run-dir runs/NAME", "in-job entry point (backends start it)"),
    "make-tiny": Command("launch", "cmd_make_tiny", "make-tiny PATH", "save the tiny model as a diffusers folder"),
    "make-miniature": Command(
        "launch",
        "cmd_make_miniature",
        "make-miniature [PATH] [--seed N]",
        "pre-train the miniature world's model (minutes on a CPU)",
    ),
}


def usage() -> str:
    col = 46  # usage lines longer than this get their summary on the next line
    lines = ["usage: fgrpo COMMAND [ARGS ...]      (fgrpo COMMAND --help: that command's flags)", ""]
    for c in COMMANDS.values():
        if len(c.usage) <= col:
            lines.append(f"  fgrpo {c.usage:<{col}}  {c.summary}")
        else:
            lines += [f"  fgrpo {c.usage}", f"  {'':<{col + 6}}  {c.summary}"]
    lines += ["", "`fgrpo launch RECIPE.py --help` lists every field with its value in that recipe."]
    return "\n".join(lines)


def fail(msg: str, code: int = 2) -> int:
    """Report a user error the way every command does; returns the exit code."""
    print(f"fgrpo: error: {msg}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(usage())
        return fail(f"unknown command {argv[0]!r}")
    command = COMMANDS[argv[0]]
    run = getattr(importlib.import_module(f"fgrpo.cli.{command.module}"), command.function)
    try:
        return run(argv[1:])
    except RunLockedError as e:  # another job holds the run folder: not a bad recipe
        return fail(str(e), code=3)
    except (RecipeError, ValueError, FileNotFoundError, FileExistsError) as e:
        return fail(str(e))


__all__ = ["COMMANDS", "Command", "fail", "main", "usage"]
