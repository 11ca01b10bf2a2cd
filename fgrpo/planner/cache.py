"""The pre-flight's plans, cached in $FGRPO_CACHE/plans/<key>.json.

Planning runs every phase on fake tensors: a minute for the 14B recipe on 2 cores, for every
`fgrpo launch --backend slurm|k8s`, dry runs included. A dry run and the launch after it (or a
relaunch) plan the same thing, so the fake run's result (`FakeRun` in fgrpo/planner/plan.py) is kept,
keyed by everything it reads: the recipe less the settings it never reads (the name, files and
paths, rewards, which are counted afresh from their configs, logging, launch, checkpointing),
the world size (the layout follows from it and the parallelism settings), the target, and the
code that runs it: fgrpo's own source files and the torch, diffusers and transformers versions,
so an edited planner or an upgrade never reads an old result. A damaged entry is ignored,
recomputed and replaced; a cache folder that cannot be written only costs the time.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from fgrpo.fileio import atomic_write_json, read_json
from fgrpo.recipe.config import Recipe

T = TypeVar("T")

# What the fake run never reads: top-level sections, and single fields of the others.
_UNREAD_SECTIONS = ("name", "logging", "launch", "checkpoint", "reward_server", "rewards")
_UNREAD_FIELDS = (("model", "path"), ("prompts", "file"))


def plan_key(recipe: Recipe, world: int, target: str) -> str:
    """The cache key of `recipe`'s fake run on `world` ranks for `target`."""
    from fgrpo.recipe.io import to_dict

    fields = {k: v for k, v in to_dict(recipe).items() if k not in _UNREAD_SECTIONS}
    for section, name in _UNREAD_FIELDS:
        fields[section] = {k: v for k, v in fields[section].items() if k != name}
    text = json.dumps(
        {"recipe": fields, "world": world, "target": target, "code": code_identity()}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@lru_cache(maxsize=1)
def code_identity() -> dict[str, str]:
    """A hash of fgrpo's source files and the versions of the libraries a plan runs."""
    import diffusers
    import torch
    import transformers

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return {
        "fgrpo": digest.hexdigest()[:16],
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
    }


def plan_cache_dir() -> Path:
    from fgrpo.models.wan.random_build import cache_dir

    return cache_dir() / "plans"


def cached(key: str, compute: Callable[[], T], encode: Callable[[T], dict], decode: Callable[[dict], T]) -> T:
    """The value stored under `key` (decoded), or `compute()`'s, stored for next time. A stored
    value that `decode` rejects (KeyError, TypeError, ValueError) is computed again and replaced."""
    path = plan_cache_dir() / f"{key}.json"
    found = read_json(path)
    if isinstance(found, dict) and found.get("key") == key:
        try:
            return decode(found["value"])
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # damaged: computed again and replaced below
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"key": key, "value": encode(value)})
    except OSError:  # a read-only cache costs the time, not the plan
        pass
    return value
