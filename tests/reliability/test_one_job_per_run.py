"""One job per run folder; a local job is its launcher (host, pid, start time); trainers die with
their launcher; cancel and status say what is true; every rank's output is in the run folder."""

import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fgrpo.processes import ProcessId
from fgrpo.run_folder import RunFolder, RunLock, RunLockedError
from launchers.local import LocalBackend
from tests.conftest import REPO, run_fgrpo
from tests.helpers import present
from tests.helpers.runs import tiny_launch_args as launch_args
from tests.helpers.runs import wait_for


def start(tiny_model_dir, runs, steps):
    runs.mkdir(parents=True, exist_ok=True)
    with open(runs.parent / "launcher.out", "ab") as out:  # a file: an unread pipe would fill and block
        return subprocess.Popen(
            [sys.executable, "-m", "fgrpo", *launch_args(tiny_model_dir, runs, steps)],
            cwd=runs.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# ----- the lock itself


def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    first, second = RunLock(tmp_path / ".lock"), RunLock(tmp_path / ".lock")
    assert first.acquire({"backend": "slurm", "job_id": "4242", "host": "node7", "pid": 99})
    assert second.probe() == "held"
    with pytest.raises(RunLockedError, match=r"slurm job 4242 \(host node7, pid 99"):
        second.acquire({"backend": "local", "job_id": "x", "host": "h", "pid": 1})
    first.release()
    assert second.probe() == "free" and second.acquire({"backend": "local"})


def test_lock_dies_with_its_holder(tmp_path):
    code = (
        "import sys, time; from fgrpo.run_folder import RunLock; "
        f"RunLock({str(tmp_path / '.lock')!r}).acquire({{'backend': 'local'}}); "
        "print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert present(holder.stdout, "stdout pipe").readline().strip() == "held"
    assert RunLock(tmp_path / ".lock").probe() == "held"
    holder.kill()  # SIGKILL: no clean-up runs
    holder.wait()
    assert RunLock(tmp_path / ".lock").probe() == "free"


def test_filesystem_without_locks_runs_unlocked(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = RunLock(tmp_path / ".lock")
    assert lock.acquire({"backend": "local"}) is False and not lock.supported
    assert lock.probe() == "unknown"


def hold_lock(lock_path, seconds):
    """A process that holds the run's lock for `seconds`, then exits (a trainer saving after its
    job was cancelled)."""
    code = (
        "import sys, time; from fgrpo.run_folder import RunLock; "
        f"RunLock({str(lock_path)!r}).acquire({{'backend': 'local'}}); print('held', flush=True); time.sleep({seconds})"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert present(holder.stdout, "stdout pipe").readline().strip() == "held"
    return holder


def test_resume_waits_for_an_ended_jobs_trainer_to_let_go(tmp_path):
    """Slurm reports CANCELLED as soon as it signals the job, while its trainer still saves: resume
    waits (bounded) for the lock instead of refusing, and refuses once the grace is over."""
    from fgrpo.cli.launch import refuse_if_running

    folder = RunFolder(tmp_path / "run")
    folder.record_job("local", str(ProcessId(ProcessId.of().host, 2**22 + 7, 1)), "launch")  # beyond pid_max
    assert LocalBackend().state(present(folder.latest_job(), "job")["job_id"]) == "EXITED"
    holder = hold_lock(folder.path / ".lock", 4)
    t0 = time.monotonic()
    refuse_if_running(folder, grace_s=60)
    assert holder.wait(timeout=10) == 0 and time.monotonic() - t0 >= 2  # it waited for the holder to go
    holder = hold_lock(folder.path / ".lock", 60)
    try:
        with pytest.raises(RunLockedError, match="is in use by local"):
            refuse_if_running(folder, grace_s=2)
    finally:
        holder.kill()
        holder.wait()


# ----- through the CLI


def test_second_launch_is_refused_while_the_first_trains_and_cancel_stops_it(tiny_model_dir, tmp_path):
    runs = tmp_path / "runs"
    first = start(tiny_model_dir, runs, 400)
    run = RunFolder(runs / "run")
    try:
        wait_for(lambda: len(run.read_metrics("train")) >= 1, what="step 1")
        launcher = ProcessId.parse(present(run.latest_job(), "job")["job_id"])
        assert launcher.pid == first.pid and launcher.start
        res = run_fgrpo(*launch_args(tiny_model_dir, runs, 400), cwd=tmp_path)
        assert res.returncode == 3, res.stdout + res.stderr
        assert (
            f"is in use by local job {launcher}" in res.stderr
            and f"pid {present(run.read_launch(), 'launch.json')['pids'][0].split(':')[1]}" in res.stderr
        )
        res = run_fgrpo("resume", str(run.path), cwd=tmp_path)
        assert res.returncode == 3 and "is in use by local job" in res.stderr
        assert len(run.jobs()) == 1  # nothing was submitted
        res = run_fgrpo("cancel", str(run.path), timeout=200)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "cancelled local job" in res.stdout and "newest checkpoint: step" in res.stdout
        assert first.wait(timeout=60) == 75
    finally:
        if first.poll() is None:
            first.kill()
    assert run.read_status()["state"] == "cancelled"
    steps = [r["step"] for r in run.read_metrics("train")]
    assert steps == list(range(1, len(steps) + 1))  # every step once: one trainer wrote it
    assert present(run.latest_checkpoint(), "checkpoint")[0] == steps[-1]
    # Nothing runs now: cancel says so, with a non-zero code, and changes nothing.
    res = run_fgrpo("cancel", str(run.path))
    assert res.returncode == 1 and "nothing to cancel" in res.stderr and "is not running (EXITED)" in res.stderr
    assert run.read_status()["state"] == "cancelled"


def test_trainers_stop_and_save_when_the_launcher_is_killed(tiny_model_dir, tmp_path):
    runs = tmp_path / "runs"
    launcher = start(tiny_model_dir, runs, 400)
    run = RunFolder(runs / "run")
    wait_for(lambda: len(run.read_metrics("train")) >= 1, what="step 1")
    trainer = ProcessId.parse(present(run.read_launch(), "launch.json")["pids"][0])
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    wait_for(lambda: not trainer.alive(), timeout=120, what="the orphaned trainer to stop")
    status = run.read_status()
    assert status["state"] == "stopped" and "its launcher exited" in status["reason"], status
    done = run.read_metrics("train")[-1]["step"]
    assert present(run.latest_checkpoint(), "checkpoint")[0] == done  # the last completed step was saved
    res = run_fgrpo("status", str(run.path), "--json")
    assert '"state": "EXITED"' in res.stdout and '"run_state": "stopped"' in res.stdout
    # The same command continues from there; `fgrpo logs` shows rank 0's output of the run.
    res = run_fgrpo(*launch_args(tiny_model_dir, runs, done + 1), cwd=tmp_path)
    assert res.returncode == 0 and f"resumed from {run.checkpoints}/step-{done}" in res.stdout, res.stdout + res.stderr
    logs = run_fgrpo("logs", str(run.path))
    assert logs.returncode == 0 and f"step {done + 1:>5}" in logs.stdout and "resumed from" in logs.stdout


def test_a_reused_pid_is_never_taken_for_the_job(tmp_path):
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        real = ProcessId.of(stranger.pid)
        old_job = str(ProcessId(real.host, real.pid, real.start - 1))  # same pid, started earlier: another process
        backend = LocalBackend()
        assert backend.state(str(real)) == "RUNNING"
        assert backend.state(old_job) == "EXITED"
        backend.cancel(old_job)
        time.sleep(0.5)
        assert stranger.poll() is None  # not signalled
        assert backend.state(f"elsewhere:{real.pid}:{real.start}").startswith("UNKNOWN")
    finally:
        stranger.kill()


def test_cancel_of_a_local_sweep_point_touches_only_that_point(tiny_model_dir, tmp_path):
    """Every point of a local sweep is recorded with the sweep process's job id: cancelling a
    finished point must not stop the point training now, nor relabel the finished one; cancelling a
    waiting point marks it and the sweep skips it."""
    import signal
    import subprocess
    import sys

    from tests.helpers.runs import BASE_ARGS, wait_for

    runs = tmp_path / "runs"
    args = [
        sys.executable,
        "-m",
        "fgrpo",
        "sweep",
        str(REPO / "recipes" / "tiny.py"),
        "--grid",
        "optim.lr=0.001,0.002,0.003",
        "--model.path",
        str(tiny_model_dir),
        "--logging.runs-dir",
        str(runs),
        *BASE_ARGS,
        "--optim.max-steps",
        "6",
        "--checkpoint.interval",
        "1000",
    ]
    sweep = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:

        def point(lr: str) -> Path:  # named by its overrides (lr, ...): found by its lr
            wait_for(lambda: list(runs.glob(f"tiny__*lr={lr}_*")), timeout=120, what=f"point lr={lr}")
            return next(runs.glob(f"tiny__*lr={lr}_*"))

        first, second, third = point("0.001"), point("0.002"), point("0.003")
        wait_for(lambda: RunFolder(second).lock().probe() == "held", timeout=300, what="the second point to start")
        res = run_fgrpo("cancel", str(first), cwd=tmp_path, timeout=120)
        assert res.returncode == 1 and "is completed" in res.stderr, res.stderr
        res = run_fgrpo("cancel", str(third), cwd=tmp_path, timeout=120)
        assert res.returncode == 0 and "before it started" in res.stdout, res.stdout + res.stderr
        out, _ = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert sweep.returncode == 0, out[-3000:]
    assert RunFolder(first).read_status()["state"] == "completed"
    assert RunFolder(second).read_status()["state"] == "completed"  # not stopped by the cancels
    assert RunFolder(second).progress()["step"] == 6
    assert RunFolder(third).read_status()["state"] == "cancelled" and not (third / "metrics.jsonl").exists()
