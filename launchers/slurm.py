"""Slurm backend through submitit: one task per process (GPU), non-blocking submit, job arrays.

One task per GPU rather than one task per node running torchrun: Slurm then delivers USR2 and
SIGTERM to every training process directly, submitit knows each task's global rank (its
preemption protocol needs rank 0), and `TorchDistributedEnvironment` gives torch.distributed its
environment. torchrun would add a layer that forwards SIGTERM but not USR2.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

from fgrpo.recipe.config import Recipe
from fgrpo.run_folder import SERVER_KIND, RunFolder

from .base import Backend, LaunchJob, is_active
from .job import RewardServerJob, TrainJob
from .slurm_executor import (
    make_executor,  # noqa: F401
)


def sbatch_script(folder: Path, recipe: Recipe, name: str, server: bool = False) -> str:
    """The exact sbatch script a submission writes (submitit's own writer); runs without Slurm."""
    ex = make_executor(folder, recipe, name, server, preview=True)
    return ex._make_submission_file_text(ex._submitit_command_str, uid="DRYRUN")


class SlurmBackend(Backend):
    name = "slurm"

    def describe(self, job: LaunchJob) -> str:
        submitit_dir = RunFolder(job.run_dir).submitit
        text = sbatch_script(submitit_dir, job.recipe, job.run_dir.name)
        if job.recipe.reward_server.launch:
            text += "\n# and, beside it, the reward server's job:\n" + sbatch_script(
                submitit_dir, job.recipe, f"{job.run_dir.name}-reward", server=True
            )
        return text

    def launch(self, job: LaunchJob) -> int:
        if job.recipe.reward_server.launch:
            self._launch_reward_server(job)
        folder = RunFolder(job.run_dir)
        ex = make_executor(folder.submitit, job.recipe, job.run_dir.name)
        submitted = ex.submit(TrainJob(str(job.run_dir.resolve())))
        folder.record_job(self.name, submitted.job_id, job.kind)
        print(
            f"submitted Slurm job {submitted.job_id}\n  run folder: {job.run_dir}\n"
            f"  follow: fgrpo status {job.run_dir} | fgrpo logs {job.run_dir} -f | fgrpo cancel {job.run_dir}"
        )
        return 0

    def _launch_reward_server(self, job: LaunchJob) -> None:
        """A job of its own (own GPUs, own node), not a heterogeneous job: submitit cannot submit those,
        and a separate job is requeued on its own. The trainers wait for its address file."""
        folder = RunFolder(job.run_dir)
        for old in folder.server_jobs():
            state = self.state(old["job_id"])
            if is_active(state):
                print(f"reward server job {old['job_id']} of this run is still {state}: reusing it")
                return
        folder.clear_server_address()
        ex = make_executor(folder.submitit, job.recipe, f"{job.run_dir.name}-reward", server=True)
        submitted = ex.submit(RewardServerJob(str(job.run_dir.resolve())))
        folder.record_job(self.name, submitted.job_id, SERVER_KIND)
        print(f"submitted the reward server as Slurm job {submitted.job_id}")

    def submit_array(self, runs: list[LaunchJob]) -> list[str]:
        """One Slurm job array for runs that share one resource spec."""
        first = runs[0]
        for r in runs:  # each point its own server (to share one: --reward-server.url)
            if r.recipe.reward_server.launch:
                self._launch_reward_server(r)
        ex = make_executor(RunFolder(first.run_dir).submitit_arrays, first.recipe, first.run_dir.parent.name)
        with ex.batch():
            submitted = [ex.submit(TrainJob(str(r.run_dir.resolve()))) for r in runs]
        for r, s in zip(runs, submitted):
            RunFolder(r.run_dir).record_job(self.name, s.job_id, r.kind)
        return [s.job_id for s in submitted]

    def state(self, job_id: str) -> str:
        """Slurm's state of a job: sacct when accounting is on, else squeue."""
        try:
            out = subprocess.run(
                ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"], capture_output=True, text=True, timeout=30
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.split()[0].split()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
        out = subprocess.run(["squeue", "-j", job_id, "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "UNKNOWN"

    def cancel(self, job_id: str) -> None:
        subprocess.run(["scancel", job_id], check=True, timeout=60)

    def reward_server_args(self, job: LaunchJob) -> list[str]:
        """Any free port on all interfaces (the node may be shared; the address file tells the
        trainers which one); it exits once the run has ended."""
        return ["--run-dir", str(job.run_dir.resolve()), "--host", "0.0.0.0", "--port", "0"]

    def stream_logs(self, run_dir: Path, job_id: str, rank: int, follow: bool) -> Iterator[str]:
        """submitit's per-task files (task = global rank): the run's own jobs, or a sweep's array."""
        folder = RunFolder(run_dir)
        paths = [
            f / f"{job_id}_{rank}_log.{ext}"
            for f in (folder.submitit, folder.submitit_arrays)
            for ext in ("out", "err")
        ]
        return self.tail_logs(paths, job_id, rank, follow)
