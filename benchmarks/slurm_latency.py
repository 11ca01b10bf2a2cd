"""Slurm latency on the local cluster (scripts/slurm-local.sh start): launch -> first step, and a
preemption (USR2) -> first step after the requeued job resumes, with optimizer steps lost, and
where the seconds from the signal to that first step go, and the rollout time saved when the stop
came after the interrupted step's rollouts (kept, and trained from after the resume):

    signal sent -> trainer got it -> stop noticed -> checkpoint saved -> trainer exited ->
    requeue asked -> Slurm: eligible again, job started -> python started -> submitit and the job
    unpickled -> torch imported -> recipe read -> process group up -> trainer imported ->
    model built -> rewards connected -> checkpoint loaded -> first step starts -> first step done

The trainer's side comes from the run folder's timings.jsonl (rank 0's clock; fgrpo.trainer.timeline),
Slurm's from `sacct -D` (whole seconds).

    python benchmarks/slurm_latency.py [--nodes 2] [--procs-per-node 2]

A benchmark, not a test: numbers depend on the machine and the cluster's settings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fgrpo.run_folder import RunFolder  # noqa: E402


def train_records(run: Path) -> list[dict]:
    return RunFolder(run).read_metrics("train")


def sacct_runs(job: str) -> list[dict]:
    """Every run of the job (a requeue is a new run), oldest first: epoch seconds of its times."""
    from datetime import datetime

    out = subprocess.run(
        ["sacct", "-D", "-X", "-n", "-P", "-j", job, "-o", "State,Submit,Eligible,Start,End"],
        capture_output=True,
        text=True,
    ).stdout

    def t(x):
        try:
            return datetime.fromisoformat(x).timestamp()
        except ValueError:
            return None

    return [
        dict(zip(("state", "submit", "eligible", "start", "end"), (f[0], *map(t, f[1:]))))
        for f in (line.split("|") for line in out.splitlines())
        if len(f) == 5
    ]


# (key in the records, what it is, whose seconds they are)
STOP_PHASES = [
    ("signal", "trainer got the signal", "Slurm/OS"),
    ("stop_noticed", "stop noticed (ranks agree at a safe point)", "ours"),
    ("saved", "checkpoint saved", "ours"),
    ("exit", "trainer exited (status: stopped)", "ours"),
    ("requeue", "requeue asked (submitit: scontrol requeue)", "ours"),
]
START_PHASES = [
    ("process_start", "python process started", "Slurm (schedule, srun)"),
    ("job", "submitit + job unpickled", "ours"),
    ("torch_imported", "torch imported", "ours"),
    ("recipe", "recipe read + validated", "ours"),
    ("process_group", "process group up + run lock", "ours"),
    ("imports", "trainer modules imported", "ours"),
    ("model", "model built/loaded, optimizer", "ours"),
    ("rewards", "rewards connected", "ours"),
    ("checkpoint", "checkpoint loaded", "ours"),
    ("first_step_start", "first step starts", "ours"),
    ("first_step", "first step done", "ours"),
]


def breakdown(
    t_sig: float, stop: dict, requeue: dict | None, resumed_job: str, slurm_run: dict | None, start: dict
) -> None:
    rows = [("signal sent (scancel --signal=USR2)", t_sig, "")]
    rows += [(what, stop.get(key), whose) for key, what, whose in STOP_PHASES[:-1]]
    what = f"next job asked ({requeue['how']})" if requeue and requeue.get("how") else STOP_PHASES[-1][1]
    rows.append((what, requeue["time"] if requeue else None, STOP_PHASES[-1][2]))
    if slurm_run:
        how = (requeue or {}).get("how", "")
        # sacct's times are whole seconds: shown, but the durations run between the exact rows.
        rows += [
            (
                f"  (sacct: job {resumed_job} eligible, {'requeue + cred_expire' if how != 'new job' else 'new job'})",
                slurm_run["eligible"],
                None,
            ),
            (f"  (sacct: job {resumed_job} started)", slurm_run["start"], None),
        ]
    rows += [(what, start.get(key), whose) for key, what, whose in START_PHASES]
    print(f"{'phase':<62} {'at (s)':>7} {'took (s)':>8}  whose")
    prev, per_owner = t_sig, {}
    for what, at, whose in rows:
        if at is None:
            print(f"{what:<62} {'-':>7} {'-':>8}  {whose or ''}")
            continue
        if whose is None:
            print(f"{what:<62} {at - t_sig:7.0f} {'':>8}")
            continue
        took = at - prev
        print(f"{what:<62} {at - t_sig:7.2f} {took:8.2f}  {whose}")
        if whose:
            owner = whose.split()[0].split("/")[0]
            per_owner[owner] = per_owner.get(owner, 0.0) + took
        prev = at
    print(
        "total by whose: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in per_owner.items())
        + f"; signal -> first step done {prev - t_sig:.2f} s"
    )


def wait(pred, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise TimeoutError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--procs-per-node", type=int, default=2)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fgrpo-bench-"))
    t0 = time.time()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fgrpo",
            "launch",
            str(REPO / "recipes" / "tiny.py"),
            "--backend",
            "slurm",
            "--launch.nodes",
            str(a.nodes),
            "--launch.procs-per-node",
            str(a.procs_per_node),
            "--logging.runs-dir",
            str(tmp),
            "--optim.max-steps",
            "30",
            "--checkpoint.interval",
            "1000",
            "--eval.interval",
            "1000",
            "--launch.signal-delay-s",
            "30",
        ],
        check=True,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
    )
    run = tmp / "tiny"
    job = json.loads((run / "jobs.jsonl").read_text().splitlines()[-1])["job_id"]
    first = wait(lambda: train_records(run))[0]
    # A record is written when its step ends; subtract its own duration to get the step's start.
    step_time = first["time_rollout"] + first["time_reward"] + first["time_train"]
    print(
        f"launch -> first training step starts: {first['time'] - step_time - t0:.1f} s "
        f"(ends {first['time'] - t0:.1f} s; step takes {step_time:.1f} s)"
    )
    wait(lambda: len(train_records(run)) >= 3)
    t_sig = time.time()
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    before = wait(
        lambda: (
            json.loads((run / "status.json").read_text()).get("state") == "stopped"
            if (run / "status.json").exists()
            else False
        )
        and train_records(run)
    )
    done_before = before[-1]["step"]
    after = wait(lambda: [r for r in train_records(run) if r["time"] > t_sig and r["step"] > done_before])[0]
    after_time = after["time_rollout"] + after["time_reward"] + after["time_train"]
    lost = done_before - (after["step"] - 1)
    print(
        f"USR2 -> first step after resume starts: {after['time'] - after_time - t_sig:.1f} s "
        f"(ends {after['time'] - t_sig:.1f} s)"
    )
    print(
        f"optimizer steps completed before the signal: {done_before}; resumed at step {after['step']}; "
        f"steps lost: {lost}"
    )
    # A stop after the step's rollouts keeps them (fgrpo.run_folder.pending): the resumed job trains
    # that step without rolling out again. Whether it did depends on where in the step USR2 landed.
    if after.get("rollout_resumed"):
        print(
            f"the interrupted step's rollouts were kept: {after['time_rollout']:.2f} s of rollout "
            f"({after['time_rollout'] / max(after_time, 1e-9):.0%} of the step) not repeated"
        )
    else:
        print("the signal arrived before the step's rollouts were complete: nothing to keep, no rollout time saved")
    folder = RunFolder(run)
    start = wait(lambda: [r for r in folder.read_timings("start") if r.get("first_step", 0) > t_sig], 60)[0]
    stop = next((r for r in folder.read_timings("stop") if r.get("exit", 0) > t_sig), {})
    requeue = next((r for r in folder.read_timings("requeue") if r["time"] > t_sig), None)
    # The same job requeued (scontrol requeue), or the next job rank 0 submitted (jobs.jsonl).
    resumed_job = json.loads((run / "jobs.jsonl").read_text().splitlines()[-1])["job_id"]
    slurm_run = next((r for r in sacct_runs(resumed_job) if r["start"] and r["start"] > t_sig - 1), None)
    print()
    breakdown(t_sig, stop, requeue, resumed_job, slurm_run, start)
    # `fgrpo cancel`, not scancel: the trainer takes scancel's SIGTERM as a stop and requeues.
    subprocess.run([sys.executable, "-m", "fgrpo", "cancel", str(run)], stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
