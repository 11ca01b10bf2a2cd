"""One job per run folder: an advisory lock that dies with its holder.

Rank 0 of a run holds `fcntl.flock(LOCK_EX)` on RUN/.lock for the life of the run; the kernel
drops it when the process exits, however it exits (kill -9 included), so a stale lock never
blocks a relaunch. The file's content names the holder (backend, job id, host, pid, start time),
so a refused launch can say who holds it. Probing with LOCK_SH tells whether anyone holds it,
which is how a status of "running" left by a killed trainer is found stale.

Filesystems without working locks (some NFS mounts without lockd, FUSE mounts) make flock fail
with ENOLCK / EOPNOTSUPP: then the run goes on unlocked, with a warning, and a second launch is
refused only while the scheduler still reports the run's newest job as active. NFSv4 and Lustre
(mounted with flock) and the local filesystems hold flock across clients.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunLockedError(RuntimeError):
    """The run folder belongs to another live job."""


class RunLock:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None
        self.supported = True

    def holder(self) -> dict | None:
        try:
            found = json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    def describe_holder(self) -> str:
        h = self.holder() or {}
        if not h:
            return "another process"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("time", 0)))
        return (
            f"{h.get('backend', '?')} job {h.get('job_id', '?')} (host {h.get('host', '?')}, "
            f"pid {h.get('pid', '?')}, since {since})"
        )

    def acquire(self, holder: dict, wait_s: float = 0.0) -> bool:
        """Take the lock, retrying for `wait_s` (a requeued job's predecessor may still be exiting).
        Returns False when the filesystem has no working locks (the caller warns). Raises
        RunLockedError naming the holder otherwise."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RunLockedError(f"{self.path.parent} is in use by {self.describe_holder()}") from None
                time.sleep(0.2)
            except OSError as e:
                if e.errno not in UNSUPPORTED:
                    os.close(fd)
                    raise
                os.close(fd)
                self.supported = False
                return False
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({**holder, "time": time.time()}) + "\n").encode(), 0)
        os.fsync(fd)
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def probe(self) -> str:
        """'held' (a live process holds it), 'free', or 'unknown' (no working locks here)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return "free"
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return "held"
        except OSError as e:
            if e.errno in UNSUPPORTED:
                return "unknown"
            raise
        finally:
            os.close(fd)
        return "free"


@contextmanager
def exclusive(path: Path, wait_s: float = 30.0) -> Iterator[None]:
    """A short critical section between processes (a read-then-write of one file). Waits for the
    holder at most `wait_s`, then goes on unlocked, as it does where the filesystem has no working
    locks: the section is a best effort, never a reason to hang or fail."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
            except OSError as e:
                if e.errno not in UNSUPPORTED:
                    raise
                break
        yield
    finally:
        os.close(fd)  # drops the flock, if taken
