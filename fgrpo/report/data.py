"""What a report shows, read from run folders only: recipes, metrics records, sample indexes.

A target is a run folder, a sweep folder (its sweep.json lists the runs) or a folder of runs;
several targets are several runs. Runs are labelled by the recipe fields that differ between
them; runs that differ only in seed fields (any field named `seed`, e.g. prompts.seed) form one
series, drawn as the mean over its seeds with a band from the lowest to the highest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgrpo.fileio import read_json
from fgrpo.run_folder import SWEEP_INDEX, RunFolder, report_file
from fgrpo.run_folder.samples import SampleFolder

# Fields that say where and how a run ran, not what it trained: never a run's label.
NOT_LABELS = ("logging.", "launch.", "checkpoint.", "reward_server.", "name")


def is_seed(key: str) -> bool:
    return key.rsplit(".", 1)[-1] == "seed"


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "args":
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, dict) for x in v):  # rewards
            for i, item in enumerate(v):
                out.update(flatten(item, f"{key}.{i}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple, dict)) else v
    return out


@dataclass
class RunData:
    path: Path
    recipe: dict[str, Any]  # flattened: {"algorithm.mode": "flash", ...}
    train: list[dict]
    evals: list[dict]
    status: dict
    problem: str = ""  # why the recipe could not be read, if it could not
    label: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def samples(self) -> SampleFolder:
        return RunFolder(self.path).sample_folder

    @property
    def step(self) -> int:
        return self.train[-1]["step"] if self.train else 0

    def heldout(self) -> float | None:
        """The latest held-out reward (the final evaluation once there is one)."""
        return self.evals[-1].get("eval_reward") if self.evals else None

    def heldout_before(self) -> float | None:
        found = [e for e in self.evals if e.get("tag") == "before"]
        return found[0].get("eval_reward") if found else None

    def last(self, key: str):
        for r in reversed(self.train + self.evals):
            if isinstance(r.get(key), (int, float)):
                return r[key]
        return None


def load_run(path: Path) -> RunData:
    folder = RunFolder(path)
    from fgrpo.recipe.io import to_dict

    problem, recipe = "", {}
    try:
        recipe = flatten(to_dict(folder.read_recipe()))
    except (ValueError, OSError) as e:
        problem = str(e)
    records = folder.read_metrics()
    train = sorted((r for r in records if r.get("kind") == "train"), key=lambda r: r.get("step", 0))
    evals = [r for r in records if r.get("kind") == "eval"]
    return RunData(Path(path), recipe, train, evals, folder.read_status(), problem)


def _runs_in(target: Path) -> tuple[list[Path], Path] | None:
    """(runs, the report's default path) of one target, None when it is none of the three."""
    if RunFolder(target).is_run():
        return [target], RunFolder(target).report_file
    sweep = read_json(target / SWEEP_INDEX)
    if isinstance(sweep, dict) and isinstance(sweep.get("runs"), list):
        return [Path(p) for p in sweep["runs"] if RunFolder(Path(p)).is_run()], report_file(target)
    if target.is_dir():
        found = sorted(p for p in target.iterdir() if RunFolder(p).is_run())
        if found:
            return found, report_file(target)
    return None


def resolve_targets(targets: list[Path]) -> tuple[list[Path], Path | None]:
    """The run folders the targets name, and where their report goes by default (None for several
    targets: the caller says where)."""
    runs: list[Path] = []
    default = None
    for t in targets:
        found = _runs_in(Path(t))
        if found is None:
            raise FileNotFoundError(
                f"{t} is not a run folder (recipe.json), a sweep folder (sweep.json) or a folder of runs"
            )
        runs += [r for r in found[0] if r not in runs]
        default = found[1]
    if not runs:
        raise FileNotFoundError(f"no run folders in {', '.join(map(str, targets))} (has the sweep started?)")
    return runs, default if len(targets) == 1 else None


@dataclass
class Series:
    """A curve of the comparison: one run, or the runs that differ only in their seeds."""

    label: str
    runs: list[RunData] = field(default_factory=list)

    @property
    def seeds(self) -> int:
        return len(self.runs)

    def heldout(self) -> float | None:
        vals = [v for r in self.runs if (v := r.heldout()) is not None]
        return sum(vals) / len(vals) if vals else None


def label_runs(runs: list[RunData]) -> list[Series]:
    """Label each run by the fields that differ among the runs, and group the seeds."""
    keys = sorted({k for r in runs for k in r.recipe})
    varying = [k for k in keys if not k.startswith(NOT_LABELS) and len({json.dumps(r.recipe.get(k)) for r in runs}) > 1]
    groups: dict[str, Series] = {}
    for r in runs:
        parts = [f"{k}={r.recipe.get(k)}" for k in varying]
        r.label = ", ".join(parts) or r.name
        group = ", ".join(p for k, p in zip(varying, parts) if not is_seed(k)) or (r.name if not varying else "all")
        groups.setdefault(group, Series(group)).runs.append(r)
    return list(groups.values())


def leaderboard(runs: list[RunData]) -> list[dict]:
    """One row per run, best held-out reward first (runs without one last)."""
    rows = []
    for r in runs:
        rows.append(
            {
                "run": r.name,
                "label": r.label,
                "heldout": r.heldout(),
                "heldout_before": r.heldout_before(),
                "train_reward": r.train[-1].get("reward_mean") if r.train else None,
                "step": r.step,
                "flops": r.last("compute/flops"),
                "wall_s": r.last("compute/wall_s"),
                "state": r.status.get("state", "-"),
                "problem": r.problem,
            }
        )
    rows.sort(key=lambda x: -(x["heldout"] if x["heldout"] is not None else float("-inf")))
    for i, row in enumerate(rows, 1):
        row["rank"] = i
    return rows


def group_board(series: list[Series]) -> list[dict]:
    """One row per series of several seeds: mean and range of the held-out reward."""
    rows = []
    for s in series:
        vals = [v for r in s.runs if (v := r.heldout()) is not None]
        if len(s.runs) < 2 or not vals:
            continue
        rows.append(
            {
                "label": s.label,
                "seeds": len(s.runs),
                "mean": sum(vals) / len(vals),
                "min": min(vals),
                "max": max(vals),
                "runs": [r.name for r in s.runs],
            }
        )
    rows.sort(key=lambda x: -x["mean"])
    return rows
