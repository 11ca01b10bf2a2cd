"""Slurm backend through submitit: one task per process (GPU), non-blocking submit, job arrays.

One task per GPU rather than one task per node running torchrun: Slurm then delivers USR2 and
SIGTERM to every training process directly, submitit knows each task's global rank (its
preemption protocol needs rank 0), and `TorchDistributedEnvironment` gives torch.distributed its
environment. torchrun would add a layer that forwards SIGTERM but not USR2.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from fgrpo.recipe.config import Recipe
from fgrpo.recipe.validate import time_limit_minutes

from .base import Backend, LaunchJob
from .job import TrainJob
from .records import record_job


def executor_parameters(recipe: Recipe, name: str) -> dict:
    """submitit parameters for a recipe's launch section (every sbatch option reachable)."""
    la = recipe.launch
    params = dict(
        name=name,
        nodes=la.nodes,
        tasks_per_node=recipe.procs_per_node,
        timeout_min=time_limit_minutes(la.time_limit),
        slurm_signal_delay_s=la.signal_delay_s,
        slurm_additional_parameters={"requeue": True, **{k: v for k, v in la.sbatch.items()}},
        slurm_array_parallelism=la.array_parallelism,
    )
    if la.gpus_per_node:
        params["gpus_per_node"] = la.gpus_per_node
    if la.cpus_per_task:
        params["cpus_per_task"] = la.cpus_per_task
    if la.mem_gb:
        params["mem_gb"] = la.mem_gb
    for key in ("partition", "account", "qos"):
        if getattr(la, key):
            params[f"slurm_{key}"] = getattr(la, key)
    if la.setup:
        params["slurm_setup"] = list(la.setup)
    return params


def make_executor(folder: Path, recipe: Recipe, name: str):
    import submitit

    # Preemptions requeue without limit; submitit counts only timeouts, and a long run that hits
    # its time limit many times must still finish, so that count is effectively unbounded too.
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm", slurm_max_num_timeout=10_000)
    ex.update_parameters(**executor_parameters(recipe, name))
    return ex


def sbatch_script(folder: Path, recipe: Recipe, name: str) -> str:
    """The exact sbatch script submitit would submit (uses submitit's own script writer)."""
    ex = make_executor(folder, recipe, name)
    return ex._executor._make_submission_file_text(ex._executor._submitit_command_str, uid="DRYRUN")


class SlurmBackend(Backend):
    name = "slurm"

    def describe(self, job: LaunchJob) -> str:
        return sbatch_script(job.run_dir / "submitit", job.recipe, job.run_dir.name)

    def launch(self, job: LaunchJob) -> int:
        ex = make_executor(job.run_dir / "submitit", job.recipe, job.run_dir.name)
        submitted = ex.submit(TrainJob(str(job.run_dir.resolve())))
        record_job(job.run_dir, self.name, submitted.job_id, job.kind)
        print(f"submitted Slurm job {submitted.job_id}\n  run folder: {job.run_dir}\n"
              f"  follow: fgrpo status {job.run_dir} | fgrpo logs {job.run_dir} -f | fgrpo cancel {job.run_dir}")
        return 0

    def submit_array(self, runs: list[LaunchJob]) -> list[str]:
        """One Slurm job array for runs that share one resource spec."""
        first = runs[0]
        ex = make_executor(first.run_dir.parent / ".submitit-arrays", first.recipe, first.run_dir.parent.name)
        with ex.batch():
            submitted = [ex.submit(TrainJob(str(r.run_dir.resolve()))) for r in runs]
        for r, s in zip(runs, submitted):
            record_job(r.run_dir, self.name, s.job_id, r.kind)
        return [s.job_id for s in submitted]

    def state(self, job_id: str) -> str:
        """Slurm's state of a job: sacct when accounting is on, else squeue."""
        try:
            out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"], capture_output=True,
                                 text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.split()[0].split()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
        out = subprocess.run(["squeue", "-j", job_id, "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "UNKNOWN"

    def cancel(self, job_id: str) -> None:
        subprocess.run(["scancel", job_id], check=True, timeout=60)

    def log_paths(self, run_dir: Path, job_id: str, rank: int) -> list[Path]:
        folders = [run_dir / "submitit", run_dir.parent / ".submitit-arrays"]
        return [f / f"{job_id}_{rank}_log.{ext}" for f in folders for ext in ("out", "err")]
