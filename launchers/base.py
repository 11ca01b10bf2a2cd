"""The backend interface that local, Slurm and Kubernetes launchers implement."""

from __future__ import annotations

import abc
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LaunchJob:
    """What every backend needs: where the run lives and how many processes it wants.

    The resolved recipe is already in `run_dir/recipe.json`; processes start
    `python -m fgrpo train --run-dir RUN_DIR`, so a requeued or restarted process finds the recipe
    and the newest checkpoint from the run folder alone.
    """

    run_dir: Path
    nodes: int
    procs_per_node: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    def train_command(self) -> list[str]:
        return [sys.executable, "-m", "fgrpo", "train", "--run-dir", str(self.run_dir)]


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    def describe(self, job: LaunchJob) -> str:
        """What `launch` would do, for --dry-run (nothing is started)."""

    @abc.abstractmethod
    def launch(self, job: LaunchJob) -> int:
        """Start the job. Returns an exit code (blocking backends) or 0 once submitted."""
