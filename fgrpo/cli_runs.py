"""Run management: `fgrpo status`, `logs`, `cancel`, `resume` (any backend; the run folder records
which backend and which job ids belong to it)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

from launchers.base import is_active


def _backend_of(run_dir: Path):
    from launchers import get_backend
    from launchers.records import latest_job

    job = latest_job(run_dir)
    if job is None:
        raise ValueError(f"{run_dir} has no recorded job (was it launched with fgrpo launch?)")
    return get_backend(job["backend"]), job


def run_dirs(target: Path) -> list[Path]:
    """A run folder, a sweep folder (sweep.json lists its runs) or a folder of runs."""
    if (target / "recipe.json").exists():
        return [target]
    if (target / "sweep.json").exists():
        return [Path(p) for p in json.loads((target / "sweep.json").read_text())["runs"]]
    if target.is_dir():
        return sorted(p for p in target.iterdir() if (p / "recipe.json").exists())
    raise ValueError(f"{target} is not a run folder, a sweep folder or a folder of runs")


def run_row(run_dir: Path) -> dict:
    from fgrpo.recipe.io import load_recipe_json
    from launchers.records import latest_job, progress, server_jobs

    p = progress(run_dir)
    job = latest_job(run_dir)
    state = _state(job) if job else "-"
    servers = server_jobs(run_dir)  # a reward server the backend started beside the training job
    server = f"job {servers[-1]['job_id']} {_state(servers[-1])}" if servers else None
    max_steps = load_recipe_json(run_dir / "recipe.json").optim.max_steps
    return {"run": run_dir.name, "backend": job["backend"] if job else "-", "job": job["job_id"] if job else "-",
            "state": state, "run_state": p["status"].get("state", "-"), "step": p["step"], "max_steps": max_steps,
            "reward": p["reward"], "heldout": p["heldout"], "checkpoint": p["checkpoint"],
            "reason": p["status"].get("reason", ""), "reward_server": server}


def _state(job: dict) -> str:
    try:
        from launchers import get_backend

        return get_backend(job["backend"]).state(job["job_id"])
    except (OSError, ValueError):
        return "UNKNOWN"


@dataclass
class StatusArgs:
    target: tyro.conf.Positional[str] = "runs"
    """A run folder, a sweep folder, or a folder of runs."""
    json: bool = False
    """Print JSON lines instead of a table."""


def cmd_status(argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    a = tyro.cli(StatusArgs, args=argv, prog="fgrpo status")
    rows = [run_row(d) for d in run_dirs(Path(a.target))]
    # Sweeps are read as a ranking: best held-out reward first.
    rows.sort(key=lambda r: -(r["heldout"] if r["heldout"] is not None else float("-inf")))
    if a.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    table = Table(title=f"fgrpo runs in {a.target}")
    for col in ("run", "backend", "job", "state", "run state", "step", "reward", "held-out", "checkpoint", "note"):
        table.add_column(col)
    fmt = lambda v: "-" if v is None else f"{v:+.4f}"  # noqa: E731
    for r in rows:
        note = "; ".join(x for x in (r["reason"], r["reward_server"] and f"reward server {r['reward_server']}") if x)
        table.add_row(r["run"], r["backend"], r["job"], r["state"], r["run_state"], f"{r['step']}/{r['max_steps']}",
                      fmt(r["reward"]), fmt(r["heldout"]), str(r["checkpoint"] or "-"), note)
    Console(width=200).print(table)
    return 0


@dataclass
class LogsArgs:
    run: tyro.conf.Positional[str]
    follow: bool = False
    """Keep printing new output until the job ends (-f)."""
    rank: int = 0
    """Which process's output."""


def cmd_logs(argv: list[str]) -> int:
    argv = ["--follow" if x == "-f" else x for x in argv]
    a = tyro.cli(LogsArgs, args=argv, prog="fgrpo logs")
    run_dir = Path(a.run).absolute()
    backend, job = _backend_of(run_dir)
    if hasattr(backend, "stream_logs"):  # Kubernetes: the API streams the log of the rank's pod
        from fgrpo.recipe.io import load_recipe_json

        pod = a.rank // load_recipe_json(run_dir / "recipe.json").procs_per_node
        for line in backend.stream_logs(job["job_id"], pod, a.follow):
            print(line, end="" if line.endswith("\n") else "\n", flush=True)
        return 0
    paths = [p for p in backend.log_paths(run_dir, job["job_id"], a.rank) if p.exists()]
    if not paths:
        print(f"no output yet for rank {a.rank} of job {job['job_id']}", file=sys.stderr)
        return 1
    offsets = {p: 0 for p in paths}
    while True:
        for p in paths:
            with p.open() as f:
                f.seek(offsets[p])
                sys.stdout.write(f.read())
                offsets[p] = f.tell()
        sys.stdout.flush()
        if not a.follow or not is_active(backend.state(job["job_id"])):
            return 0
        time.sleep(1.0)


@dataclass
class RunArg:
    run: tyro.conf.Positional[str]


def cmd_cancel(argv: list[str]) -> int:
    from fgrpo.trainer.entry import write_status

    run_dir = Path(tyro.cli(RunArg, args=argv, prog="fgrpo cancel").run).absolute()
    from launchers.records import request_cancel, server_jobs

    backend, job = _backend_of(run_dir)
    request_cancel(run_dir, job["job_id"])
    backend.cancel(job["job_id"])
    write_status(run_dir, "cancelled", f"fgrpo cancel of job {job['job_id']}")
    print(f"cancelled {backend.name} job {job['job_id']} of {run_dir.name}")
    for server in server_jobs(run_dir):  # a reward server started beside it goes too
        if server["backend"] == backend.name and is_active(backend.state(server["job_id"])):
            backend.cancel(server["job_id"])
            print(f"cancelled its reward server, {backend.name} job {server['job_id']}")
    return 0


def cmd_resume(argv: list[str]) -> int:
    """Submit the run again with its own recipe; it continues from its newest checkpoint."""
    from fgrpo.recipe.io import load_recipe_json
    from launchers import LaunchJob

    run_dir = Path(tyro.cli(RunArg, args=argv, prog="fgrpo resume").run).absolute()
    backend, job = _backend_of(run_dir)
    if is_active(backend.state(job["job_id"])):
        raise ValueError(f"{run_dir.name}: job {job['job_id']} is still {backend.state(job['job_id'])}; "
                         "cancel it first")
    from launchers.records import clear_cancel

    clear_cancel(run_dir)
    return backend.launch(LaunchJob(run_dir, load_recipe_json(run_dir / "recipe.json"), kind="resume"))
