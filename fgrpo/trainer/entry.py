"""The in-job entry point shared by every backend: run folder in, exit code out."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fgrpo.run_folder import RunFolder

from .signals import EXIT_REQUEUE, StopFlag

EXIT_DONE, EXIT_FAILED, EXIT_BAD_RECIPE = 0, 1, 2


def train_run(run_dir: Path, stop: StopFlag | None = None, recipe=None) -> int:
    """Train the run in `run_dir` from its newest checkpoint. 0 done, 75 stopped (requeue me),
    1 failed, 2 bad recipe. Rank 0 records each state in the run folder's status.json."""
    stop = stop or StopFlag()  # installed first: a signal during model loading is not lost
    from fgrpo.recipe.io import RecipeError
    from fgrpo.recipe.validate import validate

    folder = RunFolder(run_dir)
    recipe = recipe or folder.read_recipe()
    try:
        validate(recipe, int(os.environ.get("WORLD_SIZE", "1")))
    except RecipeError as e:
        print(f"fgrpo: error: {e}", file=sys.stderr)
        folder.write_status("failed", str(e).replace(":\n  ", ": ", 1).replace("\n  ", "; "))
        return EXIT_BAD_RECIPE
    from fgrpo.distributed import process_group as dist
    from fgrpo.trainer.trainer import NonFiniteError, Trainer

    folder.write_status("running")
    try:
        code = Trainer(recipe, run_dir, stop).run()
    except NonFiniteError as e:
        dist.shutdown()
        print(f"fgrpo: error: {e}", file=sys.stderr)
        folder.write_status("failed", str(e))
        return EXIT_FAILED
    except BaseException:
        dist.shutdown()  # no barrier: another rank may never reach one
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
        folder.write_status("stopped", f"signal {stop.signum}: checkpoint saved, waiting to be resumed")
    else:
        folder.write_status("completed")
    return code
