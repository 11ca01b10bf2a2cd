"""The tracker interface, and how a metrics record becomes tracker scalars, histograms and media.

A tracker receives every record rank 0 writes to metrics.jsonl (`kind` train or eval, with its
`step`), an evaluation's record together with its held-out samples. Tags: a train record's
`reward_mean` is `train/reward_mean` and `reward/brightness` is `train/reward/brightness`; an
eval record's `eval_reward` is `eval/reward` and `eval/brightness` stays `eval/brightness`. The
cumulative compute (`compute/...`) is logged with train records only (an eval record repeats it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fgrpo.run_folder.samples import SampleFolder

NOT_SCALARS = ("kind", "step", "time", "tag")
HISTOGRAMS = {"timestep_indices": "train/timestep_indices", "eval_rewards": "eval/rewards"}
FIELD = "logging.trackers"  # the recipe field every tracker message names


class TrackerError(RuntimeError):
    """A tracker could not start; the message names the field and says what to do."""


def tag_of(kind: str, key: str) -> str:
    if kind == "eval":
        for prefix in ("eval_", "eval/"):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        return f"eval/{key}"
    return f"{kind}/{key}"


def scalars(record: dict) -> dict[str, float]:
    """The record's finite numbers by tag; per-rank lists (`..._per_rank`) as one tag per rank."""
    kind, out = record.get("kind", "train"), {}
    for k, v in record.items():
        if k in NOT_SCALARS or k in HISTOGRAMS or isinstance(v, bool):
            continue
        if kind == "eval" and k.startswith("compute/"):
            continue
        if isinstance(v, (int, float)):
            if math.isfinite(v):
                out[tag_of(kind, k)] = float(v)
        elif isinstance(v, list) and k.endswith("_per_rank") and all(isinstance(x, (int, float)) for x in v):
            for r, x in enumerate(v):
                out[f"{tag_of(kind, k)}/rank-{r}"] = float(x)
    return out


def histograms(record: dict) -> dict[str, list[float]]:
    return {
        tag: [float(x) for x in record[k]]
        for k, tag in HISTOGRAMS.items()
        if isinstance(record.get(k), list) and record[k]
    }


@dataclass(frozen=True)
class SampleSet:
    """An evaluation's held-out samples, as its index (fgrpo.run_folder.samples) names them."""

    folder: SampleFolder
    tag: str

    @property
    def index(self) -> dict:
        return self.folder.read_index(self.tag) or {}

    def grid(self) -> tuple[Path, str] | None:
        """(grid video, its caption: every prompt with its reward)."""
        ix = self.index
        if not ix.get("grid"):
            return None
        return self.folder.resolve(ix["grid"]), f"{self.tag}: " + " | ".join(ix.get("grid_captions", []))

    def videos(self) -> list[tuple[Path, str]]:
        """(video, caption) per prompt, the caption the prompt and its reward (before -> now)."""
        out = []
        for v in self.index.get("videos", []):
            before = v.get("reward_before")
            reward = f"{before:+.4f} -> {v['reward']:+.4f}" if before is not None else f"{v['reward']:+.4f}"
            out.append((self.folder.resolve(v["video"]), f"{v['prompt']} (reward {reward})"))
        return out


class Tracker(Protocol):
    name: str

    def log(self, record: dict, samples: SampleSet | None = None) -> None:
        """One train or eval record (and an evaluation's samples); raises on failure."""

    def close(self, exit_code: int = 0) -> None:
        """Flush and finish the run (a tracker's own resume continues it)."""
