"""Every way a run ends is recorded truthfully in status.json, and nothing completed is lost.

Each test launches the tiny recipe through the CLI, as a user would, and makes it end one way:
a reward that raises, a NaN reward, a trainer killed with SIGKILL, a full disk, a read-only
checkpoint folder.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from fgrpo.processes import ProcessId
from fgrpo.run_folder import RunFolder
from tests.conftest import REPO, run_fgrpo
from tests.helpers import present
from tests.helpers.faulty import small_disk
from tests.helpers.runs import tiny_launch_args as launch_args
from tests.helpers.runs import wait_for

ENV = {"PYTHONPATH": str(REPO)}


def status_row(run_dir):
    res = run_fgrpo("status", str(run_dir), "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[0])


@pytest.mark.parametrize("mode", ["raise", "not-finite"])
def test_failing_reward_records_failed_and_keeps_the_last_completed_step(tiny_model_dir, tmp_path, mode):
    # Calls: 1 held-out evaluation, then 2 per step; the 6th call is step 3's first micro-batch.
    res = run_fgrpo(
        *launch_args(
            tiny_model_dir,
            tmp_path / "runs",
            5,
            "--rewards.0.name",
            "tests.helpers.faulty:flaky",
            "--rewards.0.args",
            "fail_at",
            "6",
            "mode",
            mode,
        ),
        cwd=tmp_path,
        env=ENV,
        timeout=300,
    )
    run = RunFolder(tmp_path / "runs" / "run")
    assert res.returncode == 1, res.stdout + res.stderr  # a failure, not a bad recipe (2)
    status = run.read_status()
    assert status["state"] == "failed"
    want = "flaky reward gave up at call 6" if mode == "raise" else "returned non-finite scores"
    assert want in status["reason"] and "reward scoring failed" in status["reason"]
    assert (
        present(run.latest_checkpoint(), "checkpoint")[0] == 2
    )  # steps 1-2 completed; saved although the interval is 1000
    assert [r["step"] for r in run.read_metrics("train")] == [1, 2]
    row = status_row(run.path)
    assert row["run_state"] == "failed" and want in row["reason"]


def test_sigkilled_trainer_shows_as_killed(tiny_model_dir, tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fgrpo", *launch_args(tiny_model_dir, runs, 400)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    run = RunFolder(runs / "run")
    try:
        wait_for(lambda: len(run.read_metrics("train")) >= 1, what="step 1")
        trainer = ProcessId.parse(present(run.read_launch(), "launch.json")["pids"][0])
        assert run.read_status()["state"] == "running"
        os.kill(trainer.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert run.read_status()["state"] == "running"  # what the killed trainer left behind
    row = status_row(run.path)
    assert row["run_state"] == "killed" and "is gone" in row["reason"], row
    assert run.read_status()["state"] == "killed"  # recorded, for every later reader


@pytest.mark.parametrize("fault", ["disk-full", "read-only"])
def test_failed_save_says_why_removes_the_partial_and_the_next_launch_works(tiny_model_dir, tmp_path, fault):
    runs = tmp_path / "runs"
    ckpts = runs / "run" / "checkpoints"
    args = launch_args(tiny_model_dir, runs, 2, "--checkpoint.interval", "1")
    with small_disk(ckpts, "4k", read_only=fault == "read-only") as mounted:
        if not mounted:
            pytest.skip("mounting a small tmpfs needs root (the suite's CI runs as root)")
        res = run_fgrpo(*args, cwd=tmp_path, env=ENV, timeout=300)
        assert res.returncode == 1, res.stdout + res.stderr
        status = RunFolder(runs / "run").read_status()
        assert status["state"] == "failed"
        want = "no space left on device" if fault == "disk-full" else "Read-only file system"
        assert want in status["reason"] and "checkpoint step-1 not saved" in status["reason"], status
        assert want in res.stdout + res.stderr  # the launcher shows rank 0's output
        if fault == "disk-full":
            assert not (ckpts / ".step-1.partial").exists()  # it would keep the disk full
    # Space again (the mount is gone): the same command trains from the start and completes.
    res = run_fgrpo(*args, cwd=tmp_path, env=ENV, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert RunFolder(runs / "run").read_status()["state"] == "completed"
