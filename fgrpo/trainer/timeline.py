"""When each phase of a launch ended, in wall-clock seconds: start-up (process start -> first
step done) and stop (signal -> saved -> exited -> requeued). Rank 0 writes one record per start
and per stop to the run folder's timings.jsonl; benchmarks/slurm_latency.py turns them into a
signal-to-first-step breakdown. One timeline per process: `begin` (train_run) starts it, and only
a begun timeline is written (a Trainer a test builds by hand writes nothing).
"""

from __future__ import annotations

import os
import time

_marks: dict[str, float] = {}
_begun = False
_written: set[str] = set()


def process_start() -> float | None:
    """When this process was started, from /proc (to 1/100 s); None where there is no /proc."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])  # field 22: starttime, ticks after boot
        with open("/proc/uptime") as f:
            boot = time.time() - float(f.read().split()[0])
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def begin() -> None:
    """Start this process's timeline (train_run). Marks made before the first begin (by the
    launcher's job code) are kept; a later begin in the same process starts afresh."""
    global _begun
    if _begun:
        _marks.clear()
        _written.clear()
    _begun = True
    started = process_start()
    if started is not None:
        _marks.setdefault("process_start", started)
    mark("entry")


def mark(phase: str, when: float | None = None) -> None:
    """The end of `phase` (its first end: a later call does not move it)."""
    _marks.setdefault(phase, time.time() if when is None else when)


def write(folder, kind: str, **extra) -> None:
    """Rank 0 appends {"kind": kind, phase: time, ...} to the run folder's timings.jsonl, once
    per kind and process."""
    from fgrpo.fileio import env_rank

    if not _begun or env_rank() != 0 or kind in _written:
        return
    _written.add(kind)
    try:
        folder.record_timings(
            {
                "kind": kind,
                "time": time.time(),
                **_marks,
                **extra,
                "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            }
        )
    except OSError:
        pass  # a measurement: never the reason a run fails
