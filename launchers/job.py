"""The callable a Slurm job runs (submitit pickles it): train the run folder, requeue when stopped.

submitit's preemption protocol: on USR2 only global rank 0 runs `checkpoint()` (inside the signal
handler) and requeues. A collective save cannot happen inside one rank's signal handler, so the
trainer's own handler takes the signal on every rank; the ranks agree at a safe point, save
together and return 75. Only then does rank 0 call submitit's handler, which runs
`checkpoint()` (a fresh `TrainJob` of the same run folder: no checkpoint path is fixed at submit
time) and requeues the job through submitit, with its timeout countdown intact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import submitit

from fgrpo.trainer.entry import EXIT_DONE, EXIT_FAILED, train_run, write_status
from fgrpo.trainer.signals import EXIT_REQUEUE, StopFlag

from .records import cancel_requested


def _count_failure(run_dir: Path) -> int:
    path = run_dir / "failures.json"
    n = json.loads(path.read_text())["count"] + 1 if path.exists() else 1
    path.write_text(json.dumps({"count": n}))
    return n


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, run_dir: str):
        self.run_dir = str(run_dir)

    def __call__(self) -> str:
        submitit_handler = signal.getsignal(signal.SIGUSR2)  # submitit's checkpoint-and-requeue
        stop = StopFlag()
        env = submitit.JobEnvironment()
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        # One thread per CPU Slurm gave the task (torchrun's default is 1 too): oversubscribed
        # cores slow everything down, and a fixed count keeps results reproducible.
        torch_threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "1"))
        os.environ.setdefault("OMP_NUM_THREADS", str(torch_threads))
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        run_dir = Path(self.run_dir)
        if cancel_requested(run_dir):  # a requeue that raced `fgrpo cancel`: do nothing
            return "cancelled"
        try:
            code = train_run(run_dir, stop)
        except Exception as e:
            code, reason = EXIT_FAILED, f"{type(e).__name__}: {e}"
        else:
            reason = "see fgrpo logs"
        if code == EXIT_DONE:
            return "completed"
        if code == EXIT_REQUEUE and cancel_requested(run_dir):
            write_status(run_dir, "cancelled", "fgrpo cancel; checkpoint saved")
            return "cancelled"
        if code == EXIT_REQUEUE:
            if env.global_rank == 0 and callable(submitit_handler):
                try:
                    submitit_handler(signal.SIGUSR2, None)  # checkpoint() + scontrol requeue + exit
                except subprocess.CalledProcessError:
                    pass  # Slurm is already requeueing this job (preemption with PreemptMode=REQUEUE)
            return "stopped"
        # A real failure: requeue a bounded number of times, then give up with the reason.
        if env.global_rank == 0:
            recipe = json.loads((run_dir / "recipe.json").read_text())
            n, limit = _count_failure(run_dir), recipe["launch"]["max_failures"]
            if n <= limit:
                write_status(run_dir, "requeued", f"failure {n}/{limit}: {reason}")
                subprocess.run(["scontrol", "requeue", str(env.job_id)], check=False, timeout=60)
            else:
                write_status(run_dir, "failed", f"gave up after {n - 1} requeues; last: {reason}")
        raise RuntimeError(f"training failed (exit {code}): {reason}")

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(TrainJob(self.run_dir))


class RewardServerJob(submitit.helpers.Checkpointable):
    """A Slurm job serving the run's rewards; it exits when the run ends and is requeued when preempted."""

    def __init__(self, run_dir: str):
        self.run_dir = str(run_dir)

    def __call__(self) -> int:
        from fgrpo.rewards.serve import main

        if cancel_requested(Path(self.run_dir)):
            return 0
        # Any free port: the node may be shared; the address file tells the trainers which one.
        return main(["--run-dir", self.run_dir, "--host", "0.0.0.0", "--port", "0"])

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(RewardServerJob(self.run_dir))
