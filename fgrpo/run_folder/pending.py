"""A step's finished rollouts, kept across a stop: `checkpoints/rollouts-N/rank-R-of-W.pt`.

On the paper's 14B recipe the rollouts are most of a step (`fgrpo plan`: 326 of 459 GPU-minutes).
A stop (preemption, cancel) that arrives once a step's rollouts and rewards are complete keeps
them here, beside the checkpoint of the step before (step N's rollouts next to `step-N`); the
resumed job trains step N from them instead of rolling out again. Each rank writes its own file
atomically (fgrpo.fileio), so a kill while saving leaves either a whole file or none; the set is
used only when every rank of the same world size finds its own (the trainer agrees on it with an
all-reduce), and is deleted once a later checkpoint exists. Nothing else is needed to make the
resumed update the uninterrupted one: the sampler is rewound to the step's start and the model and
optimizer come from `step-N`, and all other randomness is a function of (seed, step, video).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from fgrpo.fileio import atomic_path

ROLLOUT_DIR = re.compile(r"^rollouts-(\d+)$")


def rollouts_dir(ckpt_dir: Path, step: int) -> Path:
    """Where the rollouts of the step that starts from checkpoint `step-{step}` are kept."""
    return Path(ckpt_dir) / f"rollouts-{step}"


def _rank_file(ckpt_dir: Path, step: int, rank: int, world: int) -> Path:
    return rollouts_dir(ckpt_dir, step) / f"rank-{rank}-of-{world}.pt"


def save_rollouts(ckpt_dir: Path, step: int, rank: int, world: int, state: dict) -> Path:
    """Write this rank's share of step `step`'s rollouts (a dict of tensors, lists and numbers)."""
    path = _rank_file(ckpt_dir, step, rank, world)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_rollouts(ckpt_dir: Path, step: int, rank: int, world: int) -> tuple[dict | None, str]:
    """This rank's kept rollouts of step `step`, or None and why not ("" when there are none)."""
    folder = rollouts_dir(ckpt_dir, step)
    if not folder.is_dir():
        return None, ""
    path = _rank_file(ckpt_dir, step, rank, world)
    if not path.is_file():
        kept = sorted(p.name for p in folder.glob("rank-*.pt"))
        return None, f"{folder} has {', '.join(kept) or 'no files'}, not {path.name}"
    try:
        return torch.load(path, weights_only=True), ""
    except Exception as e:  # a damaged file: roll out again
        return None, f"{path} is unreadable ({type(e).__name__}: {e})"


def drop_rollouts(ckpt_dir: Path, before: int | None = None) -> None:
    """Delete kept rollouts: all of them, or those of steps before `before` (used up or stale)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return
    for p in ckpt_dir.iterdir():
        m = ROLLOUT_DIR.match(p.name)
        if m and (before is None or int(m.group(1)) < before):
            shutil.rmtree(p, ignore_errors=True)
