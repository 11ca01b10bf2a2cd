"""Trackers never stop a run: a missing package, wandb without an API key or a tracker failing
while logging get one message naming logging.trackers, and metrics.jsonl goes on. The W&B run
id belongs to the run folder: kept across resumes, new after a fresh start."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from fgrpo.recipe.io import load_recipe_file
from fgrpo.run_folder import RunFolder
from fgrpo.tracking import JsonlTracker, Trackers, open_trackers
from tests.conftest import REPO
from tests.helpers.runs import BASE_ARGS
from tests.helpers.tracking import wandb_history, wandb_offline_runs, wandb_run_info


def tiny_recipe(*trackers: str):
    r = load_recipe_file(REPO / "recipes" / "tiny.py")
    return dataclasses.replace(r, logging=dataclasses.replace(r.logging, trackers=("jsonl", *trackers)))


def test_missing_packages_are_named_and_the_run_goes_on(tmp_path, monkeypatch):
    for name in ("wandb", "tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: `import` raises ImportError
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    said = []
    trackers = open_trackers(folder, tiny_recipe("tensorboard", "wandb"), None, said.append)
    assert trackers.names == ["jsonl"]
    assert len(said) == 2 and all(m.startswith("logging.trackers: ") for m in said)
    assert "tensorboard needs the tensorboard package" in said[0] and "pip install 'fgrpo[tracking]'" in said[0]
    assert "wandb needs the wandb package" in said[1] and said[1].endswith("continuing without wandb")
    trackers.log({"kind": "train", "step": 1, "reward_mean": 0.5})
    assert folder.read_metrics("train") == [{"kind": "train", "step": 1, "reward_mean": 0.5}]


class Broken:
    name = "broken"

    def __init__(self):
        self.closed = None

    def log(self, record, samples=None):
        raise OSError("disk full")

    def close(self, exit_code=0):
        self.closed = exit_code


def test_a_tracker_failing_while_logging_is_dropped(tmp_path):
    said, broken = [], Broken()
    trackers = Trackers(JsonlTracker(tmp_path / "metrics.jsonl"), [broken], said.append)
    trackers.log({"kind": "train", "step": 1, "reward_mean": 0.5})
    trackers.log({"kind": "train", "step": 2, "reward_mean": 0.6})
    assert said == ["logging.trackers: broken failed while logging step 1 (OSError: disk full); continuing without it"]
    assert trackers.names == ["jsonl"] and broken.closed == 1
    assert len(RunFolder(tmp_path).read_metrics()) == 2


def test_wandb_without_an_api_key_does_not_stop_the_run(tiny_model_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"))  # no key anywhere
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "fgrpo",
            "launch",
            str(REPO / "recipes" / "tiny.py"),
            "--model.path",
            str(tiny_model_dir),
            "--logging.runs-dir",
            str(tmp_path / "runs"),
            "--logging.run-name",
            "nokey",
            "--optim.max-steps",
            "1",
            *BASE_ARGS,
            "--logging.trackers",
            "wandb",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=500,
        env=env,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "logging.trackers: wandb has no API key: set WANDB_API_KEY or run `wandb login`" in out
    assert "WANDB_MODE=offline" in out and "continuing without wandb" in out
    assert [m["step"] for m in RunFolder(tmp_path / "runs" / "nokey").read_metrics("train")] == [1]


def test_wandb_run_id_is_the_run_folders(tmp_path, monkeypatch):
    """A resume continues the run (and skips what it logged already); a fresh start gets a new id."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    folder = RunFolder(tmp_path / "tiny__mode=fast")
    folder.path.mkdir()
    recipe = tiny_recipe("wandb")

    def launch(resumed_step, steps):
        trackers = open_trackers(folder, recipe, resumed_step, print)
        assert trackers.names == ["jsonl", "wandb"]
        for s in steps:
            trackers.log({"kind": "train", "step": s, "reward_mean": s / 10})
        trackers.close()
        return folder.read_tracking()["wandb"]["id"]

    first = launch(None, [1, 2])
    assert first.startswith("tiny__mode-fast-")  # readable, and only W&B's id characters
    assert launch(1, [2, 3]) == first  # resumed at step 1: step 2 again (skipped), then 3
    fresh = launch(None, [1])  # no checkpoint: steps start again, in a new W&B run
    assert fresh != first
    runs = wandb_offline_runs(folder.path)
    assert [wandb_run_info(d)["id"] for d in runs] == [first, first, fresh]
    assert {wandb_run_info(d)["name"] for d in runs} == {"tiny__mode=fast"}
    logged = [[s for s, v in wandb_history(d) if "train/reward_mean" in v] for d in runs]
    assert logged == [[1, 2], [3], [1]]
