"""`fgrpo status`, `logs`, `cancel`, `resume`: a launched run on any backend (the run folder
records which backend and which job ids belong to it, fgrpo.run_folder.RunFolder.jobs).

  fgrpo status [RUN | SWEEP | RUNS_DIR] [--json]
  fgrpo logs RUN [-f] [--rank N]
  fgrpo cancel RUN
  fgrpo resume RUN
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from fgrpo.fileio import read_json
from fgrpo.recipe.config import LaunchConfig
from fgrpo.run_folder import FINAL_STATES, RunFolder, report_file
from fgrpo.run_folder.status import Liveness, liveness
from launchers.base import is_active


def backend_of(folder: RunFolder):
    """(backend, newest training job) of a launched run."""
    from launchers import get_backend

    job = folder.latest_job()
    if job is None:
        raise ValueError(f"{folder.path} has no recorded job (was it launched with fgrpo launch?)")
    return get_backend(job["backend"]), job


def run_dirs(target: Path) -> list[Path]:
    """A run folder, a sweep folder (sweep.json lists its runs) or a folder of runs."""
    if RunFolder(target).is_run():
        return [target]
    sweep = read_json(target / "sweep.json")
    if sweep is not None:
        return [Path(p) for p in sweep["runs"]]
    if target.is_dir():
        return sorted(p for p in target.iterdir() if RunFolder(p).is_run())
    raise ValueError(f"{target} is not a run folder, a sweep folder or a folder of runs")


def job_state(job: dict) -> str:
    """The scheduler's state of a recorded job; UNKNOWN when its backend cannot be asked."""
    try:
        from launchers import get_backend

        return get_backend(job["backend"]).state(job["job_id"])
    except Exception:  # noqa: BLE001 - that scheduler cannot be asked from here
        return "UNKNOWN"


def run_row(run_dir: Path) -> dict:
    """One line of `fgrpo status`: the scheduler's state joined with the run folder's progress.
    A damaged run folder gets a row that says what is wrong, never an error for the whole table."""
    folder = RunFolder(run_dir)
    p = folder.progress()
    status = folder.effective_status()  # "running" with no live owner reads as killed
    job = folder.latest_job()
    servers = folder.server_jobs()  # a reward server the backend started beside the training job
    server = f"job {servers[-1]['job_id']} {job_state(servers[-1])}" if servers else None
    reason = "; ".join(str(x) for x in (status.get("reason", ""), *folder.problems()) if x)
    timeout_s = LaunchConfig().collective_timeout_s  # an unreadable recipe's: the default
    try:
        recipe = folder.read_recipe()
        max_steps, timeout_s = recipe.optim.max_steps, recipe.launch.collective_timeout_s
    except ValueError as e:
        max_steps, reason = "?", "; ".join(x for x in (str(e), reason) if x)
    live = liveness(status, folder.read_heartbeat(), timeout_s, time.time())  # reads only: stalled is shown
    reason = "; ".join(x for x in (liveness_note(live), divergence_note(folder.read_metrics("eval")), reason) if x)
    return {
        "run": run_dir.name,
        "backend": job["backend"] if job else "-",
        "job": job["job_id"] if job else "-",
        "state": job_state(job) if job else "-",
        "step": p["step"],
        "run_state": "stalled" if live and live.stalled else status.get("state", "-"),
        "since_step_s": round(live.quiet_s, 1) if live else None,
        "max_steps": max_steps,
        "reward": p["reward"],
        "heldout": p["heldout"],
        "checkpoint": p["checkpoint"],
        "reason": reason,
        "reward_server": server,
        "report": str(folder.report_file) if folder.report_file.is_file() else None,
    }


def divergence_note(evals: list[dict]) -> str:
    """ "gold diverged from the trained reward at step N ..." from the evaluations at which the
    divergence rule fired (eval.gold_rewards, fgrpo.algorithm.divergence): the first and the latest
    (its numbers); "" when it never did."""
    hits = [e["divergence"] for e in evals if isinstance(e.get("divergence"), dict)]
    if not hits:
        return ""
    first, found = hits[0], hits[-1]
    try:
        since = (
            f"since step {first['step']}, latest at step {found['step']}"
            if len(hits) > 1
            else f"at step {found['step']}"
        )
        return (
            f"gold diverged from the trained reward {since} (gold {found['gold']:.4f}, best {found['best_gold']:.4f} "
            f"at step {found['best_step']}; checkpoint kept: fgrpo export RUN OUT --best gold)"
        )
    except (KeyError, TypeError, ValueError):  # a damaged record: say so, never fail the table
        return "gold diverged from the trained reward (its record in metrics.jsonl is damaged)"


def ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def liveness_note(live: Liveness | None) -> str:
    """ "last step 3 min ago (step 12)" for a running run; why it reads stalled (fgrpo.run_folder.status)."""
    if live is None:
        return ""
    note = (
        f"last step {ago(live.quiet_s)} ago (step {live.step})"
        if live.step is not None
        else f"no step yet: started {ago(live.quiet_s)} ago"
    )
    if live.stalled:
        note += (
            f"; stalled: no step for over {ago(live.stall_after_s)} (twice launch.collective_timeout_s or "
            "the longest gap between steps): see fgrpo logs RUN --rank N"
        )
    return note


@dataclass
class StatusArgs:
    """The scheduler's state of each run joined with its last step, reward, held-out reward and
    checkpoint; best held-out reward first (a sweep reads as a ranking). A running run's note says
    how long ago its last step finished; its state reads stalled once no step has finished for
    twice launch.collective_timeout_s (or twice its longest gap between steps). Writes nothing,
    except recording as killed a run whose process is gone."""

    target: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN|SWEEP|RUNS_DIR")] = "runs"
    """A run folder, a sweep folder, or a folder of runs."""
    json: bool = False
    """Print JSON lines instead of a table."""


def print_status(target: Path, as_json: bool = False) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    rows = [run_row(d) for d in run_dirs(target)]
    # Sweeps are read as a ranking: best held-out reward first.
    rows.sort(key=lambda r: -(r["heldout"] if r["heldout"] is not None else float("-inf")))
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return 0
    table = Table(title=Text(f"fgrpo runs in {target}"))
    for col in ("run", "backend", "job", "state", "run state", "step", "reward", "held-out", "checkpoint", "note"):
        table.add_column(col)
    fmt = lambda v: "-" if v is None else f"{v:+.4f}"  # noqa: E731
    for r in rows:
        note = "; ".join(x for x in (r["reason"], r["reward_server"] and f"reward server {r['reward_server']}") if x)
        # Cells are Text, never markup: an error such as gloo's "[/.../pair.cc:553] ..." reads to rich
        # as a closing tag.
        cells = (
            r["run"],
            r["backend"],
            r["job"],
            r["state"],
            r["run_state"],
            f"{r['step']}/{r['max_steps']}",
            fmt(r["reward"]),
            fmt(r["heldout"]),
            str(r["checkpoint"] or "-"),
            note,
        )
        table.add_row(*(Text(str(c)) for c in cells))
    Console(width=200).print(table)
    # One run's report is RUN/report.html; a sweep's or a folder's, beside its runs.
    report = RunFolder(target).report_file if RunFolder(target).is_run() else report_file(target)
    print(f"report: {report}" if report.is_file() else f"report: `fgrpo report {target}` writes {report}")
    return 0


def cmd_status(argv: list[str]) -> int:
    a = tyro.cli(StatusArgs, args=argv, prog="fgrpo status")
    return print_status(Path(a.target), a.json)


@dataclass
class LogsArgs:
    """Print one process's console output of the run's newest job (local: RUN/logs/rank-R.log;
    Slurm: the submitit files; Kubernetes: the pod's log from the API)."""

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """The run folder."""
    follow: Annotated[bool, tyro.conf.arg(aliases=("-f",))] = False
    """Keep printing new output until the job ends."""
    rank: int = 0
    """Which process's output (global rank)."""


def cmd_logs(argv: list[str]) -> int:
    a = tyro.cli(LogsArgs, args=argv, prog="fgrpo logs")
    folder = RunFolder(Path(a.run).absolute())
    backend, job = backend_of(folder)
    try:
        lines = backend.stream_logs(folder.path, job["job_id"], a.rank, a.follow)
    except FileNotFoundError as exc:  # no output yet (the job has not started that rank)
        print(exc, file=sys.stderr)
        return 1
    for line in lines:
        sys.stdout.write(line if line.endswith("\n") else line + "\n")
        sys.stdout.flush()
    return 0


@dataclass
class RunArgs:
    """RUN: the run folder (runs/<name>)."""

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """The run folder."""


