"""Checkpoints with torch.distributed.checkpoint (DCP): atomic folders, a manifest, keep k.

`checkpoints/step-N/` appears only once every rank has finished writing and rank 0 has written
its manifest (a rename after a barrier), so a kill -9 mid-save leaves the previous checkpoint as
the newest. A failed save (a full disk, a read-only folder) removes its partial folder, so that
it does not keep the disk full for the next launch, and says why in one line. DCP reshards on
load, so a run may resume on a different number of processes. Which checkpoints exist and which
can be trusted is the run folder's (`fgrpo.run_folder.checkpoints`).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException: caught by name
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

from fgrpo.distributed import process_group as dist
from fgrpo.run_folder.checkpoints import checkpoint_path, partial_checkpoint_path, rotated_out, write_manifest


class CheckpointSaveError(RuntimeError):
    """Saving failed on some rank (raised on every rank: DCP gathers the failures)."""

    consequence = False  # True on the ranks that only report another rank's failure (set when raised)


def causes(exc: BaseException):
    """`exc` and everything behind it: chained exceptions and DCP's per-rank failures."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]
        for failure in (getattr(e, "failures", None) or {}).values():  # DCP's CheckpointException
            todo.append(failure[0] if isinstance(failure, tuple) else failure)


def describe_save_error(exc: BaseException, where: Path) -> str:
    for e in causes(exc):
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return f"no space left on device while writing {where}"
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"cannot write {where}: {e.strerror} (a read-only or foreign-owned folder?)"
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}"


def model_and_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The trained weights' and the optimizer's DCP state dicts (frozen weights left out), taken
    without changing how training goes on.

    For an optimizer that has not stepped yet, torch's `get_state_dict` makes its state by running
    one step with zero gradients at lr 0: the weights stay, but AdamW's step counter then reads 1,
    and the first real update's bias correction, sqrt(1 - b2^t) / (1 - b1^t) at t = 2, makes it
    0.74x as large as in a run that never saved before its first step. So a best-gold checkpoint
    at step 0, or a stop before the first update, changed the run. The counters are put back to 0:
    with its moments still zero, the state is then a fresh AdamW's, in the live optimizer and in
    the saved copy (they share the tensors), so saving changes nothing and resuming from it trains
    as the run would have gone on."""
    fresh = not optimizer.state
    model_sd, optim_sd = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    if fresh:
        for param_state in optimizer.state.values():
            step = param_state.get("step")
            if isinstance(step, torch.Tensor):
                step.zero_()
    return model_sd, optim_sd


def save(state: dict, ckpt_dir: Path, step: int, keep_last: int, recipe_fingerprint: str = "") -> Path:
    """Collective: every rank calls it with its own state; returns the final folder. `ckpt_dir` is
    the run's RunFolder.checkpoints; the folder names and what counts as complete are fgrpo.run_folder's."""
    ckpt_dir = Path(ckpt_dir)
    final, partial = checkpoint_path(ckpt_dir, step), partial_checkpoint_path(ckpt_dir, step)
    error = None
    if dist.rank() == 0:
        try:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)
        except OSError as e:
            error = e
    if dist.any_rank(error is not None):  # agreed, so no rank waits in a collective alone
        raise CheckpointSaveError(
            f"checkpoint step-{step} not saved: "
            f"{describe_save_error(error, ckpt_dir) if error else 'rank 0 could not create it'}"
        )
    try:
        dcp.save(state, checkpoint_id=str(partial))
        dist.barrier()
        if dist.rank() == 0:
            write_manifest(partial, recipe_fingerprint, step)
            if final.exists():  # a re-save of the same step (e.g. after a stop): replace it whole
                shutil.rmtree(final)
            os.replace(partial, final)
    except (Exception, CheckpointException) as e:
        error = e
    # Agreed on every rank: a rank that failed alone must not leave the others in a collective.
    if dist.any_rank(error is not None):
        if dist.rank() == 0:
            shutil.rmtree(partial, ignore_errors=True)  # a partial folder would keep a full disk full
        why = describe_save_error(error, partial) if error is not None else "failed on another rank"
        failed = CheckpointSaveError(f"checkpoint step-{step} not saved ({why}); the partial folder was removed")
        failed.consequence = error is None  # the rank that failed names why (fgrpo.trainer.failures.is_consequence)
        raise failed from error
    if dist.rank() == 0:
        rotate(ckpt_dir, keep_last)
    dist.barrier()
    return final


def rotate(ckpt_dir: Path, keep_last: int) -> None:
    """Rank 0: remove all but the newest `keep_last` checkpoints and the best-gold one
    (fgrpo.run_folder.checkpoints.rotated_out)."""
    for old in rotated_out(ckpt_dir, keep_last):
        shutil.rmtree(old, ignore_errors=True)


def load(state: dict, path: Path) -> dict:
    """Load in place into `state` (same structure as saved; DCP reshards tensors). DCP gathers
    read errors to every rank, so a failure here is seen by all ranks together."""
    dcp.load(state, checkpoint_id=str(path))
    return state
