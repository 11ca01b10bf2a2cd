"""The in-job entry point shared by every backend: run folder in, exit code out.

Every way out records the run's state in status.json: completed, stopped (a signal: saved, to
be resumed), cancelled, or failed with the first line of the error. A process killed outright
cannot write: its "running" is found stale by `RunFolder.effective_status` (no process holds
the run's lock any more) and shown as killed.

Exit codes: 0 done, 75 stopped (requeue me), 1 failed, 2 bad recipe (or a run folder written by a
newer fgrpo: refused without writing into it), 3 the run folder is held by another job.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import NoReturn

from fgrpo.fileio import env_rank
from fgrpo.processes import ProcessId, parent_gone
from fgrpo.run_folder import RunFolder, RunFormatError, RunLockedError

from . import timeline
from .signals import EXIT_REQUEUE, StopFlag

EXIT_DONE, EXIT_FAILED, EXIT_BAD_RECIPE, EXIT_LOCKED = 0, 1, 2, 3

# What a rank imports before its first step: about 8 s of one core here (torch, DTensor and
# distributed checkpoint, diffusers' Wan modules, which import most of diffusers, peft and
# transformers). A local launcher that forks its ranks imports them once (`import_rank_modules`).
RANK_MODULES = (
    "fgrpo.trainer.trainer",
    "fgrpo.models.wan.loading",
    "fgrpo.models.wan.random_build",
    "diffusers.models.transformers.transformer_wan",
    "diffusers.models.autoencoders.autoencoder_kl_wan",
    "transformers.models.umt5.modeling_umt5",
    "av",
)


def import_rank_modules(recipe, runs_dir: Path) -> None:
    """Import what every rank of `recipe` imports, in a launcher about to fork its ranks. Compiled
    recipes get their Inductor cache placed first, as `train_run` would (torch._dynamo fixes it on
    import)."""
    import importlib

    if recipe.parallelism.compile:
        from fgrpo.models.wan.parallelize import place_inductor_cache

        place_inductor_cache(runs_dir)
    for name in RANK_MODULES:
        importlib.import_module(name)


def rank_main(run_dir: Path, recipe=None, stop: StopFlag | None = None) -> NoReturn:
    """One process of a run, from start to exit (`fgrpo train`, or a local launcher's forked
    rank): the stop flag first, so a signal during start-up is not lost; bound to the launcher's
    life; trains; leaves by os._exit."""
    from fgrpo.processes import die_with_parent

    stop = stop or StopFlag()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if "torch" in sys.modules and threads.isdigit():  # a forked rank: torch read its threads in the launcher
        sys.modules["torch"].set_num_threads(int(threads))
    die_with_parent()  # a local launcher's trainers stop (and save) when it dies, even by kill -9
    code = train_run(run_dir, stop, recipe)
    # Everything is saved and recorded, and the process group is gone. Leave without the
    # interpreter's teardown of C++ threads (gloo, OpenMP), which can abort a finished process
    # ("terminate called without an active exception") and turn a completed run's exit code bad.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def job_identity() -> dict:
    """Who holds a run folder, in the words of the scheduler that started this process."""
    ident = {"host": ProcessId.of().host, "pid": os.getpid(), "process": str(ProcessId.of())}
    if "SLURM_JOB_ID" in os.environ:
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ["SLURM_JOB_ID"]
        return {"backend": "slurm", "job_id": job, **ident}
    if "KUBERNETES_SERVICE_HOST" in os.environ:
        return {"backend": "k8s", "job_id": os.environ.get("HOSTNAME", "?"), **ident}
    parent = os.environ.get("FGRPO_PARENT_PID")
    job = str(ProcessId.of(int(parent))) if parent and parent.isdigit() else str(ProcessId.of())
    return {"backend": "local", "job_id": job, **ident}


def record_failure(folder: RunFolder, reason: str, started: float, consequence: bool = False) -> None:
    """Every rank records its failure unless this job's first one is already there (it is the
    cause; a peer's error in a collective, the consequence): `RunFolder.record_failure`. Called
    before leaving the process group, so the errors that leaving triggers in the peers come later."""
    rank = env_rank()
    folder.record_failure(reason if rank == 0 else f"rank {rank}: {reason}", started, consequence, rank=rank)


def failure_reason(error: BaseException, collective_timeout_s: float) -> str:
    """The error's first line; the process group's timeout also names the field that set it."""
    from fgrpo.distributed.process_group import timed_out
    from fgrpo.trainer.failures import first_line

    if not timed_out(error):
        return first_line(error)
    return (
        f"a collective waited launch.collective_timeout_s = {collective_timeout_s:g} s for a rank that stopped "
        f"answering (stopped, hung, or its node lost; see the other ranks' logs): {first_line(error)}"
    )


def train_run(run_dir: Path, stop: StopFlag | None = None, recipe=None) -> int:
    """Train the run in `run_dir` from its newest good checkpoint; the exit codes above."""
    stop = stop or StopFlag()  # installed first: a signal during model loading is not lost
    timeline.begin()
    from fgrpo.recipe.io import RecipeError
    from fgrpo.recipe.validate import validate

    folder = RunFolder(run_dir)
    try:
        folder.check_format()
    except RunFormatError as e:  # a newer fgrpo's folder: not even its status is this fgrpo's to write
        print(f"fgrpo: error: {e}", file=sys.stderr)
        return EXIT_BAD_RECIPE
    try:
        recipe = recipe or folder.read_recipe()
        validate(recipe, int(os.environ.get("WORLD_SIZE", "1")))
    except RecipeError as e:
        print(f"fgrpo: error: {e}", file=sys.stderr)
        folder.write_status("failed", str(e).replace(":\n  ", ": ", 1).replace("\n  ", "; "))
        return EXIT_BAD_RECIPE
    timeline.mark("recipe")
    if recipe.parallelism.compile:
        from fgrpo.models.wan.parallelize import place_inductor_cache

        place_inductor_cache(folder.path.parent)  # before anything imports torch._dynamo
    from fgrpo.distributed import process_group as dist

    timeline.mark("torch_imported")
    dist.init_distributed(recipe.launch.collective_timeout_s)
    lock, refused = folder.lock(), None
    if dist.rank() == 0:
        try:  # a requeued job's predecessor may still be exiting: wait for it a little
            if not lock.acquire(job_identity(), wait_s=float(os.environ.get("FGRPO_LOCK_WAIT_S", "30"))):
                print(
                    f"fgrpo: warning: {folder.path} is on a filesystem without working locks; a second job "
                    "on this run folder is refused only while the scheduler reports the first as active",
                    file=sys.stderr,
                )
        except RunLockedError as e:
            refused = e
    if dist.any_rank(refused is not None):  # the folder is another job's: write nothing into it
        if refused is not None:
            print(f"fgrpo: error: {refused}", file=sys.stderr)
        dist.shutdown()
        return EXIT_LOCKED
    started = time.time()
    timeline.mark("process_group")
    try:
        return _train_locked(folder, recipe, stop, started)
    finally:
        lock.release()


def _train_locked(folder: RunFolder, recipe, stop: StopFlag, started: float) -> int:
    from fgrpo.distributed import process_group as dist
    from fgrpo.trainer.failures import is_consequence

    folder.write_status("running")
    try:
        from fgrpo.trainer.trainer import Trainer

        timeline.mark("imports")
        trainer = Trainer(recipe, folder.path, stop)
        timeline.mark("model")
        code = trainer.run()
    except Exception as e:  # noqa: BLE001 - every failure is recorded, then reported by the exit code
        reason = failure_reason(e, recipe.launch.collective_timeout_s)
        record_failure(folder, reason, started, is_consequence(e))  # first: leaving fails the peers
        dist.shutdown()  # no barrier: another rank may never reach one
        traceback.print_exc()
        print(f"fgrpo: error: {reason}", file=sys.stderr)
        return EXIT_FAILED
    except BaseException as e:  # KeyboardInterrupt outside the stop flag's reach, SystemExit
        record_failure(folder, f"interrupted ({type(e).__name__})", started)
        dist.shutdown()
        raise
    # Every rank finished its collectives: meet, then leave the group together (a rank tearing
    # down gloo while a peer still talks to it can abort at exit).
    dist.barrier()
    dist.shutdown()
    if code == EXIT_REQUEUE and folder.cancel_requested():
        # Stopped by `fgrpo cancel`: said at once, never "stopped" first (a reader in between
        # would see a run waiting to be requeued that never will be).
        folder.write_status("cancelled", "fgrpo cancel; checkpoint saved")
    elif code == EXIT_REQUEUE:
        why = "its launcher exited" if parent_gone() else f"signal {stop.signum}"
        folder.write_status(
            "stopped",
            "; ".join(x for x in (f"{why}: checkpoint saved, waiting to be resumed", trainer.resume_note) if x),
        )
        timeline.mark("exit")
        timeline.write(folder, "stop", signal=stop.time, signum=stop.signum)
    else:
        # a skipped damaged checkpoint stays on record; an early stop (eval.on_divergence) says why
        early = {"stopped_early": True} if trainer.gold.stop_note else {}  # a sweep does not run it again
        folder.write_status(
            "completed", "; ".join(x for x in (trainer.gold.stop_note, trainer.resume_note) if x), **early
        )
    return code
