"""The callable a Slurm job runs (submitit pickles it): train the run folder, requeue when stopped.

submitit's preemption protocol: on USR2 only global rank 0 runs `checkpoint()` (inside the signal
handler) and requeues. A collective save cannot happen inside one rank's signal handler, so the
trainer's own handler takes the signal on every rank; the ranks agree at a safe point, save
together and return 75. Only then does rank 0 call submitit's handler, which runs
`checkpoint()` (a fresh `TrainJob` of the same run folder: no checkpoint path is fixed at submit
time) and requeues the job through submitit, with its timeout countdown intact.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import submitit

from fgrpo.run_folder import RunFolder
from fgrpo.trainer.entry import EXIT_BAD_RECIPE, EXIT_DONE, EXIT_FAILED, EXIT_LOCKED, train_run
from fgrpo.trainer.signals import EXIT_REQUEUE, StopFlag


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
        folder = RunFolder(run_dir)
        if folder.cancel_requested():  # a requeue that raced `fgrpo cancel`: do nothing
            return "cancelled"
        try:
            code = train_run(run_dir, stop)
        except Exception as e:
            code, reason = EXIT_FAILED, f"{type(e).__name__}: {e}"
        else:  # train_run recorded why in status.json
            status = folder.read_status()
            reason = status.get("reason") if status.get("state") == "failed" and status.get("reason") else "see fgrpo logs"
        if code == EXIT_DONE:
            return "completed"
        if code in (EXIT_BAD_RECIPE, EXIT_LOCKED):  # a requeue would fail the same way
            raise RuntimeError(f"training did not start (exit {code}): see fgrpo logs")
        if code == EXIT_REQUEUE and folder.cancel_requested():  # train_run recorded it: not requeued
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
            limit = folder.read_recipe().launch.max_failures
            n = folder.count_failure()
            if n <= limit:
                folder.write_status("requeued", f"failure {n}/{limit}: {reason}")
                subprocess.run(["scontrol", "requeue", str(env.job_id)], check=False, timeout=60)
            else:
                folder.write_status("failed", f"gave up after {n - 1} requeues; last: {reason}")
        raise RuntimeError(f"training failed (exit {code}): {reason}")

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(TrainJob(self.run_dir))


class RewardServerJob(submitit.helpers.Checkpointable):
    """A Slurm job serving the run's rewards (what `fgrpo reward-server --run-dir RUN --host 0.0.0.0
    --port 0` does: SlurmBackend.reward_server_args shows it); it announces its address in the run
    folder, exits when the run ends and is requeued when preempted. Scoring needs the run's token
    (the run folder's reward-server.token, made here when missing; the trainers read it there)."""

    def __init__(self, run_dir: str, host: str = "0.0.0.0", port: int = 0):
        self.run_dir, self.host, self.port = str(run_dir), host, port

    def __call__(self) -> int:
        from fgrpo.rewards.server import RewardServer
        from fgrpo.rewards.server_lifecycle import reward_token, serve_until_done

        folder = RunFolder(self.run_dir)
        if folder.cancel_requested():
            return 0
        server = RewardServer(list(folder.read_recipe().rewards), host=self.host, port=self.port,
                              token=reward_token(folder.path, create=True))
        return serve_until_done(server, self.host, run_dir=folder.path)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(RewardServerJob(self.run_dir, self.host, self.port))
