"""The in-job entry point shared by every backend: run folder in, exit code out."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .signals import EXIT_REQUEUE, StopFlag

EXIT_DONE, EXIT_FAILED, EXIT_BAD_RECIPE = 0, 1, 2


def write_status(run_dir: Path, state: str, reason: str = "", **extra) -> None:
    """run_dir/status.json, written atomically by rank 0 (what `fgrpo status` shows)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    tmp = run_dir / ".status.json.tmp"
    tmp.write_text(json.dumps({"state": state, "reason": reason, "time": time.time(), **extra}, indent=2))
    os.replace(tmp, run_dir / "status.json")


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def train_run(run_dir: Path, stop: StopFlag | None = None, recipe=None) -> int:
    """Train the run in `run_dir` from its newest checkpoint. 0 done, 75 stopped (requeue me),
    1 failed, 2 bad recipe."""
    stop = stop or StopFlag()  # installed first: a signal during model loading is not lost
    from fgrpo.recipe.io import load_recipe_json
    from fgrpo.recipe.validate import recipe_problems

    recipe = recipe or load_recipe_json(run_dir / "recipe.json")
    problems = recipe_problems(recipe, int(os.environ.get("WORLD_SIZE", "1")))
    if problems:
        print("fgrpo: error: invalid recipe:\n  " + "\n  ".join(problems), file=sys.stderr)
        write_status(run_dir, "failed", "invalid recipe: " + "; ".join(problems))
        return EXIT_BAD_RECIPE
    from fgrpo.trainer.trainer import NonFiniteError, Trainer

    from fgrpo.trainer import dist

    write_status(run_dir, "running")
    try:
        code = Trainer(recipe, run_dir, stop).run()
    except NonFiniteError as e:
        print(f"fgrpo: error: {e}", file=sys.stderr)
        write_status(run_dir, "failed", str(e))
        return EXIT_FAILED
    finally:
        dist.shutdown()
    if code == EXIT_REQUEUE:
        write_status(run_dir, "stopped", f"signal {stop.signum}: checkpoint saved, waiting to be resumed")
    else:
        write_status(run_dir, "completed")
    return code
