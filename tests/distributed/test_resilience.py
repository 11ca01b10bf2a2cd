"""Preemption and crashes on several processes: nothing completed is lost, nothing is corrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from fgrpo.run_folder import RunFolder, complete_checkpoints
from tests.conftest import REPO
from tests.helpers.runs import BASE_ARGS, launch_tiny, train_metrics, trained_weights


def start_tiny(tiny_model_dir, runs, procs, steps, name="run", *extra):
    args = [
        sys.executable,
        "-m",
        "fgrpo",
        "launch",
        str(REPO / "recipes" / "tiny.py"),
        "--model.path",
        str(tiny_model_dir),
        "--logging.runs-dir",
        str(runs),
        "--logging.run-name",
        name,
        "--launch.procs-per-node",
        str(procs),
        "--optim.max-steps",
        str(steps),
        *BASE_ARGS,
        *extra,
    ]
    return subprocess.Popen(
        args, cwd=runs.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def wait_for(predicate, timeout=240, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting")


def steps_done(run_dir):
    path = run_dir / "metrics.jsonl"
    return len(train_metrics(run_dir)) if path.exists() else 0


def test_sigterm_to_one_rank_then_resume_is_bitwise_identical(tiny_model_dir, tmp_path):
    straight = launch_tiny(tiny_model_dir, tmp_path / "a" / "runs", 2, 6)
    runs = tmp_path / "b" / "runs"
    runs.mkdir(parents=True)
    proc = start_tiny(tiny_model_dir, runs, 2, 6)
    run = runs / "run"
    wait_for(lambda: steps_done(run) >= 2)
    from fgrpo.processes import ProcessId

    pids = [ProcessId.parse(p).pid for p in json.loads((run / "launch.json").read_text())["pids"]]
    os.kill(pids[1], signal.SIGTERM)  # one rank only, as a node-local preemption would
    time.sleep(0.05)
    os.kill(pids[1], signal.SIGTERM)  # a second signal during the stop/save changes nothing
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 75, out
    stopped_at = steps_done(run)
    assert stopped_at < 6, "the run finished before the signal: nothing was tested"
    latest = RunFolder(run).latest_checkpoint()
    assert latest is not None and latest[0] == stopped_at
    resumed = launch_tiny(tiny_model_dir, runs, 2, 6)
    assert [m["step"] for m in train_metrics(resumed)] == list(range(1, 7))
    a, b = trained_weights(straight), trained_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"


def test_resume_on_fewer_processes(tiny_model_dir, tmp_path):
    """Saved at dp_shard=4, resumed at dp_shard=2: DCP reshards; training continues the same."""
    four = launch_tiny(tiny_model_dir, tmp_path / "a" / "runs", 4, 4)
    runs = tmp_path / "b" / "runs"
    launch_tiny(tiny_model_dir, runs, 4, 2)
    resumed = launch_tiny(tiny_model_dir, runs, 2, 4)
    assert [m["step"] for m in train_metrics(resumed)] == [1, 2, 3, 4]
    a, b = trained_weights(four), trained_weights(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=k)


def test_kill9_during_checkpoint_save_keeps_the_previous_one(tiny_model_dir, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    proc = start_tiny(tiny_model_dir, runs, 2, 200)
    ckpts = runs / "run" / "checkpoints"

    def saving():  # a save in progress: its .partial folder exists (N >= 3, so N - 1 is complete)
        found = [p for p in ckpts.glob(".step-*.partial")] if ckpts.exists() else []
        return next((p for p in found if int(p.name.split("-")[1].split(".")[0]) >= 3), None)

    partial = wait_for(saving, interval=0.001)
    os.killpg(proc.pid, signal.SIGKILL)  # launcher and every rank, mid-save
    proc.wait(timeout=30)
    n = int(partial.name.split("-")[1].split(".")[0])
    latest = RunFolder(runs / "run").latest_checkpoint()
    assert latest is not None and latest[0] in (n - 1, n)  # n only if the rename beat the kill
    # every folder that looks complete is complete: it loads
    for step, _ in complete_checkpoints(ckpts):
        trained_weights(runs / "run", step)
    resumed = launch_tiny(tiny_model_dir, runs, 2, latest[0] + 1)
    assert train_metrics(resumed)[-1]["step"] == latest[0] + 1


def test_a_stopped_rank_fails_the_run_after_the_collective_timeout(tiny_model_dir, tmp_path):
    """SIGSTOP one of two ranks: the other fails in its next collective after
    launch.collective_timeout_s (it used to wait torch's 30 minutes), the launcher does not wait
    for the stopped rank, and status.json says failed, naming the field."""
    runs = tmp_path / "runs"
    runs.mkdir()
    proc = start_tiny(tiny_model_dir, runs, 2, 500, "run", "--launch.collective-timeout-s", "20")
    run = runs / "run"
    try:
        wait_for(lambda: steps_done(run) >= 1)
        from fgrpo.processes import ProcessId

        stopped = ProcessId.parse(json.loads((run / "launch.json").read_text())["pids"][1]).pid
        os.kill(stopped, signal.SIGSTOP)
        out, _ = proc.communicate(timeout=150)  # a bound, not a measurement: the old code hung 30 min
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 1, out[-4000:]
    status = RunFolder(run).read_status()
    assert status["state"] == "failed", status
    assert "launch.collective_timeout_s = 20 s" in status["reason"] and status["rank"] == 0, status
    assert steps_done(run) < 500
