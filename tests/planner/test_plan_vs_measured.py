"""The planner against a real run of the tiny model in one process: every phase's predicted peak
memory within 15 % of the measured one (live tensor bytes, torch's MemTracker in real mode), and
the predicted FLOPs equal to FlopCounterMode's count on the real run (rollout, VAE decode,
training forward + backward, evaluation). Plan and run share one subprocess: the planner needs a
process without a process group, the trainer then makes one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path
from fgrpo.recipe.io import load_recipe_file
from fgrpo.planner import plan
from fgrpo.planner.measure import measure_run

recipe = load_recipe_file("recipes/tiny.py")
p = plan(recipe, 1, target="cpu")
with tempfile.TemporaryDirectory() as d:
    measured = measure_run(recipe, Path(d) / "runs" / "tiny")
out = {"phases": {ph.name: ph.peak for ph in p.phases}, "flops": p.flops, "measured": measured}
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def result() -> dict:
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line.removeprefix("RESULT"))


@pytest.mark.parametrize("phase", ["text encoding", "rollout", "VAE decode", "training", "evaluation"])
def test_predicted_memory_within_15_percent(result, phase):
    predicted, measured = result["phases"][phase], result["measured"][phase]["tensors"]
    assert measured > 0
    assert abs(predicted / measured - 1) <= 0.15, (phase, predicted, measured)


@pytest.mark.parametrize("phase", ["rollout", "VAE decode", "training", "evaluation"])
def test_predicted_flops_equal_counted(result, phase):
    counted = result["measured"][phase]["flops"]
    assert counted > 0
    assert result["flops"][phase] == counted, (phase, result["flops"][phase], counted)
