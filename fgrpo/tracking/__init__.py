"""Experiment tracking: every train and eval record rank 0 writes, to every tracker the recipe names.

    logging.trackers = ("jsonl",)                          RUN/metrics.jsonl, always (fgrpo.tracking.jsonl)
    logging.trackers = ("jsonl", "tensorboard", "wandb")   + RUN/tensorboard/, + a W&B run (RUN/wandb/)

`Trackers` fans a record out to each; a tracker that cannot start (a missing package, wandb
without an API key) or that fails while logging is dropped with one message naming the field, and
the run goes on: only metrics.jsonl, which resume and `fgrpo status` read, may fail the run.

torchtitan's loggers (torchtitan.components.metrics: TensorBoardLogger, WandBLogger) are not
used. The module imports torchtitan's JobConfig, ParallelDims and optimizer containers, and
torchtitan is not a dependency (docs/design.md, "Dependencies"); WandBLogger takes a JobConfig
(its to_dict() is the W&B config), reads the project from WANDB_PROJECT and passes no run id or
resume, so every launch would be a new W&B run; its builder puts every launch's TensorBoard files
in a new timestamped folder, without a purge step; and both log flat scalar dicts only (no
videos, captions or histograms). What is left of them is SummaryWriter.add_scalar and
wandb.log(step=...), which fgrpo calls directly.
"""

from __future__ import annotations

from typing import Callable

from fgrpo.run_folder import RunFolder

from .base import FIELD, SampleSet, Tracker, TrackerError, histograms, scalars, tag_of
from .jsonl import JsonlTracker


class Trackers:
    """metrics.jsonl first (its failures are the run's), then the optional trackers (theirs never are)."""

    def __init__(self, jsonl: Tracker, optional: list[Tracker] | None = None, say: Callable[[str], None] = print):
        self.jsonl, self.optional, self.say = jsonl, list(optional or []), say

    @property
    def names(self) -> list[str]:
        return [self.jsonl.name] + [t.name for t in self.optional]

    def log(self, record: dict, samples: SampleSet | None = None) -> None:
        self.jsonl.log(record)
        for t in list(self.optional):
            try:
                t.log(record, samples)
            except Exception as e:  # noqa: BLE001 - a tracker never stops the run
                self._drop(t, f"failed while logging step {record.get('step')} ({type(e).__name__}: {e})")

    def _drop(self, t: Tracker, why: str) -> None:
        self.optional.remove(t)
        self.say(f"{FIELD}: {t.name} {why}; continuing without it")
        try:
            t.close(1)
        except Exception:  # noqa: BLE001
            pass

    def close(self, exit_code: int = 0) -> None:
        for t in self.optional:
            try:
                t.close(exit_code)
            except Exception as e:  # noqa: BLE001
                self.say(f"{FIELD}: {t.name} could not finish ({type(e).__name__}: {e})")
        self.optional = []


def open_trackers(folder: RunFolder, recipe, resumed_step: int | None, say: Callable[[str], None] = print) -> Trackers:
    """The recipe's trackers for rank 0 of a run resumed at `resumed_step` (None: a fresh start)."""
    from fgrpo.recipe.io import to_dict

    optional: list[Tracker] = []
    for name in dict.fromkeys(recipe.logging.trackers):
        try:
            if name == "tensorboard":
                from .tensorboard_tracker import TensorBoardTracker

                optional.append(TensorBoardTracker(folder.tensorboard, 0 if resumed_step is None else resumed_step + 1))
            elif name == "wandb":
                from .wandb_tracker import WandbTracker

                lg = recipe.logging
                optional.append(
                    WandbTracker(
                        folder, to_dict(recipe), lg.wandb_project, lg.wandb_entity, fresh_start=resumed_step is None
                    )
                )
        except TrackerError as e:
            say(f"{e}; continuing without {name}")
        except Exception as e:  # noqa: BLE001 - whatever a tracker raises, the run goes on
            say(f"{FIELD}: {name} could not start ({type(e).__name__}: {e}); continuing without it")
    return Trackers(JsonlTracker(folder.metrics_file), optional, say)


__all__ = [
    "FIELD",
    "JsonlTracker",
    "SampleSet",
    "Tracker",
    "TrackerError",
    "Trackers",
    "histograms",
    "open_trackers",
    "scalars",
    "tag_of",
]
