"""The backend interface that local, Slurm and Kubernetes launchers implement."""

from __future__ import annotations

import abc
import sys
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
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUE_HOLD",
                 "REQUEUE_FED", "PREEMPTED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}


def is_active(state: str) -> bool:
    """True for Slurm's and Kubernetes' live states (Kubernetes reports RESTARTING(n))."""
    return state in ACTIVE_STATES or state.startswith("RESTARTING")


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    def describe(self, job: LaunchJob) -> str:
        """What `launch` would do, for --dry-run (nothing is started or written)."""

    @abc.abstractmethod
    def launch(self, job: LaunchJob) -> int:
        """Start the job. Returns an exit code (blocking backends) or 0 once submitted."""

    @abc.abstractmethod
    def state(self, job_id: str) -> str:
        """The scheduler's state of a job (RUNNING, PENDING, COMPLETED, CANCELLED, ...)."""

    @abc.abstractmethod
    def cancel(self, job_id: str) -> None:
        """Stop the job and everything it started."""

    @abc.abstractmethod
    def log_paths(self, run_dir: Path, job_id: str, rank: int) -> list[Path]:
        """Files that hold a rank's console output (the first existing one is shown)."""

    def submit_array(self, runs: list[LaunchJob]) -> list[str]:
        """Submit several runs that share one resource spec (a job array where supported)."""
        raise NotImplementedError(f"the {self.name} backend does not run sweeps")
