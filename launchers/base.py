"""The backend interface that local, Slurm and Kubernetes launchers implement, whole.

Every backend implements every abstract method, so a caller (the CLI) never probes a backend
for what it can do. The run folder's files (jobs.jsonl, launch.json, reward-server.json, logs)
are read and written through `fgrpo.run_folder.RunFolder` only.

The reward server (`recipe.reward_server.launch`): each backend states the `fgrpo reward-server`
arguments its server runs with (`reward_server_args`); how the server is placed is part of
`launch`, because the three backends place it in ways that share nothing else:

  local       a child process in its own session beside the trainers, stopped when `launch` returns
  Slurm       a job of its own (own node and resources), recorded in jobs.jsonl as a reward-server
              job, reused while it is still active; it exits by itself once the run has ended
  Kubernetes  a second replicated job inside the run's JobSet (one object: a JobSet cannot gain a
              replicated job later), reached at a stable DNS name
"""

from __future__ import annotations

import abc
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fgrpo.recipe.config import Recipe


@dataclass
class LaunchJob:
    """What every backend needs: the run folder and its resolved recipe.

    The recipe is already in `run_dir/recipe.json`; processes start `fgrpo train --run-dir
    RUN_DIR` (or its in-process equivalent), so a requeued or restarted process finds the recipe
    and the newest checkpoint from the run folder alone.
    """

    run_dir: Path
    recipe: Recipe
    kind: str = "launch"  # launch | resume | sweep

    @property
    def nodes(self) -> int:
        return self.recipe.launch.nodes

    @property
    def procs_per_node(self) -> int:
        return self.recipe.procs_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    def train_command(self) -> list[str]:
        return [sys.executable, "-m", "fgrpo", "train", "--run-dir", str(self.run_dir)]


# Scheduler states in which a job may still run: nothing new is submitted for its run.
ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "PREEMPTED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
}


def is_active(state: str) -> bool:
    """True for Slurm's and Kubernetes' live states (Kubernetes reports RESTARTING(n))."""
    return state in ACTIVE_STATES or state.startswith("RESTARTING")


def tail_lines(
    paths: list[Path],
    follow: bool,
    running: Callable[[], bool],
    poll_s: float = 1.0,
    start: dict[Path, int] | None = None,
) -> Iterator[str]:
    """The lines (each with its newline) of `paths`, file after file, from byte `start[path]`
    (default 0); with `follow`, new lines every `poll_s` until `running()` is False, then
    whatever the files hold last. A line still being written waits for its newline, except in
    that last read."""
    offsets = {p: (start or {}).get(p, 0) for p in paths}
    while True:
        last = not follow or not running()
        for p in paths:
            try:
                with p.open("rb") as f:
                    f.seek(offsets[p])
                    data = f.read()
            except FileNotFoundError:
                continue
            end = len(data) if last else data.rfind(b"\n") + 1
            offsets[p] += end
            *lines, rest = data[:end].decode("utf-8", "replace").split("\n")
            yield from (line + "\n" for line in lines)
            if rest:
                yield rest
        if last:
            return
        time.sleep(poll_s)


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    def describe(self, job: LaunchJob) -> str:
        """What `launch` would do, for --dry-run (nothing is started or written)."""

    @abc.abstractmethod
    def launch(self, job: LaunchJob) -> int:
        """Start the job (and, with reward_server.launch, its reward server; see the module's
        docstring). Records the job in the run folder. Returns an exit code (blocking backends)
        or 0 once submitted."""

    @abc.abstractmethod
    def submit_array(self, runs: list[LaunchJob]) -> list[str]:
        """Submit several runs that share one resource spec (a job array where supported); job ids."""

    @abc.abstractmethod
    def state(self, job_id: str) -> str:
        """The scheduler's state of a job (RUNNING, PENDING, COMPLETED, CANCELLED, ...)."""

    @abc.abstractmethod
    def cancel(self, job_id: str) -> None:
        """Stop the job and everything it started."""

    @abc.abstractmethod
    def stream_logs(self, run_dir: Path, job_id: str, rank: int, follow: bool) -> Iterator[str]:
        """Console lines (each with its newline, but perhaps the last) of global rank `rank` of job
        `job_id`; with `follow`, new lines until the job ends. Errors (no output yet, no such
        rank) are raised by the call itself, not when iterating."""

    @abc.abstractmethod
    def reward_server_args(self, job: LaunchJob) -> list[str]:
        """The `fgrpo reward-server` arguments of the run's reward server as this backend starts it
        (where it listens, how it announces itself, what ends it)."""

    def reward_server_command(self, job: LaunchJob) -> list[str]:
        return [sys.executable, "-m", "fgrpo", "reward-server", *self.reward_server_args(job)]

    def tail_logs(self, paths: list[Path], job_id: str, rank: int, follow: bool) -> Iterator[str]:
        """`stream_logs` for backends whose ranks write log files: those of `paths` that exist."""
        found = [p for p in paths if p.exists()]
        if not found:
            raise FileNotFoundError(f"no output yet for rank {rank} of job {job_id}")
        return tail_lines(found, follow, lambda: is_active(self.state(job_id)))
