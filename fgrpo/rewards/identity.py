"""A reward's identity: what it scores with, recorded with a run and checked at every start.

The identity of one reward spec::

    {"key": "hpsv3", "name": "hpsv3", "weight": 1.0, "frame_aggregation": "topk:0.3",
     "settings": {"dtype": "auto", "min_pixels": 3136, "model_path": "/m/Qwen2-VL", ...},
     "files": {"model_path": {"path": "/m/Qwen2-VL", "bytes": ..., "digest": "..."}, ...}}

``settings`` are the reward function's keyword defaults overridden by the spec's ``args`` (so a
default changed by an fgrpo upgrade counts too), without those that never change a score
(NOT_SCORING). ``files`` fingerprint every argument naming a file or folder on the machine that
loads the reward: a file of up to FULL_HASH_BYTES is hashed whole; a bigger one by its size and its
first, middle and last MiB (hashing 15 GB of weights at every start would take minutes; the size and
mtime would change with every copy, and jobs that copy weights to a node-local disk at each start
would then never resume). A folder's digest covers its files' names, sizes and digests, hidden
files aside (download caches keep changing bookkeeping there).

The trainer records the identities in the run folder (``rewards.json``) at the run's first start
and refuses a later start that would score with another (:func:`rewards_changed`); the reward
server's handshake (``POST /handshake``) refuses a client expecting another identity than it serves.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

from fgrpo.rewards.base import WeightedRewards, get_reward_info, spec_field

__all__ = [
    "FULL_HASH_BYTES",
    "NOT_SCORING",
    "file_fingerprint",
    "identity_differences",
    "reward_identities",
    "rewards_changed",
]

FULL_HASH_BYTES = 64 << 20
SAMPLE_BYTES = 1 << 20
NOT_SCORING = ("batch_size", "device")  # how a reward is computed, not what it scores


def _json_value(value: Any) -> Any:
    """`value` as JSON gives it back (tuples as lists); other objects by name, never by address."""

    def name(o: Any) -> str:
        return getattr(o, "__qualname__", None) or re.sub(r" at 0x[0-9a-fA-F]+", "", str(o))

    return json.loads(json.dumps(value, sort_keys=True, default=name))


def scorer_settings(fn: Any, args: dict) -> dict:
    """The reward function's keyword defaults overridden by `args`, less NOT_SCORING."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a callable without a readable signature: its args only
        params = []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    found = {p.name: p.default for p in params if p.kind in kinds and p.default is not inspect.Parameter.empty}
    found.update(args)
    return {k: _json_value(v) for k, v in sorted(found.items()) if k not in NOT_SCORING}


def _file_digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(str(size).encode())
            for offset in (0, size // 2, size - SAMPLE_BYTES):
                f.seek(offset)
                h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def _folder_files(folder: Path) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(root) / f for f in sorted(files) if not f.startswith(".")]
    return out


def file_fingerprint(path: str | Path) -> dict:
    """``{"path", "bytes", "digest"}`` of a file or folder (see the module's docstring)."""
    path = Path(path).expanduser()
    if path.is_file():
        size = path.stat().st_size
        return {"path": str(path), "bytes": size, "digest": _file_digest(path, size)}
    h, total = hashlib.sha256(), 0
    for f in _folder_files(path):
        if f.is_file():  # a dangling link is no weight
            size = f.stat().st_size
            total += size
            h.update(f"{f.relative_to(path).as_posix()}\t{size}\t{_file_digest(f, size)}\n".encode())
    return {"path": str(path), "bytes": total, "digest": h.hexdigest()}


def _names_a_path(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and Path(value).expanduser().exists()


def reward_identities(specs: Any, fingerprint: bool = True) -> list[dict]:
    """The identity of each spec, in spec order. `fingerprint=False`: without ``files`` (a trainer
    whose rewards a server loads cannot see the server's files)."""
    specs = list(specs)
    out = []
    for key, spec in zip(WeightedRewards.keys(specs), specs):
        name = spec_field(spec, "name", None)
        args = dict(spec_field(spec, "args", None) or {})
        out.append(
            {
                "key": key,
                "name": name,
                "weight": float(spec_field(spec, "weight", 1.0)),
                "frame_aggregation": spec_field(spec, "frame_aggregation", "mean"),
                "settings": scorer_settings(get_reward_info(name).fn, args),
                "files": {k: file_fingerprint(v) for k, v in sorted(args.items()) if fingerprint and _names_a_path(v)},
            }
        )
    return out


_UNSET = object()


def _show(settings: dict, key: str) -> str:
    value = settings.get(key, _UNSET)
    return "(unset)" if value is _UNSET else json.dumps(value)


def _reward_changes(expected: dict, actual: dict) -> list[str]:
    changes = [
        f"{f} {json.dumps(expected.get(f))} -> {json.dumps(actual.get(f))}"
        for f in ("name", "weight", "frame_aggregation")
        if expected.get(f) != actual.get(f)
    ]
    want_files, got_files = expected.get("files") or {}, actual.get("files") or {}
    want, got = expected.get("settings") or {}, actual.get("settings") or {}
    # A file's path may differ (the same weights elsewhere on another machine): its content decides.
    for k in sorted((set(want) | set(got)) - set(want_files) - set(got_files)):
        if want.get(k, _UNSET) != got.get(k, _UNSET):
            changes.append(f"args.{k} {_show(want, k)} -> {_show(got, k)}")
    for k, was in sorted(want_files.items()):
        now = got_files.get(k)
        if not isinstance(was, dict) or "digest" not in was:
            continue
        if not isinstance(now, dict):
            where = "is unset now" if k not in got else f"now names {_show(got, k)}, which does not exist here"
            changes.append(f"args.{k}: {was.get('path')} was recorded, but it {where}")
        elif now.get("digest") != was["digest"]:
            changes.append(
                f"args.{k}: the weights at {now.get('path')} changed (digest {str(was['digest'])[:12]}... "
                f"-> {str(now.get('digest'))[:12]}..., {was.get('bytes')} -> {now.get('bytes')} bytes)"
            )
    return changes


def identity_differences(expected: list[dict], actual: list[dict]) -> list[str]:
    """One line per reward of `actual` that differs from `expected` (the record), saying what
    changed and how; [] when they agree. A file is compared where `expected` holds its
    fingerprint (by content, not path); one `expected` lacks (a first handshake) is not."""
    keys = [e.get("key") for e in expected], [a.get("key") for a in actual]
    if keys[0] != keys[1]:
        return [f"rewards {keys[1]} instead of {keys[0]}"]
    out = []
    for e, a in zip(expected, actual):
        changes = _reward_changes(e, a)
        if changes:
            out.append(f"reward {e.get('key')}: " + "; ".join(changes))
    return out


def rewards_changed(recorded: list[dict] | None, actual: list[dict], record_file: Path) -> str | None:
    """Why a run whose rewards were recorded in `record_file` must not continue scoring with
    `actual` (None: the same, or nothing recorded yet)."""
    diffs = identity_differences(recorded, actual) if recorded is not None else []
    if not diffs:
        return None
    return (
        f"the rewards changed since this run started ({record_file}; then -> now): {'; '.join(diffs)}. "
        "Restore them, or start a new run with --logging.run-name NEW_NAME; to continue this run with the "
        f"new rewards on purpose, delete {record_file}"
    )
