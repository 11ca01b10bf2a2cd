"""rollout.refill_zero_variance on the tiny model, with a reward whose easy prompts saturate
(tests/helpers/saturating.py: every video of an easy prompt scores 1, so its group is all-equal):
the trained batch keeps prompts_per_step groups and loses its all-equal ones, the refill is counted
in compute, the rounds are capped, a stop in or after a refill resumes bit for bit, and every rank
of a 2-process job takes the same decisions."""

import dataclasses
import json

import pytest
import torch

from fgrpo.recipe.config import RewardSpec
from fgrpo.recipe.validate import recipe_problems
from fgrpo.trainer.compute import StepCost, refill_cost, without_refill
from fgrpo.trainer.signals import EXIT_REQUEUE, StopFlag
from fgrpo.trainer.trainer import Trainer
from tests.conftest import REPO
from tests.helpers.preemption import stop_while_scoring
from tests.helpers.recipes import small_recipe
from tests.helpers.runs import launch_tiny, train_metrics

R = dataclasses.replace
P, G = 2, 4  # small_recipe's batch


def _recipe(tiny_model_dir, rounds: int, every: int = 2, max_steps: int = 3):
    r = small_recipe(tiny_model_dir, max_steps=max_steps)
    reward = RewardSpec(name="tests.helpers.saturating:saturating", args={"every": str(every)})
    return R(r, rollout=R(r.rollout, refill_zero_variance=rounds), rewards=(reward,))


def _train(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if m["kind"] == "train"]


def test_all_equal_groups_are_replaced_and_the_refill_is_counted(tiny_model_dir, tmp_path):
    off = Trainer(_recipe(tiny_model_dir, 0), tmp_path / "off")
    assert off.run() == 0
    on = Trainer(_recipe(tiny_model_dir, 2), tmp_path / "on")
    assert on.run() == 0
    a, b = _train(tmp_path / "off"), _train(tmp_path / "on")
    assert a[0]["zero_variance_groups"] == 0.5  # step 1 draws one easy prompt of two
    assert "refilled_groups" not in a[0]  # off: no refill records
    assert [m["zero_variance_groups"] for m in b] == [0.0] * 3
    assert b[0]["refilled_groups"] == 1 and sum(m["refilled_groups"] for m in b) >= 1
    assert all(len(m["timestep_indices"]) == P for m in b)  # one SDE step per trained group: P groups
    # The refill's videos and FLOPs are in the totals; step 1's batch costs what it costs without it.
    videos = [P * G + m["refill_videos"] for m in b]
    assert [m["compute/videos"] for m in b] == [sum(videos[: i + 1]) for i in range(3)]
    assert b[0]["refill_videos"] == G * b[0]["refill_rounds"] and b[0]["refill_flops"] > 0
    assert b[0]["compute/flops"] - b[0]["refill_flops"] == pytest.approx(a[0]["compute/flops"], rel=1e-6)
    # Fresh prompts come from the sampler: it is past the step's own and the refill's draws.
    drawn = 3 * P + sum(m["refill_videos"] for m in b) // G
    assert on.sampler.epoch * 70 + on.sampler.index == drawn  # 70 training prompts in prompts/tiny.txt


@pytest.mark.parametrize("share_prefix", [False, True])
def test_rounds_are_capped_and_groups_that_stay_all_equal_are_kept(tiny_model_dir, tmp_path, share_prefix):
    r = _recipe(tiny_model_dir, 2, every=1, max_steps=1)  # every prompt saturates
    t = Trainer(R(r, rollout=R(r.rollout, share_prefix=share_prefix)), tmp_path)
    assert t.run() == 0
    (m,) = _train(tmp_path)
    assert m["zero_variance_groups"] == 1.0 and m["refilled_groups"] == 0
    assert m["refill_rounds"] == 2 and m["refill_videos"] == 2 * P * G  # each round: the P groups left
    assert len(m["timestep_indices"]) == P  # the batch keeps its size


