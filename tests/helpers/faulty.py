"""Faults on demand for reliability tests: a reward that fails at its Nth call, a small disk."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import torch

CALLS = {"n": 0}


def flaky(frames, prompts, fail_at="6", mode="raise"):
    """Brightness, until call number `fail_at` (1-based, counted per process): then it raises
    (mode raise) or returns NaN (mode not-finite)."""
    CALLS["n"] += 1
    if CALLS["n"] >= int(fail_at):
        if mode == "raise":
            raise RuntimeError(f"flaky reward gave up at call {CALLS['n']}")
        return torch.full((frames.shape[0],), float("nan"))
    return frames.float().mean(dim=(1, 2, 3, 4))


def preempting(frames, prompts):
    """Brightness; at call number $FAULTY_PREEMPT_AT_CALL (1-based, counted per process) this
    process gets SIGTERM first, as a preemption that arrives while the rewards are scored."""
    CALLS["n"] += 1
    if CALLS["n"] == int(os.environ.get("FAULTY_PREEMPT_AT_CALL", "0")):
        os.kill(os.getpid(), signal.SIGTERM)
    return frames.float().mean(dim=(1, 2, 3, 4))


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4k", read_only: bool = False):
    """A tmpfs of `size` mounted at `path` (root only); yields False where mounting is not
    allowed (the caller injects the same OSError instead)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
