"""The local launcher's forked ranks (fgrpo.processes.fork_call): a child that behaves as a
process of its own, started with the launcher's imports.

Every launched test on this CPU machine runs its ranks this way; these check the handle itself:
exit codes, environment, output, a raising target, signals, and two threads polling one child
(the launcher's console thread and its wait loop both do).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import pytest

from fgrpo.processes import fork_call


def test_child_gets_env_log_and_exit_code(tmp_path):
    log = tmp_path / "rank.log"
    log.write_text("earlier launch\n")

    def target() -> int:
        print("hello from", os.environ["RANK"])
        print("to stderr", file=sys.stderr)
        return 7

    child = fork_call(target, {"RANK": "3"}, log)
    assert child.wait(timeout=30) == 7 and child.returncode == 7
    assert "RANK" not in os.environ  # only the child's environment changed
    assert log.read_text().splitlines() == ["earlier launch", "hello from 3", "to stderr"]


def test_a_raising_target_exits_1_with_its_traceback(tmp_path):
    log = tmp_path / "rank.log"

    def target() -> int:
        raise RuntimeError("boom in the child")

    assert fork_call(target, {}, log).wait(timeout=30) == 1
    text = log.read_text()
    assert "Traceback" in text and "RuntimeError: boom in the child" in text


def test_sys_exit_code_and_signals(tmp_path):
    assert fork_call(lambda: sys.exit(75), {}, tmp_path / "a.log").wait(timeout=30) == 75

    def sleeper() -> int:
        print("ready")
        time.sleep(60)
        return 0

    # The parent's SIGTERM handler (a launcher forwards signals) is not the child's: it dies of SIGTERM.
    old = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        child = fork_call(sleeper, {}, tmp_path / "b.log")  # its handlers are reset before sleeper runs
    finally:
        signal.signal(signal.SIGTERM, old)
    deadline = time.time() + 30
    while not (tmp_path / "b.log").exists() or "ready" not in (tmp_path / "b.log").read_text():
        assert time.time() < deadline, "the child never started"
        time.sleep(0.05)
    assert child.poll() is None
    child.terminate()
    assert child.wait(timeout=30) == -signal.SIGTERM
    child.kill()  # an exited child: nothing is sent, nothing raised


def test_concurrent_polls_agree_on_the_exit_code(tmp_path, threads=4):
    def quick() -> int:
        time.sleep(0.3)
        return 0

    for _ in range(5):
        child = fork_call(quick, {}, tmp_path / "c.log")
        seen: list[int | None] = []

        def poll_until_done(child=child, seen=seen):
            while (code := child.poll()) is None:
                pass
            seen.append(code)

        pollers = [threading.Thread(target=poll_until_done) for _ in range(threads)]
        for t in pollers:
            t.start()
        for t in pollers:
            t.join(timeout=30)
        assert seen == [0] * threads  # never a lost status (255) from a second reaper


def test_wait_times_out(tmp_path):
    import subprocess

    child = fork_call(lambda: time.sleep(5) or 0, {}, tmp_path / "d.log")
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.2)
    child.kill()
    assert child.wait(timeout=30) == -signal.SIGKILL


def test_forked_ranks_train_as_rank_processes_do(tiny_model_dir, tmp_path):
    """On this CPU build the launcher forks its ranks; FGRPO_FORK_RANKS=0 starts `fgrpo train`
    processes instead (what GPU ranks always are). Both train the same step bitwise."""
    from tests.helpers.runs import launch_tiny, train_metrics

    records = {}
    for fork in ("1", "0"):
        run = launch_tiny(tiny_model_dir, tmp_path / f"fork{fork}", 2, 1, env={"FGRPO_FORK_RANKS": fork})
        launch = json.loads((run / "launch.json").read_text())
        assert launch["ranks"] == ("forked" if fork == "1" else "processes")
        keep = ("reward_mean", "loss", "grad_norm")
        records[fork] = [{k: v for k, v in r.items() if k in keep} for r in train_metrics(run)]
    assert records["1"] and records["1"] == records["0"]
