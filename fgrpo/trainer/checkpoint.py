"""Checkpoints with torch.distributed.checkpoint (DCP): atomic folders, newest-complete resume, keep k.

`checkpoints/step-N/` appears only once every rank has finished writing (a rename after a
barrier), so a kill -9 mid-save leaves the previous checkpoint as the newest. DCP reshards on
load, so a run may resume on a different number of processes.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch.distributed.checkpoint as dcp

from . import dist

STEP_DIR = re.compile(r"^step-(\d+)$")


def complete_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of complete checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / ".metadata").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(ckpt_dir: Path) -> tuple[int, Path] | None:
    found = complete_checkpoints(ckpt_dir)
    return found[-1] if found else None


def save(state: dict, ckpt_dir: Path, step: int, keep_last: int) -> Path:
    """Collective: every rank calls it with its own state; returns the final folder."""
    final = ckpt_dir / f"step-{step}"
    partial = ckpt_dir / f".step-{step}.partial"
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
