"""Resume mid-step: a stop that arrives once a step's rollouts and rewards are complete keeps them,
and the resumed job trains that step from them, bit for bit the update the uninterrupted run made."""

import json
import os

import torch

from fgrpo.run_folder.pending import load_rollouts, rollouts_dir
from fgrpo.trainer import flash_grpo
from fgrpo.trainer.signals import EXIT_REQUEUE, StopFlag
from fgrpo.trainer.trainer import Trainer
from tests.conftest import REPO, run_fgrpo
from tests.helpers.preemption import stop_while_scoring
from tests.helpers.recipes import small_recipe
from tests.helpers.runs import BASE_ARGS, launch_tiny, train_metrics, trained_weights


def _state(trainer):
    return {k: v.detach().clone() for k, v in trainer.params.items()}, {
        k: v.clone() for k, v in trainer.ema.shadow.items()
    }


def _count_rollouts(monkeypatch) -> dict:
    calls = {"n": 0}
    real = flash_grpo.roll_out

    def counted(*a, **kw):
        calls["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(flash_grpo, "roll_out", counted)
    return calls


def test_stop_after_the_rollouts_keeps_them_and_the_resumed_update_is_bitwise(tiny_model_dir, tmp_path, monkeypatch):
    recipe = small_recipe(tiny_model_dir, max_steps=3)
    straight = Trainer(recipe, tmp_path / "a")
    assert straight.run() == 0

    stop = StopFlag(signals=())
    stop_while_scoring(monkeypatch, stop, at_call=2)  # step 2's rollouts done, its update not
    first = Trainer(recipe, tmp_path / "b", stop)
    assert first.run() == EXIT_REQUEUE
    assert first.step == 1
    ckpt = tmp_path / "b" / "checkpoints"
    kept, why = load_rollouts(ckpt, 1, 0, 1)
    assert kept is not None and why == "" and kept["step"] == 1
    monkeypatch.undo()

    rollouts = _count_rollouts(monkeypatch)
    resumed = Trainer(recipe, tmp_path / "b")
    assert resumed.run() == 0 and resumed.step == 3
    assert rollouts["n"] == 1  # step 3 only: step 2 trained on the kept rollouts
    assert not rollouts_dir(ckpt, 1).exists()  # used up
    (pa, ea), (pb, eb) = _state(straight), _state(resumed)
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
        assert torch.equal(ea[k], eb[k]), k
    train = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert [(m["step"], m["rollout_resumed"]) for m in train] == [(1, 0), (2, 1), (3, 0)]
    straight_train = [
        json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines() if '"train"' in x
    ]
    assert [m["loss"] for m in train] == [m["loss"] for m in straight_train]
    assert train[-1]["compute/flops"] == straight_train[-1]["compute/flops"]  # the kept step is counted whole


def test_kept_rollouts_of_other_prompts_are_rolled_out_again(tiny_model_dir, tmp_path, monkeypatch):
    recipe = small_recipe(tiny_model_dir, max_steps=2)
    stop = StopFlag(signals=())
    stop_while_scoring(monkeypatch, stop, at_call=2)
    assert Trainer(recipe, tmp_path, stop).run() == EXIT_REQUEUE
    monkeypatch.undo()
    ckpt = tmp_path / "checkpoints"
    path = next(rollouts_dir(ckpt, 1).glob("rank-*.pt"))
    state = torch.load(path, weights_only=True)
    state["prompts"] = ["something else"] * len(state["prompts"])
    torch.save(state, path)
    rollouts = _count_rollouts(monkeypatch)
    resumed = Trainer(recipe, tmp_path)
    assert resumed.run() == 0
    assert rollouts["n"] == 1  # step 2 rolled out again
    assert not rollouts_dir(ckpt, 1).exists()


def test_a_damaged_kept_file_is_rolled_out_again(tiny_model_dir, tmp_path, monkeypatch):
    recipe = small_recipe(tiny_model_dir, max_steps=2)
    stop = StopFlag(signals=())
    stop_while_scoring(monkeypatch, stop, at_call=2)
    assert Trainer(recipe, tmp_path, stop).run() == EXIT_REQUEUE
    monkeypatch.undo()
    path = next(rollouts_dir(tmp_path / "checkpoints", 1).glob("rank-*.pt"))
    path.write_bytes(path.read_bytes()[:100])  # a truncated file
    rollouts = _count_rollouts(monkeypatch)
    assert Trainer(recipe, tmp_path).run() == 0
    assert rollouts["n"] == 1


def test_sharded_layout_resumes_mid_step_bitwise(tiny_model_dir, tmp_path, monkeypatch):
    """Two processes, dp_shard=2, bf16: a preemption while step 2's rewards are scored (SIGTERM to each
    trainer, from the reward); each rank keeps its share; the resumed update is the uninterrupted one."""
    # bf16, as the paper recipes run: the kept transitions are fp32 states, the update bitwise all the same
    reward = ["--rewards.0.name", "tests.helpers.faulty:preempting", "--model.dtype", "bfloat16"]
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the trainers import the reward from tests/
    straight = launch_tiny(tiny_model_dir, tmp_path / "a" / "runs", 2, 3, *reward)
    runs = tmp_path / "b" / "runs"
    runs.mkdir(parents=True)
    env = {**os.environ, "FAULTY_PREEMPT_AT_CALL": "3"}  # the before-evaluation, step 1, then step 2's
    res = run_fgrpo(
        "launch",
        str(REPO / "recipes" / "tiny.py"),
        "--model.path",
        str(tiny_model_dir),
        "--logging.runs-dir",
        str(runs),
        "--logging.run-name",
        "run",
        "--launch.procs-per-node",
        "2",
        "--optim.max-steps",
        "3",
        *BASE_ARGS,
        *reward,
        cwd=runs.parent,
        env=env,
        timeout=500,
    )
    assert res.returncode == EXIT_REQUEUE, res.stdout[-3000:] + res.stderr[-3000:]
    run = runs / "run"
    kept = sorted(p.name for p in rollouts_dir(run / "checkpoints", 1).glob("*.pt"))
    assert kept == ["rank-0-of-2.pt", "rank-1-of-2.pt"], res.stdout[-3000:]
    resumed = launch_tiny(tiny_model_dir, runs, 2, 3, *reward)
    train = train_metrics(resumed)
    assert [(m["step"], m["rollout_resumed"]) for m in train] == [(1, 0), (2, 1), (3, 0)]
    assert [m["loss"] for m in train] == [m["loss"] for m in train_metrics(straight)]
    a, b = trained_weights(straight), trained_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed update differs from the uninterrupted one"
