"""RUN/metrics.jsonl: append-only, one JSON object per record, fsynced. Always on."""

from __future__ import annotations

import math
from pathlib import Path

from fgrpo.fileio import append_jsonl


class JsonlTracker:
    name = "jsonl"

    def __init__(self, path: Path):
        self.path = Path(path)

    def log(self, record: dict, samples=None) -> None:
        """One line, fsynced (a crash loses at most the line being written; readers skip a torn one).
        Non-finite numbers are written as null (JSON has no NaN)."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        append_jsonl(self.path, clean, fsync=True)

    def close(self, exit_code: int = 0) -> None:
        pass
