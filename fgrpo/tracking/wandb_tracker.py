"""Weights & Biases: one W&B run per run folder, continued by every resume and requeue.

The run id is kept in RUN/tracking.json (made from the run folder's name and a random suffix the
first time; a fresh start of the folder, with no checkpoint, gets a new one), the run name is the
run folder's name and the config is the resolved recipe. Files go to RUN/wandb/
(`WANDB_MODE=offline` writes only there; `wandb sync RUN/wandb/offline-run-*` uploads later).
A resumed launch re-does the steps past its checkpoint; those were logged already, so records
at or before the last logged (step, record) are skipped: W&B keeps one value per step, and in
offline mode nothing else would stop the duplicates. Samples are `wandb.Video`s captioned with
the prompt and the reward (before -> now).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from fgrpo.run_folder import RunFolder

from .base import FIELD, SampleSet, TrackerError, histograms, scalars


def record_key(record: dict) -> str:
    return f"{record.get('kind')}:{record.get('tag', '')}"


class WandbTracker:
    name = "wandb"

    def __init__(self, folder: RunFolder, config: dict, project: str, entity: str | None, fresh_start: bool):
        try:
            import wandb
            from wandb.errors import UsageError
        except ImportError as e:
            raise TrackerError(
                f"{FIELD}: wandb needs the wandb package (pip install 'fgrpo[tracking]' or pip install wandb): {e}"
            ) from None
        self.wandb, self.folder = wandb, folder
        state = folder.read_tracking()
        mine: dict[str, Any] = state.get("wandb") or {}
        if fresh_start and mine.get("logged"):  # steps restart at 0: W&B would drop them from the old run
            mine = {}
        if not mine.get("id"):
            slug = re.sub(r"[^A-Za-z0-9_-]+", "-", folder.path.name).strip("-")[:48] or "run"
            mine = {"id": f"{slug}-{secrets.token_hex(4)}"}
        self.state, self.mine = state, mine
        self._save()
        try:
            self.run = wandb.init(
                project=project,
                entity=entity,
                id=mine["id"],
                name=folder.path.name,
                config=config,
                dir=str(folder.wandb_parent),
                resume="allow",
                settings=wandb.Settings(console="off", quiet=True, save_code=False, x_disable_stats=True),
            )
        except UsageError as e:
            if "api key" in str(e).lower() or "api_key" in str(e).lower():
                raise TrackerError(
                    f"{FIELD}: wandb has no API key: set WANDB_API_KEY or run `wandb login`, or log "
                    f"offline with WANDB_MODE=offline (files in {folder.path}/wandb; `wandb sync` "
                    "uploads them later)"
                ) from None
            raise TrackerError(f"{FIELD}: wandb could not start: {e}") from None
        except Exception as e:  # noqa: BLE001 - no network, a bad entity: the run goes on without W&B
            raise TrackerError(f"{FIELD}: wandb could not start ({type(e).__name__}: {str(e).strip()[:300]})") from None

    def _save(self) -> None:
        self.state["wandb"] = self.mine
        self.folder.write_tracking(self.state)

    def _seen(self, record: dict) -> bool:
        logged = self.mine.get("logged")
        if not logged:
            return False
        step, keys = logged
        return record["step"] < step or (record["step"] == step and record_key(record) in keys)

    def log(self, record: dict, samples: SampleSet | None = None) -> None:
        if self._seen(record):
            return
        wandb, step = self.wandb, int(record["step"])
        data: dict = dict(scalars(record))
        for tag, values in histograms(record).items():
            if all(float(v).is_integer() for v in values):  # step indices: one bin per index
                import numpy as np

                edges = np.arange(min(values), max(values) + 2) - 0.5
                data[tag] = wandb.Histogram(np_histogram=np.histogram(values, bins=edges))
            else:
                data[tag] = wandb.Histogram(values)
        if samples is not None:
            grid = samples.grid()
            if grid:
                data["samples/grid"] = wandb.Video(str(grid[0]), caption=grid[1], format=grid[0].suffix[1:])
            for i, (path, caption) in enumerate(samples.videos()):
                data[f"samples/prompt-{i:02d}"] = wandb.Video(str(path), caption=caption, format=path.suffix[1:])
        self.run.log(data, step=step)
        logged = self.mine.get("logged")
        keys = logged[1] if logged and logged[0] == step else []
        self.mine["logged"] = [step, sorted({*keys, record_key(record)})]
        self._save()

    def close(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)
