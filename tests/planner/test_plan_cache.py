"""The pre-flight plan is cached per recipe and layout in $FGRPO_CACHE/plans: a second dry run does
not run the phases again; a damaged entry is planned again; a change the plan reads is a new key."""

from __future__ import annotations

import importlib
import io
from contextlib import redirect_stdout
from dataclasses import replace

import pytest

from fgrpo.planner import Gpu, plan
from fgrpo.planner.cache import plan_cache_dir
from fgrpo.recipe.io import load_recipe_file
from tests.conftest import REPO

planner = importlib.import_module("fgrpo.planner.plan")  # the module (fgrpo.planner.plan is also the function)


@pytest.fixture
def fake_runs(tmp_path, monkeypatch) -> list[int]:
    """A fresh cache folder, and the calls of the slow part of planning, counted."""
    monkeypatch.setenv("FGRPO_CACHE", str(tmp_path / "cache"))
    calls: list[int] = []
    real = planner.fake_run

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(planner, "fake_run", counted)
    return calls


def test_a_second_plan_of_the_same_recipe_and_layout_is_read_from_the_cache(fake_runs):
    recipe = load_recipe_file(REPO / "recipes" / "tiny.py")
    first = plan(recipe, 2, Gpu(), cache=True)
    second = plan(recipe, 2, Gpu(), cache=True)
    assert len(fake_runs) == 1
    assert second.to_dict() == first.to_dict() and len(list(plan_cache_dir().iterdir())) == 1
    # Settings the fake run never reads share the entry; the layout and what it reads do not.
    moved = replace(
        recipe, model=replace(recipe.model, path="/elsewhere"), logging=replace(recipe.logging, runs_dir="/other/runs")
    )
    plan(moved, 2, Gpu(), cache=True)
    assert len(fake_runs) == 1
    plan(recipe, 1, Gpu(), cache=True)
    plan(replace(recipe, eval=replace(recipe.eval, videos_per_prompt=2)), 2, Gpu(), cache=True)
    assert len(fake_runs) == 3


def test_a_damaged_cache_entry_is_planned_again_and_replaced(fake_runs):
    recipe = load_recipe_file(REPO / "recipes" / "tiny.py")
    first = plan(recipe, 1, Gpu(), cache=True)
    (entry,) = plan_cache_dir().iterdir()
    for damage in ('{"key": "', entry.read_text().replace('"peak"', '"peek"')):
        entry.write_text(damage)
        assert plan(recipe, 1, Gpu(), cache=True).to_dict() == first.to_dict()
    assert len(fake_runs) == 3
    plan(recipe, 1, Gpu(), cache=True)  # replaced by a good one
    assert len(fake_runs) == 3


def test_a_second_dry_run_with_the_preflight_does_not_plan_again(fake_runs, tmp_path):
    from fgrpo.cli import main

    argv = [
        "launch",
        str(REPO / "recipes" / "tiny.py"),
        "--backend",
        "slurm",
        "--dry-run",
        "--logging.runs-dir",
        str(tmp_path / "runs"),
    ]
    for _ in range(2):
        with redirect_stdout(io.StringIO()) as out:
            assert main(argv) == 0
        assert "#SBATCH" in out.getvalue()
    assert len(fake_runs) == 1
