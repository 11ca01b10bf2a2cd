"""Which fgrpo wrote a run folder's records, and whether this fgrpo can read them.

recipe.json, status.json, rewards.json and every checkpoint's manifest carry `fgrpo_version` (the
package that wrote them) and `format_version` (RUN_FORMAT_VERSION: the layout of the run folder
and its checkpoints). A record without the field predates it and is format 1. A record of a newer
format than this code's is refused, naming the file and both versions: an older fgrpo resuming it
could misread fields it does not know, or write over them.
"""

from __future__ import annotations

from pathlib import Path

from fgrpo import __version__

# Raise it when the run folder or checkpoints change in a way an older fgrpo would misread.
RUN_FORMAT_VERSION = 1
VERSION_KEY, FORMAT_KEY = "fgrpo_version", "format_version"


class RunFormatError(ValueError):
    """A run-folder record written in a newer format than this fgrpo reads (exit status 2)."""


def version_stamp() -> dict:
    """The fields every run-folder record carries: this fgrpo and its format."""
    return {VERSION_KEY: __version__, FORMAT_KEY: RUN_FORMAT_VERSION}


def record_format(record) -> int:
    """A record's format: its `format_version`, 1 where it has none (written before the field)."""
    found = record.get(FORMAT_KEY, 1) if isinstance(record, dict) else 1
    if isinstance(found, bool) or not isinstance(found, int):
        raise RunFormatError(f"{FORMAT_KEY} must be an integer, got {found!r}")
    return found


def format_problem(record, file: Path) -> str | None:
    """Why this fgrpo must not read or resume `record` (the JSON of `file`), or None."""
    try:
        found = record_format(record)
    except RunFormatError as e:
        return f"{file}: {e}"
    if found <= RUN_FORMAT_VERSION:
        return None
    writer = record.get(VERSION_KEY, "?")
    return (
        f"{file} was written by fgrpo {writer} in run-folder format {found}, newer than this fgrpo "
        f"({__version__}) reads (format {RUN_FORMAT_VERSION}); continue the run with fgrpo {writer} or newer"
    )


def check_format(record, file: Path) -> None:
    """RunFormatError naming `file` and both versions when `record` is of a newer format."""
    problem = format_problem(record, file)
    if problem:
        raise RunFormatError(problem)