@dataclass
class CancelArgs:
    """Stop the run's job: it saves a checkpoint and is not requeued; the reward server started
    for it goes too. Says what was done: nothing, when the job is not running. `fgrpo resume RUN`
    continues the run."""

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """The run folder."""
    wait: float = 120.0
    """Seconds to wait for the job to save and end before returning (0: return at once)."""


def cmd_cancel(argv: list[str]) -> int:
    a = tyro.cli(CancelArgs, args=argv, prog="fgrpo cancel")
    folder = RunFolder(Path(a.run).absolute())
    backend, job = backend_of(folder)
    state = backend.state(job["job_id"])
    servers = [
        s for s in folder.server_jobs() if s["backend"] == backend.name and is_active(backend.state(s["job_id"]))
    ]
    for server in servers:  # a reward server started beside it goes too
        backend.cancel(server["job_id"])
        print(f"cancelled its reward server, {backend.name} job {server['job_id']}")
    status = folder.effective_status()
    if is_active(state) and folder.lock().probe() != "held" and backend.name == "local":
        # The job is alive but this run is not training in it: a point of a local sweep (every point
        # shares the sweep process's job id) that has finished or waits its turn. Signalling the job
        # would stop whichever point trains now.
        if status.get("state") in FINAL_STATES:
            print(
                f"nothing to cancel: {folder.path.name} is {status['state']} (its sweep, job {job['job_id']}, goes on)",
                file=sys.stderr,
            )
            return 1
        folder.request_cancel(job["job_id"])
        folder.write_status("cancelled", f"fgrpo cancel before it started (a point of local job {job['job_id']})")
        print(f"cancelled {folder.path.name} before it started; its sweep (job {job['job_id']}) skips it")
        return 0
    if not is_active(state):
        print(
            f"nothing to cancel: {backend.name} job {job['job_id']} of {folder.path.name} is not running "
            f"({state}); the run is {status.get('state', 'not started')}",
            file=sys.stderr,
        )
        return 1
    folder.request_cancel(job["job_id"])  # before the scheduler is asked: a stopped job must not requeue
    backend.cancel(job["job_id"])
    print(
        f"asked {backend.name} job {job['job_id']} of {folder.path.name} to stop (it saves a checkpoint first)",
        flush=True,
    )
    # Ended means both: the scheduler says so (Slurm says CANCELLED at once, while the trainer still
    # saves within KillWait) and the trainer has let go of the run folder's lock.
    lock = folder.lock()
    ended = lambda: not is_active(backend.state(job["job_id"])) and lock.probe() != "held"  # noqa: E731
    deadline = time.monotonic() + a.wait
    while time.monotonic() < deadline and not ended():
        time.sleep(1.0)
    if not ended():
        print(
            f"job {job['job_id']} is still {backend.state(job['job_id'])} (or its trainer still holds the run) "
            f"after {a.wait:g} s (saving?); fgrpo status {folder.path} shows when it has stopped"
        )
        return 0
    status = folder.effective_status()
    if status.get("state") != "cancelled":  # it never started, or died before it could say so
        folder.write_status(
            "cancelled",
            f"fgrpo cancel of job {job['job_id']} (before it recorded a stop: "
            f"it was {status.get('state', 'not started')})",
        )
    ckpt = folder.latest_checkpoint()
    print(
        f"cancelled {backend.name} job {job['job_id']} of {folder.path.name}; newest checkpoint: "
        f"{'step ' + str(ckpt[0]) if ckpt else 'none'}"
    )
    return 0


def cmd_resume(argv: list[str]) -> int:
    """Submit the run again with its own recipe; it continues from its newest checkpoint."""
    from launchers import LaunchJob

    from .launch import refuse_if_running

    a = tyro.cli(
        RunArgs,
        args=argv,
        prog="fgrpo resume",
        description="Submit the run again on its backend with its own recipe (RUN/recipe.json); it "
        "continues from its newest complete checkpoint.",
    )
    folder = RunFolder(Path(a.run).absolute())
    folder.check_format()  # a newer fgrpo's run folder: refused before anything is written
    backend, _ = backend_of(folder)
    refuse_if_running(folder)
    recipe = folder.read_recipe()
    folder.clear_cancel()
    return backend.launch(LaunchJob(folder.path, recipe, kind="resume"))


__all__ = [
    "CancelArgs",
    "LogsArgs",
    "RunArgs",
    "StatusArgs",
    "backend_of",
    "cmd_cancel",
    "cmd_logs",
    "cmd_resume",
    "cmd_status",
    "job_state",
    "print_status",
    "run_dirs",
    "run_row",
]
