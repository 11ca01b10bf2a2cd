"""Graceful stop: SIGTERM, SIGUSR2, SIGINT or SIGHUP (a closed terminal or SSH session) set a flag
that the training loop checks often."""

from __future__ import annotations

import signal
import time

# Exit code that launchers read as "stopped cleanly at a checkpoint: requeue me" (EX_TEMPFAIL).
EXIT_REQUEUE = 75


class StopFlag:
    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP)):
        self.signum: int | None = None
        self.time: float | None = None  # when the first signal arrived
        self.received: set[int] = set()  # every signal that arrived
        for s in signals:
            signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        # Only record it: the loop drops the unfinished step and saves at a safe point. A second
        # signal during the save changes nothing (the save is atomic and not interrupted).
        self.received.add(signum)
        if self.signum is None:
            self.signum, self.time = signum, time.time()

    @property
    def raised(self) -> bool:
        return self.signum is not None
