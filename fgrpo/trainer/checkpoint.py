"""Checkpoints with torch.distributed.checkpoint (DCP): atomic folders, newest-complete resume, keep k.

`checkpoints/step-N/` appears only once every rank has finished writing (a rename after a
barrier), so a kill -9 mid-save leaves the previous checkpoint as the newest. DCP reshards on
load, so a run may resume on a different number of processes. Finding checkpoints (newest,
complete) is the run folder's: `RunFolder(run_dir).latest_checkpoint()` / `complete_checkpoints()`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch.distributed.checkpoint as dcp

from fgrpo.distributed import process_group as dist
from fgrpo.run_folder import checkpoint_path, complete_checkpoints, partial_checkpoint_path


def save(state: dict, ckpt_dir: Path, step: int, keep_last: int) -> Path:
    """Collective: every rank calls it with its own state; returns the final folder. `ckpt_dir` is
    the run's RunFolder.checkpoints; the folder names and what counts as complete are fgrpo.run_folder's."""
    ckpt_dir = Path(ckpt_dir)
    final, partial = checkpoint_path(ckpt_dir, step), partial_checkpoint_path(ckpt_dir, step)
    if dist.rank() == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    dist.barrier()
    dcp.save(state, checkpoint_id=str(partial))
    dist.barrier()
    if dist.rank() == 0:
        if final.exists():  # a re-save of the same step (e.g. after a stop): replace it whole
            shutil.rmtree(final)
        os.replace(partial, final)
        for _, old in complete_checkpoints(ckpt_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load(state: dict, path: Path) -> dict:
    """Load in place into `state` (same structure as saved; DCP reshards tensors)."""
    dcp.load(state, checkpoint_id=str(path))
    return state
