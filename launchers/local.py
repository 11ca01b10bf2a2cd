"""Local backend: the recipe's processes on this machine, torchrun-style environment, gloo/NCCL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from fgrpo.run_folder import RunFolder

from .base import Backend, LaunchJob


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalBackend(Backend):
    name = "local"

    def environments(self, job: LaunchJob, port: int) -> list[dict[str, str]]:
        world = job.world_size
        base = {
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world))),
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
        procs: list[subprocess.Popen] = []
        for env in self.environments(job, port):
            rank = int(env["RANK"])
            # Rank 0 owns the console (progress bar, metrics line); the others log to files.
            out = None if rank == 0 else open(folder.rank_log(rank), "a")
            procs.append(subprocess.Popen(job.train_command(), env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT if out else None))
        folder.write_launch({"backend": self.name, "started": time.time(), "pids": [p.pid for p in procs],
                             "world_size": job.world_size})
        folder.record_job(self.name, str(os.getpid()), job.kind)

        def forward(signum, frame):  # Ctrl-C / SIGTERM: the trainers stop gracefully and save
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signum)

        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
        try:
            codes = self._wait(procs)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if server is not None:
                server.terminate()
                server.wait(timeout=60)
        return next((c for c in codes if c != 0), 0)

    def _start_reward_server(self, job: LaunchJob) -> subprocess.Popen:
        """`fgrpo reward-server --run-dir RUN` on a free port; the trainers find it in RUN/reward-server.json."""
        folder = RunFolder(job.run_dir)
        folder.clear_server_address()
        log = open(folder.server_log, "a")
        # Its own session: Ctrl-C reaches the trainers, which still need the server to finish the step.
        return subprocess.Popen(self.reward_server_command(job), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def reward_server_args(self, job: LaunchJob) -> list[str]:
        """Any free port on this machine; it exits with the launcher (or when the run has ended)."""
        return ["--run-dir", str(job.run_dir), "--port", "0", "--watch-pid", str(os.getpid())]

    @staticmethod
    def _wait(procs: list[subprocess.Popen]) -> list[int]:
        """Wait for all; if one fails, give the others a grace period, then stop them."""
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                return codes
            if any(c not in (None, 0) for c in codes):
                deadline = time.time() + 60
                while time.time() < deadline and any(p.poll() is None for p in procs):
                    time.sleep(0.2)
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                return [p.wait() for p in procs]
            time.sleep(0.2)

    # A local job's id is the launcher's pid.
    def state(self, job_id: str) -> str:
        from fgrpo.rewards.server_lifecycle import process_alive

        return "RUNNING" if job_id.isdigit() and process_alive(int(job_id)) else "EXITED"

    def cancel(self, job_id: str) -> None:
        try:
            os.kill(int(job_id), signal.SIGTERM)  # the launcher forwards it: graceful stop and save
        except ProcessLookupError:
            pass

    def stream_logs(self, run_dir: Path, job_id: str, rank: int, follow: bool) -> Iterator[str]:
        """Ranks other than 0 write logs/rank-R.log; rank 0 owns the launcher's console."""
        return self.tail_logs([RunFolder(run_dir).rank_log(rank)], job_id, rank, follow)

    def submit_array(self, runs):
        """Locally, sweep points run one after another."""
        for job in runs:
            self.launch(job)
        return [str(os.getpid())] * len(runs)
