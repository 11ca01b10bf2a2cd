"""Submitting tiny runs to the local Slurm test cluster and waiting on their state."""

import json
import subprocess
import time

from tests.conftest import REPO, run_fgrpo
from tests.helpers.runs import BASE_ARGS, train_metrics

SLURM = [
    "--backend",
    "slurm",
    "--launch.nodes",
    "2",
    "--launch.procs-per-node",
    "2",
    "--launch.time-limit",
    "00:30:00",
    "--launch.signal-delay-s",
    "30",
]


def submit(tiny_model_dir, runs, steps, *extra, name="run"):
    res = run_fgrpo(
        "launch",
        str(REPO / "recipes" / "tiny.py"),
        "--model.path",
        str(tiny_model_dir),
        "--logging.runs-dir",
        str(runs),
        "--logging.run-name",
        name,
        "--optim.max-steps",
        str(steps),
        *BASE_ARGS,
        *SLURM,
        *extra,
        cwd=runs.parent,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return runs / name, json.loads((runs / name / "jobs.jsonl").read_text().splitlines()[-1])["job_id"]


def status(target) -> list[dict]:
    res = run_fgrpo("status", str(target), "--json", timeout=60)
    assert res.returncode == 0, res.stderr
    return [json.loads(x) for x in res.stdout.splitlines()]


def wait_state(target, states, timeout=400):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = status(target)
        if rows and all(r["state"] in states for r in rows):
            return rows
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {states}: {status(target)}\n{diagnosis(target)}")


def wait_steps(run_dir, n, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").exists() and len(train_metrics(run_dir)) >= n:
            return
        time.sleep(0.5)
    raise AssertionError(f"{run_dir} never reached step {n}\n{diagnosis(run_dir)}")


def diagnosis(run_dir) -> str:
    """What a timed-out wait saw: the run's status and jobs, the cluster's queue and the logs' tails
    (an intermittent hang is otherwise undiagnosable after the fact)."""
    parts = []
    logs = [["logs", str(run_dir), "--rank", str(r)] for r in range(4)]  # SLURM: 2 nodes x 2 tasks
    for cmd in (["status", str(run_dir), "--json"], *logs):
        res = run_fgrpo(*cmd, timeout=60)
        parts.append(f"$ fgrpo {' '.join(cmd)} (exit {res.returncode})\n{res.stdout[-3000:]}{res.stderr[-1500:]}")
    for cmd in (["squeue", "-o", "%i %T %R %M %N"], ["ps", "-eo", "pid,ppid,stat,etime,args"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        lines = [x for x in out.stdout.splitlines() if cmd[0] == "squeue" or "fgrpo" in x or "submitit" in x]
        parts.append(f"$ {cmd[0]}\n" + "\n".join(lines) + out.stderr)
    if (run_dir / "jobs.jsonl").exists():
        parts.append(f"jobs.jsonl:\n{(run_dir / 'jobs.jsonl').read_text()[-2000:]}")
    return "\n".join(parts)
