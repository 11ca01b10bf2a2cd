"""Atomic file writes, the one implementation every module uses (run folders, caches, builds).

A reader never sees half a file: the text goes to a hidden temporary sibling (named by pid, so
concurrent writers never share one), is flushed and fsynced, then renamed over the target.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden temporary sibling of `path` to write (by name: some writers, such as PyAV, open the
    file themselves); renamed over `path` when the block ends without an error, removed otherwise.
    Files get the umask's permissions, like any other file the user writes (mkstemp's 0600 would
    hide a run's videos from the teammates who read its report)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling folder of `path` to fill; it replaces `path` (and whatever was there) when
    the block ends without an error, and is removed otherwise: an interrupted build or copy never
    leaves a folder that looks complete."""
    import shutil
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            try:
                os.fsync(f.fileno())
            except OSError:  # some network filesystems refuse fsync; the rename still orders it
                pass


def atomic_write_json(path: str | os.PathLike, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def read_json(path: str | os.PathLike, default=None):
    """The JSON in `path`, or `default` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of an append-only JSONL file; a torn line (a crash mid-write) is skipped."""
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def append_jsonl(path: str | os.PathLike, record: dict, fsync: bool = False) -> None:
    with Path(path).open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        if fsync:
            try:
                os.fsync(f.fileno())
            except OSError:
                pass


def env_rank() -> int:
    """This process's global rank as its launcher set it (valid before any process group exists)."""
    return int(os.environ.get("RANK", "0"))
