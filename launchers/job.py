"""The callable a Slurm job runs (submitit pickles it): train the run folder, requeue when stopped.

submitit's preemption protocol: on USR2 only global rank 0 runs `checkpoint()` (inside the signal
handler) and requeues. A collective save cannot happen inside one rank's signal handler, so the
trainer's own handler takes the signal on every rank; the ranks agree at a safe point, save
together and return 75. Then rank 0 puts the run's next job in the queue:

- after USR2 alone (the time-limit warning, or a preemption's warning signal), it submits a new
  job for the run folder now (`resubmit`), recorded in jobs.jsonl as kind "requeue", and this
  job ends. A job requeued in place may start again only once Slurm's credential lifetime has
  passed (`AuthInfo=cred_expire`, 120 s by default; 10 s on the test cluster); a new job starts
  as soon as nodes are free.
- after SIGTERM (Slurm is already requeueing, preempting or cancelling the job), or when that
  submission fails, it calls submitit's handler, which runs `checkpoint()` (a fresh `TrainJob`
  of the same run folder: no checkpoint path is fixed at submit time) and requeues the job
  through submitit (`scontrol requeue`, same job id), with its timeout countdown intact.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import submitit

from fgrpo.run_folder import RunFolder
from fgrpo.trainer import timeline
from fgrpo.trainer.entry import EXIT_BAD_RECIPE, EXIT_DONE, EXIT_FAILED, EXIT_LOCKED, train_run
from fgrpo.trainer.signals import EXIT_REQUEUE, StopFlag

# What TorchDistributedEnvironment exports in a job: a new job sets its own.
JOB_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, run_dir: str):
        self.run_dir = str(run_dir)

    def __call__(self) -> str:
        timeline.mark("job")  # python, submitit and this job's unpickling done
        submitit_handler = signal.getsignal(signal.SIGUSR2)  # submitit's checkpoint-and-requeue
        stop = StopFlag()
        env = submitit.JobEnvironment()
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        # One thread per CPU Slurm gave the task (torchrun's default is 1 too): oversubscribed
        # cores slow everything down, and a fixed count keeps results reproducible.
        torch_threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "1"))
        os.environ.setdefault("OMP_NUM_THREADS", str(torch_threads))
        import torch

        timeline.mark("torch_imported")
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
            reason = (
                status.get("reason") if status.get("state") == "failed" and status.get("reason") else "see fgrpo logs"
            )
        if code == EXIT_DONE:
            return "completed"
        if code in (EXIT_BAD_RECIPE, EXIT_LOCKED):  # a requeue would fail the same way
            raise RuntimeError(f"training did not start (exit {code}): see fgrpo logs")
        if code == EXIT_REQUEUE and folder.cancel_requested():  # train_run recorded it: not requeued
            return "cancelled"
        if code == EXIT_REQUEUE:
            if env.global_rank == 0 and stop.received == {signal.SIGUSR2} and self.resubmit(folder):
                return "stopped"
            if env.global_rank == 0 and callable(submitit_handler):
                with contextlib.suppress(OSError):  # a measurement: never in the way of the requeue
                    folder.record_timings({"kind": "requeue", "time": time.time(), "how": "scontrol requeue"})
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

    def resubmit(self, folder: RunFolder) -> bool:
        """Submit the run's next job now (rank 0, after a stop on USR2); False if that failed (the
        caller then requeues this job). sbatch gets the environment this job was submitted with:
        less what Slurm and the process group set inside the job."""
        from .slurm_executor import make_executor

        with contextlib.suppress(OSError):
            folder.record_timings({"kind": "requeue", "time": time.time(), "how": "new job"})
        saved = dict(os.environ)
        try:
            for key in list(os.environ):
                if (key.startswith(("SLURM_", "SLURMD_", "SUBMITIT_")) and key != "SLURM_CONF") or key in JOB_VARS:
                    del os.environ[key]
            ex = make_executor(folder.submitit, folder.read_recipe(), Path(self.run_dir).name)
            job_id = ex.submit(TrainJob(self.run_dir)).job_id
            folder.record_job("slurm", job_id, "requeue")
        except Exception as e:  # noqa: BLE001 - fall back to requeueing this job
            print(f"fgrpo: warning: could not submit the next job ({type(e).__name__}: {e}); requeueing this one")
            return False
        finally:
            os.environ.clear()
            os.environ.update(saved)
        print(f"submitted Slurm job {job_id} to continue the run")
        return True


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

        folder = RunFolder(Path(self.run_dir))
        if folder.cancel_requested():
            return 0
        server = RewardServer(
            list(folder.read_recipe().rewards),
            host=self.host,
            port=self.port,
            token=reward_token(folder.path, create=True),
        )
        return serve_until_done(server, self.host, run_dir=folder.path)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(RewardServerJob(self.run_dir, self.host, self.port))
