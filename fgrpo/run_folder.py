"""The run folder: every file in it, named, written and read here and nowhere else.

    runs/<run name>/
      recipe.json          the resolved recipe (written once by `fgrpo launch`; resume reads it)
      status.json          what the trainer says it is doing: running, completed, stopped, failed
      metrics.jsonl        one record per optimizer step and per evaluation (append-only)
      jobs.jsonl           every submission: backend, job id, kind (training or reward server)
      launch.json          the local backend's processes (pids, world size)
      failures.json        how many real failures the Slurm job has requeued after
      CANCEL_REQUESTED     `fgrpo cancel` was asked: a stopped job must not requeue
      reward-server.json   where the run's reward server listens (a requeued one announces anew)
      checkpoints/step-N/  DCP checkpoints; complete once `.metadata` exists (`.step-N.partial` before)
      samples/<tag>.gif    held-out sample grids
      eval/<name>/         `fgrpo eval` outputs
      logs/rank-R.log      per-rank output of local runs (logs/reward-server.log: a local reward server's)
      submitit/            Slurm scripts and per-task logs (a sweep's array: ../.submitit-arrays/)

Writes are atomic (fgrpo.fileio), so a crash or kill -9 never leaves a half-written file; the
run folder's name is a pure function of the recipe (fgrpo.recipe.io.run_name), never of a job id.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from fgrpo.fileio import append_jsonl, atomic_write_json, env_rank, read_json, read_jsonl

RECIPE, STATUS, METRICS, JOBS = "recipe.json", "status.json", "metrics.jsonl", "jobs.jsonl"
LAUNCH, FAILURES, CANCEL, REWARD_SERVER = "launch.json", "failures.json", "CANCEL_REQUESTED", "reward-server.json"
CHECKPOINTS, SAMPLES, EVAL, LOGS = "checkpoints", "samples", "eval", "logs"
SUBMITIT, SUBMITIT_ARRAYS = "submitit", ".submitit-arrays"  # the second beside the run folders, shared
STEP_DIR = re.compile(r"^step-(\d+)$")
SERVER_KIND = "reward-server"  # a reward server the backend started beside the training job
FINAL_STATES = ("completed", "failed", "cancelled")


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    """A complete checkpoint's folder under `ckpt_dir` (a run's is RunFolder.checkpoints)."""
    return Path(ckpt_dir) / f"step-{step}"


def partial_checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    """Where a checkpoint is written before the rename that completes it."""
    return Path(ckpt_dir) / f".step-{step}.partial"


def complete_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints under `ckpt_dir`, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / ".metadata").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    # ----- names
    @property
    def recipe_file(self) -> Path:
        return self.path / RECIPE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES

    @property
    def logs(self) -> Path:
        return self.path / LOGS

    def rank_log(self, rank: int) -> Path:
        return self.logs / f"rank-{rank}.log"

    @property
    def server_log(self) -> Path:
        """A reward server's output when the local backend started it."""
        return self.logs / "reward-server.log"

    @property
    def submitit(self) -> Path:
        """submitit's folder for the run's own Slurm jobs (scripts, pickles, `JOBID_TASK_log.out/err`)."""
        return self.path / SUBMITIT

    @property
    def submitit_arrays(self) -> Path:
        """submitit's folder for sweep job arrays: beside the run folders, shared by a sweep's points."""
        return self.path.parent / SUBMITIT_ARRAYS

    def eval_dir(self, name: str) -> Path:
        return self.path / EVAL / name

    def checkpoint(self, step: int) -> Path:
        return checkpoint_path(self.checkpoints, step)

    def partial_checkpoint(self, step: int) -> Path:
        return partial_checkpoint_path(self.checkpoints, step)

    # ----- the recipe
    def is_run(self) -> bool:
        return self.recipe_file.is_file()

    def read_recipe(self):
        from fgrpo.recipe.io import load_recipe_json

        if not self.is_run():
            raise FileNotFoundError(f"{self.path} is not a run folder: it has no {RECIPE}")
        return load_recipe_json(self.recipe_file)

    def write_recipe(self, recipe) -> None:
        from fgrpo.recipe.io import save_recipe_json

        self.path.mkdir(parents=True, exist_ok=True)
        save_recipe_json(recipe, self.recipe_file)

    # ----- status (what `fgrpo status` shows)
    def write_status(self, state: str, reason: str = "", **extra) -> None:
        """Written by global rank 0 only (the others' calls do nothing)."""
        if env_rank() == 0:
            atomic_write_json(self.path / STATUS, {"state": state, "reason": reason, "time": time.time(), **extra})

    def read_status(self) -> dict:
        return read_json(self.path / STATUS, {}) or {}

    # ----- jobs
    def record_job(self, backend: str, job_id: str, kind: str) -> None:
        """Append one submission; the newest training job is what status, logs and cancel act on."""
        self.path.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.path / JOBS, {"backend": backend, "job_id": str(job_id), "kind": kind, "time": time.time()})

    def jobs(self) -> list[dict]:
        return read_jsonl(self.path / JOBS)

    def latest_job(self) -> dict | None:
        found = [j for j in self.jobs() if j["kind"] != SERVER_KIND]
        return found[-1] if found else None

    def server_jobs(self) -> list[dict]:
        """Reward-server jobs started for the run, oldest first."""
        return [j for j in self.jobs() if j["kind"] == SERVER_KIND]

    def write_launch(self, info: dict) -> None:
        atomic_write_json(self.path / LAUNCH, info)

    def read_launch(self) -> dict | None:
        return read_json(self.path / LAUNCH)

    # ----- cancel and failures
    def request_cancel(self, job_id: str) -> None:
        """Recorded before the scheduler is asked: a job stopped by `fgrpo cancel` must not requeue."""
        atomic_write_json(self.path / CANCEL, {"job_id": job_id, "time": time.time()})

    def cancel_requested(self) -> bool:
        return (self.path / CANCEL).exists()

    def clear_cancel(self) -> None:
        (self.path / CANCEL).unlink(missing_ok=True)

    def count_failure(self) -> int:
        """One more real failure; returns how many there have been."""
        n = int((read_json(self.path / FAILURES, {}) or {}).get("count", 0)) + 1
        atomic_write_json(self.path / FAILURES, {"count": n})
        return n

    # ----- the reward server's address
    @property
    def reward_server_file(self) -> Path:
        return self.path / REWARD_SERVER

    def write_server_address(self, url: str, path: Path | None = None) -> None:
        atomic_write_json(path or self.reward_server_file,
                          {"url": url, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()})

    def read_server_address(self, path: Path | None = None) -> str | None:
        found = read_json(path or self.reward_server_file)
        return found.get("url") if isinstance(found, dict) else None

    def clear_server_address(self) -> None:
        """Forget a previous server's address before a new one starts for the run."""
        self.reward_server_file.unlink(missing_ok=True)

    # ----- checkpoints and metrics
    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        return complete_checkpoints(self.checkpoints)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        found = self.complete_checkpoints()
        return found[-1] if found else None

    def read_metrics(self, kind: str | None = None) -> list[dict]:
        records = read_jsonl(self.metrics_file)
        return records if kind is None else [r for r in records if r.get("kind") == kind]

    def progress(self) -> dict:
        """Last step, reward, held-out reward and checkpoint, read from the run folder alone."""
        train, evals = self.read_metrics("train"), self.read_metrics("eval")
        ckpt = self.latest_checkpoint()
        return {
            "step": train[-1]["step"] if train else 0,
            "reward": train[-1]["reward_mean"] if train else None,
            "heldout": evals[-1]["eval_reward"] if evals else None,
            "checkpoint": ckpt[0] if ckpt else None,
            "status": self.read_status(),
        }
