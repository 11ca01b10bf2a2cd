"""Local backend: the recipe's processes on this machine, torchrun-style environment, gloo/NCCL."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from fgrpo.processes import PARENT_ENV, ForkedProcess, ProcessId, fork_call, is_stopped
from fgrpo.run_folder import RunFolder
from fgrpo.trainer.entry import import_rank_modules, rank_main

from .base import Backend, LaunchJob, tail_lines


def forks_ranks() -> bool:
    """Whether this launcher forks its ranks after importing their modules once, instead of
    starting `fgrpo train` processes that each import them (about 8 s of CPU per rank here). On
    Linux with a CPU build of torch only: CUDA does not survive a fork, and so GPU ranks are
    processes of their own. FGRPO_FORK_RANKS=0 turns it off."""
    if os.environ.get("FGRPO_FORK_RANKS", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    import torch

    return torch.version.cuda is None and getattr(torch.version, "hip", None) is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalBackend(Backend):
    name = "local"

    def environments(self, job: LaunchJob, port: int) -> list[dict[str, str]]:
        world = job.world_size
        base = {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world))),
        }
        return [{**base, "RANK": str(r), "LOCAL_RANK": str(r)} for r in range(world)]

    def describe(self, job: LaunchJob) -> str:
        if job.nodes != 1:
            return "the local backend runs on one node; set --launch.nodes 1"
        cmd = " ".join(job.train_command())
        text = f"{job.world_size} local process(es): RANK=0..{job.world_size - 1} WORLD_SIZE={job.world_size} {cmd}"
        if job.recipe.reward_server.launch:
            text += "\nreward server beside them: " + " ".join(self.reward_server_command(job))
        return text

    def launch(self, job: LaunchJob) -> int:
        if job.nodes != 1:
            raise ValueError("launch.nodes: the local backend runs on one node; set --launch.nodes 1")
        folder = RunFolder(job.run_dir)
        folder.clear_cancel()  # a cancel of an earlier launch (nothing is requeued locally)
        folder.logs.mkdir(parents=True, exist_ok=True)
        port = free_port()
        server = self._start_reward_server(job) if job.recipe.reward_server.launch else None
        procs: list[subprocess.Popen | ForkedProcess] = []
        logs = [folder.rank_log(r) for r in range(job.world_size)]
        shown_from = logs[0].stat().st_size if logs[0].exists() else 0  # this launch's part of rank 0's log
        fork = forks_ranks()
        if fork:
            import_rank_modules(job.recipe, job.run_dir.parent)
        for env, log in zip(self.environments(job, port), logs):
            # Every rank writes its whole output (C++ aborts included) to logs/rank-R.log, as on
            # Slurm; the launcher shows rank 0's on its console. FGRPO_PARENT_PID: a trainer
            # stops (saving) when this launcher dies, even by kill -9 (fgrpo.processes.die_with_parent).
            env = {**env, PARENT_ENV: str(os.getpid())}
            if fork:
                procs.append(fork_call(functools.partial(rank_main, job.run_dir), env, log))
                continue
            with open(log, "ab") as out:
                cmd = job.train_command()
                procs.append(subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT))
        me = ProcessId.of()
        folder.write_launch(
            {
                "backend": self.name,
                "started": time.time(),
                "launcher": str(me),
                "pids": [str(ProcessId.of(p.pid)) for p in procs],
                "world_size": job.world_size,
                "ranks": "forked" if fork else "processes",
            }
        )
        folder.record_job(self.name, str(me), job.kind)
        console = threading.Thread(
            target=self._show, args=(logs[0], shown_from, lambda: any(p.poll() is None for p in procs)), daemon=True
        )
        console.start()

        def forward(signum, frame):  # Ctrl-C / SIGTERM / a hang-up: the trainers stop gracefully and save
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signum)

        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2, signal.SIGHUP)}
        try:
            codes = self._wait(procs)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if server is not None:
                server.terminate()
                server.wait(timeout=60)
            console.join(timeout=10)
        return next((c for c in codes if c != 0), 0)

    @staticmethod
    def _show(log: Path, start: int, running) -> None:
        """Rank 0's log on the launcher's console, from byte `start` (where this launch began)."""
        for line in tail_lines([log], True, running, poll_s=0.2, start={log: start}):
            sys.stdout.write(line)
            sys.stdout.flush()

    def _start_reward_server(self, job: LaunchJob) -> subprocess.Popen:
        """`fgrpo reward-server --run-dir RUN` on a free port; the trainers find it in RUN/reward-server.json."""
        folder = RunFolder(job.run_dir)
        folder.clear_server_address()
        log = open(folder.server_log, "a")
        # Its own session: Ctrl-C reaches the trainers, which still need the server to finish the step.
        return subprocess.Popen(
            self.reward_server_command(job), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def reward_server_args(self, job: LaunchJob) -> list[str]:
        """Any free port on this machine; it exits with the launcher (or when the run has ended)."""
        return ["--run-dir", str(job.run_dir), "--port", "0", "--watch-pid", str(os.getpid())]

    @staticmethod
    def _wait(procs: list[subprocess.Popen | ForkedProcess]) -> list[int]:
        """Wait for all; if one fails, give the others a grace period (over early once those left
        are all stopped, e.g. by SIGSTOP: they would never exit), then kill them."""
        while True:
            codes = [p.poll() for p in procs]
            done = [c for c in codes if c is not None]
            if len(done) == len(codes):
                return done
            if any(c not in (None, 0) for c in codes):
                deadline = time.time() + 60
                while time.time() < deadline and any(p.poll() is None and not is_stopped(p.pid) for p in procs):
                    time.sleep(0.2)
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                return [p.wait() for p in procs]
            time.sleep(0.2)

    # A local job's id is the launcher's identity, host:pid:start-time (fgrpo.processes): a pid
    # alone may since belong to another process, which status and cancel must never act on.
    def state(self, job_id: str) -> str:
        try:
            launcher = ProcessId.parse(job_id)
        except ValueError:
            return "UNKNOWN"
        alive = launcher.alive()
        if alive is None:
            return f"UNKNOWN (on host {launcher.host})"
        return "RUNNING" if alive else "EXITED"

    def cancel(self, job_id: str) -> None:
        # The launcher forwards SIGTERM to its trainers: a graceful stop and save. Nothing is sent
        # when the launcher is gone (its pid may be a stranger's now).
        ProcessId.parse(job_id).signal(signal.SIGTERM)

    def stream_logs(self, run_dir: Path, job_id: str, rank: int, follow: bool) -> Iterator[str]:
        """Every rank's output is in logs/rank-R.log (rank 0's also on the launcher's console)."""
        return self.tail_logs([RunFolder(run_dir).rank_log(rank)], job_id, rank, follow)

    def submit_array(self, runs):
        """Locally, sweep points run one after another; a point cancelled while it waits its turn
        (`fgrpo cancel` marks it) is skipped."""
        me = str(ProcessId.of())
        for job in runs:  # every point is this process's job from now, so status and cancel find it
            RunFolder(job.run_dir).record_job(self.name, me, job.kind)
        for job in runs:
            if RunFolder(job.run_dir).cancel_requested():
                print(f"skipping {job.run_dir.name}: cancelled before it started", flush=True)
                continue
            self.launch(job)
        return [me] * len(runs)
