"""Stalls are visible and bounded: `fgrpo status` says how long ago the last step finished and
calls a quiet run stalled, writing nothing; the first failure of a job stays in status.json; the
process group's timeout is the recipe's and names its field. (A stopped rank of a real two-process
run: tests/distributed/test_resilience.py.)"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

from fgrpo.processes import ProcessId, is_stopped
from fgrpo.recipe.config import LaunchConfig, Recipe, replace
from fgrpo.run_folder import RunFolder
from fgrpo.run_folder.status import liveness, next_beat
from fgrpo.trainer.entry import failure_reason, record_failure
from launchers.local import LocalBackend, free_port
from tests.conftest import REPO
from tests.helpers import present

ME = str(ProcessId.of())


def running_run(tmp_path, timeout_s=60.0, started_ago=0.0):
    """A run folder whose trainer (this process, holding its lock) says running."""
    folder = RunFolder(tmp_path / "run")
    folder.write_recipe(replace(Recipe(), launch=replace(LaunchConfig(), collective_timeout_s=timeout_s)))
    folder.write_status("running")
    status = json.loads((folder.path / "status.json").read_text())
    (folder.path / "status.json").write_text(json.dumps({**status, "time": time.time() - started_ago}))
    lock = folder.lock()
    lock.acquire({"backend": "test", "job_id": "-", "host": "here", "pid": os.getpid()})
    return folder, lock


def fake_beat(folder, step, ago, longest_gap_s=5.0, owner=ME):
    (folder.path / "heartbeat.json").write_text(
        json.dumps({"step": step, "time": time.time() - ago, "longest_gap_s": longest_gap_s, "owner": owner})
    )


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.path.iterdir() if p.is_file()}


def test_status_shows_the_last_step_and_a_stall_and_writes_nothing(tmp_path):
    from fgrpo.cli.runs import print_status, run_row

    folder, lock = running_run(tmp_path, timeout_s=60)  # stalled after 2 x 60 s without a step
    try:
        fake_beat(folder, 7, ago=30)
        before = snapshot(folder)
        row = run_row(folder.path)
        assert row["run_state"] == "running" and "last step 30 s ago (step 7)" in row["reason"], row
        assert snapshot(folder) == before
        fake_beat(folder, 7, ago=300)
        before = snapshot(folder)
        row = run_row(folder.path)
        assert row["run_state"] == "stalled" and "last step 5 min ago (step 7)" in row["reason"], row
        assert "stalled: no step for over 2 min" in row["reason"] and row["since_step_s"] >= 300
        assert snapshot(folder) == before  # shown, never recorded
        assert folder.read_status()["state"] == "running"
        print_status(folder.path)  # the table says so too, and still writes nothing
        assert snapshot(folder) == before
    finally:
        lock.release()


def test_before_its_first_step_a_job_is_timed_from_its_start(tmp_path):
    from fgrpo.cli.runs import run_row

    folder, lock = running_run(tmp_path, timeout_s=60, started_ago=90)
    try:
        fake_beat(folder, 40, ago=5, owner="elsewhere:1:1")  # a previous job's beat: not this job's step
        row = run_row(folder.path)
        assert row["run_state"] == "running" and "no step yet: started 90 s ago" in row["reason"], row
        (folder.path / "status.json").write_text(json.dumps({**folder.read_status(), "time": time.time() - 600}))
        assert run_row(folder.path)["run_state"] == "stalled"  # 600 s > 2 x 60 s
        fake_beat(folder, 40, ago=5, longest_gap_s=400, owner="elsewhere:1:1")  # that job's steps took 400 s
        assert run_row(folder.path)["run_state"] == "running"  # 600 s < 2 x 400 s
    finally:
        lock.release()


def test_stall_threshold_is_the_longer_of_the_timeout_and_the_longest_gap():
    status = {"state": "running", "time": 0.0, "owner": ME}
    beat = {"step": 3, "time": 1000.0, "longest_gap_s": 100.0, "owner": ME}  # e.g. a slow evaluation
    assert present(liveness(status, beat, 60.0, now=1150.0), "liveness").stall_after_s == 200.0
    assert not present(liveness(status, beat, 60.0, now=1150.0), "liveness").stalled
    assert present(liveness(status, beat, 60.0, now=1201.0), "liveness").stalled
    assert liveness({**status, "state": "failed"}, beat, 60.0, now=5000.0) is None


def test_heartbeat_gaps_count_within_one_job_only():
    first = next_beat(None, 1, 100.0, ME)
    second = next_beat(first, 2, 130.0, ME)
    third = next_beat(second, 3, 140.0, ME)
    assert (first["longest_gap_s"], second["longest_gap_s"], third["longest_gap_s"]) == (0.0, 30.0, 30.0)
    assert next_beat(third, 4, 900.0, "another:job:1")["longest_gap_s"] == 0.0  # a new job's start is loading


def test_a_later_error_on_another_rank_does_not_replace_the_first_failure(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    started = time.time()
    monkeypatch.setenv("RANK", "0")
    record_failure(folder, "ValueError: the real error", started)
    monkeypatch.setenv("RANK", "1")  # gloo's error once rank 0 has left the process group
    record_failure(folder, "RuntimeError: Connection closed by peer [127.0.0.1]:4242", started)
    status = folder.read_status()
    assert status["state"] == "failed" and status["reason"] == "ValueError: the real error" and status["rank"] == 0


def test_a_cause_replaces_a_consequence_and_a_new_job_replaces_an_old_failure(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    monkeypatch.setenv("RANK", "1")
    record_failure(folder, "an old job's failure", started=0.0)
    status = folder.read_status()
    (folder.path / "status.json").write_text(json.dumps({**status, "time": status["time"] - 100}))
    started = time.time() - 10  # this job started after that failure
    monkeypatch.setenv("RANK", "0")
    record_failure(folder, "RewardError: reward scoring failed on another rank", started, consequence=True)
    assert folder.read_status()["reason"].endswith("on another rank")
    monkeypatch.setenv("RANK", "1")
    record_failure(folder, "RewardError: reward scoring failed: boom", started)
    monkeypatch.setenv("RANK", "0")
    record_failure(folder, "RewardError: reward scoring failed on another rank", started, consequence=True)
    assert folder.read_status()["reason"] == "rank 1: RewardError: reward scoring failed: boom"


def test_a_process_group_timeout_names_the_recipe_field():
    gloo = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 20000ms for recv operation")
    assert failure_reason(gloo, 20.0).startswith("a collective waited launch.collective_timeout_s = 20 s")
    wrapped = RuntimeError("checkpoint step-3 not saved")
    wrapped.__cause__ = gloo
    assert "launch.collective_timeout_s" in failure_reason(wrapped, 20.0)
    closed = RuntimeError("Application timeout caused pair closure")  # the next collective after a timeout
    assert "launch.collective_timeout_s = 20 s" in failure_reason(closed, 20.0)
    http = RuntimeError("reward scoring failed: ReadTimeout: HTTPConnectionPool: Read timed out. (read timeout=600)")
    assert failure_reason(http, 20.0) == f"RuntimeError: {http}"


def test_every_process_group_takes_the_recipe_timeout(tmp_path):
    """The default group and init_device_mesh's sub-groups (torch's own default: 30 min)."""
    code = (
        "import torch, torch.distributed as d\n"
        "from torch.distributed.device_mesh import init_device_mesh\n"
        "from fgrpo.distributed.process_group import init_distributed, shutdown\n"
        "init_distributed(7)\n"
        "mesh = init_device_mesh('cpu', (1, 1), mesh_dim_names=('a', 'b'))\n"
        "groups = (d.group.WORLD, mesh.get_group('a'), mesh.get_group('b'), d.new_group([0]))\n"
        "print([g._get_backend(torch.device('cpu')).options._timeout.total_seconds() for g in groups])\n"
        "shutdown()\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[-2] == "[7.0, 7.0, 7.0, 7.0]", res.stdout


def test_the_local_launcher_does_not_wait_for_a_stopped_rank():
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    stopped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        os.kill(stopped.pid, signal.SIGSTOP)
        while not is_stopped(stopped.pid):
            time.sleep(0.05)
        result = []
        waiter = threading.Thread(target=lambda: result.append(LocalBackend._wait([failed, stopped])), daemon=True)
        waiter.start()
        waiter.join(timeout=30)  # a bound, not a measurement: the grace period is 60 s
        assert result and result[0][0] == 1 and result[0][1] == -signal.SIGKILL, result
    finally:
        for p in (failed, stopped):
            if p.poll() is None:
                p.kill()
                p.wait()
