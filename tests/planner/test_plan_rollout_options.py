"""`fgrpo plan --rollout-options`: the recipe's plan and one re-plan per rollout option, each the
planner's own numbers, on the recipe's one fake run."""

from __future__ import annotations

import importlib
import json
from dataclasses import replace

import pytest

from fgrpo.planner import Gpu, plan
from fgrpo.planner.rollout_options import EXACT, OPTION_FIELDS, compare_rollout_options, step_minutes, with_rollout
from fgrpo.recipe.io import load_recipe_file
from tests.conftest import REPO, run_fgrpo

planner = importlib.import_module("fgrpo.planner.plan")  # the module (fgrpo.planner.plan is also the function)


@pytest.fixture
def fake_runs(monkeypatch) -> list[int]:
    """The calls of the slow part of planning, counted."""
    calls: list[int] = []
    real = planner.fake_run

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(planner, "fake_run", counted)
    return calls


def small_wan1_3b(preset: str = "wan2.1-t2v-1.3b"):
    """The 1.3B recipe's settings on 5 frames of 64x64 (as test_plan_cli), to plan fast; `preset`
    swaps the architecture (the tiny one plans in seconds where the 1.3B's fake run takes a minute)."""
    recipe = load_recipe_file(REPO / "recipes" / "wan1_3b.py")
    rollout = replace(recipe.rollout, frames=5, height=64, width=64)
    return replace(recipe, model=replace(recipe.model, preset=preset), rollout=rollout)


def test_wan1_3b_rows_are_the_planners_numbers_for_each_option(fake_runs):
    # The recipe's 20-step grid and SDE window on the tiny architecture: the rows' arithmetic does
    # not depend on the model's size (the CLI test below plans the real 1.3B).
    recipe = small_wan1_3b("tiny")
    rows = compare_rollout_options(recipe, 8, Gpu())
    assert len(fake_runs) == 1  # every option re-planned on the recipe's fake run
    names = [r.option.name for r in rows]
    # 20 steps; the recipe's own rollout (share_prefix, Euler on 6 nodes) first, the options applied
    # to the exact rollout after it.
    assert names == ["recipe", "exact", "share_prefix", "unipc 10", "unipc 6", "share_prefix + unipc 6"]
    assert rows[0].option.overrides == {"share_prefix": True, "ode_solver": "euler", "ode_steps": 6}
    plans = [r.plan for r in rows if r.plan is not None and not r.skipped]
    assert len(plans) == len(rows)
    m = {r.option.name: step_minutes(p) for r, p in zip(rows, plans)}

    # The recipe row is the plain plan of the recipe, the exact row that of the recipe with the
    # exact rollout (the others reuse the recipe's fake run, which reads none of their fields:
    # test_the_fake_run_reads_no_rollout_option).
    assert plans[0].to_dict() == plan(recipe, 8, Gpu()).to_dict()
    assert plans[1].to_dict() == plan(with_rollout(recipe, EXACT), 8, Gpu()).to_dict()
    assert [p.rollout_evaluations for p in plans[2:]] == [
        float(planner.rollout_evaluations(with_rollout(with_rollout(recipe, EXACT), r.option.overrides)))
        for r in rows[2:]
    ]
    assert m["recipe"]["gpu_minutes_per_step"] < m["unipc 6"]["gpu_minutes_per_step"]  # Euler 6 + share_prefix

    exact = m["exact"]
    for name in names[2:]:
        row = m[name]
        assert row["evaluations_per_video"] < exact["evaluations_per_video"]
        assert row["rollout_gpu_minutes"] < exact["rollout_gpu_minutes"]
        assert row["training_gpu_minutes"] == exact["training_gpu_minutes"]  # the training pass is unchanged
        # Rollout time falls by the same cost per evaluation saved, for every option.
        per_evaluation = (exact["rollout_gpu_minutes"] - row["rollout_gpu_minutes"]) / (
            exact["evaluations_per_video"] - row["evaluations_per_video"]
        )
        first = (exact["rollout_gpu_minutes"] - m["unipc 10"]["rollout_gpu_minutes"]) / (
            exact["evaluations_per_video"] - m["unipc 10"]["evaluations_per_video"]
        )
        assert per_evaluation == pytest.approx(first, rel=1e-6)
    assert m["unipc 6"]["rollout_gpu_minutes"] < m["unipc 10"]["rollout_gpu_minutes"]
    assert m["share_prefix + unipc 6"]["gpu_minutes_per_step"] < m["unipc 6"]["gpu_minutes_per_step"]


def test_the_fake_run_reads_no_rollout_option():
    """Why every row may reuse the recipe's fake run."""
    recipe = load_recipe_file(REPO / "recipes" / "tiny.py")
    changed = with_rollout(recipe, {"share_prefix": True, "ode_solver": "dpmpp_2m", "ode_steps": 3})
    assert planner.fake_run(changed, 2, *_tiny_spec_and_target()) == planner.fake_run(
        recipe, 2, *_tiny_spec_and_target()
    )
    with pytest.raises(ValueError, match="rollout options may set only"):
        with_rollout(recipe, {"steps": 4})
    assert set(OPTION_FIELDS) == {"share_prefix", "ode_solver", "ode_steps"}


def _tiny_spec_and_target():
    from fgrpo.planner import ModelSpec

    return ModelSpec.from_preset("tiny"), "gpu"


def test_cli_help_names_the_flag():
    res = run_fgrpo("plan", "--help", timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--rollout-options" in res.stdout


def test_cli_table_and_refused_options(tmp_path):
    res = run_fgrpo("plan", "recipes/tiny.py", "--rollout-options", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Rollout options" in res.stdout and "share_prefix + unipc 2" in res.stdout  # tiny: 8 steps

    # Full-trajectory has no deterministic step: the solver rows are skipped, saying why; the option
    # the recipe runs is the recipe's own plan.
    res = run_fgrpo(
        "plan",
        "recipes/tiny.py",
        "--rollout-options",
        "--json",
        "--algorithm.mode",
        "full-trajectory",
        "--rollout.share-prefix",
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    rows = {r["option"]: r for r in out["rollout_options"]}
    assert rows["recipe"]["gpu_minutes_per_step"] == rows["share_prefix"]["gpu_minutes_per_step"]
    assert rows["recipe"]["gpu_minutes_per_step"] == out["gpu_minutes_per_step"]
    assert rows["exact"]["x_of_exact"] == 1.0
    for name in ("unipc 4", "unipc 2", "share_prefix + unipc 2"):
        assert rows[name]["skipped"].startswith("rollout.ode_solver:") and "full-trajectory" in rows[name]["skipped"]
        assert "gpu_minutes_per_step" not in rows[name]