@pytest.mark.parametrize("when", ["after the refill", "during the refill"])
def test_a_stop_in_a_refilled_step_resumes_bitwise(tiny_model_dir, tmp_path, monkeypatch, when):
    recipe = _recipe(tiny_model_dir, 2, every=3)
    straight = Trainer(recipe, tmp_path / "a")
    assert straight.run() == 0
    rounds = [m["refill_rounds"] for m in _train(tmp_path / "a")]
    k = next(i for i in range(1, 3) if rounds[i])  # a refilled step after the first (prompts.seed 0: step 3)
    # Scoring calls: 1 + rounds per step. Step k+1's last one completes its rollouts (kept); its
    # first is followed by a refill round, where the stop is seen (rolled out again).
    at_call = sum(1 + n for n in rounds[:k]) + (1 + rounds[k] if when == "after the refill" else 1)
    stop = StopFlag(signals=())
    stop_while_scoring(monkeypatch, stop, at_call)
    first = Trainer(recipe, tmp_path / "b", stop)
    assert first.run() == EXIT_REQUEUE and first.step == k
    monkeypatch.undo()
    resumed = Trainer(recipe, tmp_path / "b")
    assert resumed.run() == 0 and resumed.step == 3
    for name, v in straight.params.items():
        assert torch.equal(v, resumed.params[name]), name
    assert resumed.sampler.state_dict() == straight.sampler.state_dict()
    keys = ("loss", "zero_variance_groups", "refilled_groups", "refill_videos", "timestep_indices", "compute/flops")
    got, want = _train(tmp_path / "b"), _train(tmp_path / "a")
    assert [m["rollout_resumed"] for m in got] == [int(i == k and when == "after the refill") for i in range(3)]
    assert [[m[k] for k in keys] for m in got] == [[m[k] for k in keys] for m in want]


def test_two_ranks_take_the_same_refill_decisions_as_one(tiny_model_dir, tmp_path, monkeypatch):
    """dp_shard=2 in bfloat16, as users launch it: each rank rolls out half of every refill round, the
    fresh transitions are gathered and each rank trains its own slice; the decisions match the
    1-process run's, in lockstep (the reward saturates by prompt, so bf16 rounding cannot move them)."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the trainers import the reward from tests/
    args = [
        "--model.dtype",
        "bfloat16",
        "--rewards.0.name",
        "tests.helpers.saturating:saturating",
        "--rewards.0.args",
        "every",
        "3",
        "--rollout.refill-zero-variance",
        "2",
    ]
    one = train_metrics(launch_tiny(tiny_model_dir, tmp_path / "one", 1, 2, *args))
    two = train_metrics(launch_tiny(tiny_model_dir, tmp_path / "two", 2, 2, *args))
    keys = ("zero_variance_groups", "refilled_groups", "refill_rounds", "refill_videos", "timestep_indices")
    assert [[m[k] for k in keys] for m in two] == [[m[k] for k in keys] for m in one]
    assert sum(m["refilled_groups"] for m in two) >= 1 and all(m["zero_variance_groups"] == 0 for m in two)
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in two)


def test_refill_cost_is_the_measured_rollout_per_video():
    measured = StepCost(flops_rollout=1200, flops_train=500, forward_passes=90, forward_passes_rollout=60)
    base = without_refill(measured, videos=8, refill_videos=4)  # the measured step refilled 4 videos
    assert base == StepCost(800, 500, 70, 40)
    assert refill_cost(base, 8, 4) == (400, 20)
    assert without_refill(measured, 8, 0) is measured


def test_refill_is_refused_in_full_trajectory_mode(tiny_model_dir):
    r = _recipe(tiny_model_dir, 1)
    bad = R(r, algorithm=R(r.algorithm, mode="full-trajectory", rectification=False))
    problems = recipe_problems(bad)
    assert any(p.startswith("rollout.refill_zero_variance:") and "full-trajectory" in p for p in problems)
    assert not any(p.startswith("rollout.refill_zero_variance") for p in recipe_problems(r))
    negative = recipe_problems(R(r, rollout=R(r.rollout, refill_zero_variance=-1)))
    assert any(p.startswith("rollout.refill_zero_variance:") for p in negative)
