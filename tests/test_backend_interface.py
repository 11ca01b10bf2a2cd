"""Every backend implements the whole `Backend` interface; local and Slurm logs share one tailer."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time

import pytest

from fgrpo.recipe.io import load_recipe_file
from fgrpo.run_folder import RunFolder
from launchers.base import Backend, LaunchJob, tail_lines
from launchers.k8s.backend import KubernetesBackend
from launchers.local import LocalBackend
from launchers.slurm import SlurmBackend
from tests.conftest import REPO

BACKENDS = [LocalBackend, SlurmBackend, KubernetesBackend]


@pytest.mark.parametrize("cls", BACKENDS)
def test_every_backend_implements_the_whole_interface(cls):
    assert not cls.__abstractmethods__
    assert {
        "describe",
        "launch",
        "submit_array",
        "state",
        "cancel",
        "stream_logs",
        "reward_server_args",
    } <= Backend.__abstractmethods__
    cls()  # instantiable: nothing left abstract


def test_reward_server_args_of_each_backend(tmp_path):
    r = load_recipe_file(REPO / "recipes" / "tiny.py")
    r = dataclasses.replace(r, launch=dataclasses.replace(r.launch, k8s=dataclasses.replace(r.launch.k8s, image="x")))
    job = LaunchJob(tmp_path / "runs" / "r1", r)
    local = LocalBackend().reward_server_command(job)
    assert local[:4] == [sys.executable, "-m", "fgrpo", "reward-server"] and "--watch-pid" in local
    assert SlurmBackend().reward_server_args(job)[:2] == ["--run-dir", str(job.run_dir.resolve())]
    assert "--advertise-host" in KubernetesBackend().reward_server_args(job)


def test_tail_lines_waits_for_whole_lines_and_reads_the_rest_at_the_end(tmp_path):
    log = tmp_path / "rank-1.log"
    log.write_bytes(b"step 1\nstep 2 part")
    running = threading.Event()
    running.set()
    lines = tail_lines([log], follow=True, running=running.is_set, poll_s=0.01)
    assert next(lines) == "step 1\n"

    def writer():
        time.sleep(0.05)
        with log.open("ab") as f:
            f.write(b"ial\nlast, no newline")
        time.sleep(0.05)
        running.clear()

    threading.Thread(target=writer).start()
    assert list(lines) == ["step 2 partial\n", "last, no newline"]
    assert list(tail_lines([log], follow=False, running=lambda: True)) == [
        "step 1\n",
        "step 2 partial\n",
        "last, no newline",
    ]


def test_local_stream_logs(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no output yet for rank 1 of job 123"):
        LocalBackend().stream_logs(folder.path, "123", 1, follow=False)
    folder.logs.mkdir(parents=True)
    folder.rank_log(1).write_text("hello\r progress\nbye\n")
    assert list(LocalBackend().stream_logs(folder.path, "123", 1, follow=False)) == ["hello\r progress\n", "bye\n"]
