"""Evaluating never changes what is trained, launched as users launch it (the tiny recipe, one process).

A run that evaluates after every step with a gold metric (so it also saves a best-gold checkpoint
at step 0, before its first update) trains bitwise like the same run that never evaluates: the same
rewards, losses and gradient norms at every step, the same weights after it. Until the optimizer's
state was taken without side effects (fgrpo.trainer.checkpoint.model_and_optimizer_state), that
step-0 checkpoint shrank the first update to 0.74x (tests/trainer/test_checkpoint_state.py)."""

import json
from pathlib import Path

from tests.conftest import REPO, run_fgrpo
from tests.helpers.runs import BASE_ARGS, recipe_with_eval, trained_weights

STEPS = 3
TRAINED = ("reward_mean", "loss", "grad_norm", "adv_std")


def _launch(tmp_path, tiny_model_dir, recipe: str, name: str, eval_interval: int) -> tuple[list[dict], Path]:
    at = BASE_ARGS.index("--eval.interval")
    base = BASE_ARGS[:at] + BASE_ARGS[at + 2 :]  # the shared arguments less their eval interval
    runs = tmp_path / "runs"
    res = run_fgrpo(
        "launch",
        recipe,
        "--backend",
        "local",
        "--model.path",
        str(tiny_model_dir),
        "--launch.procs-per-node",
        "1",
        "--optim.max-steps",
        str(STEPS),
        *base,
        "--eval.interval",
        str(eval_interval),
        "--logging.runs-dir",
        str(runs),
        "--logging.run-name",
        name,
        cwd=tmp_path,
        timeout=500,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    records = [json.loads(x) for x in (runs / name / "metrics.jsonl").read_text().splitlines()]
    return records, runs / name


def test_evaluations_and_a_step_zero_checkpoint_leave_training_alone(tiny_model_dir, tmp_path):
    evaluated, evaluated_dir = _launch(
        tmp_path, tiny_model_dir, recipe_with_eval(tmp_path, "tiny", "(RewardSpec(name='contrast'),)"), "evaluated", 1
    )
    plain, plain_dir = _launch(tmp_path, tiny_model_dir, str(REPO / "recipes" / "tiny.py"), "plain", 1000)

    evals = [r for r in evaluated if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == list(range(STEPS + 1)) and all("eval/contrast" in e for e in evals)
    assert evals[0]["gold_best"], evals[0]  # the best-gold checkpoint was saved at step 0, before any update
    assert [r["step"] for r in plain if r["kind"] == "eval"] == [0, STEPS]  # before and final only

    train_e = [r for r in evaluated if r["kind"] == "train"]
    train_p = [r for r in plain if r["kind"] == "train"]
    assert [r["step"] for r in train_e] == [r["step"] for r in train_p] == list(range(1, STEPS + 1))
    for a, b in zip(train_e, train_p, strict=True):
        assert {k: a[k] for k in TRAINED} == {k: b[k] for k in TRAINED}, a["step"]

    weights_e, weights_p = trained_weights(evaluated_dir, STEPS), trained_weights(plain_dir, STEPS)
    assert weights_e.keys() == weights_p.keys()
    changed = [k for k in weights_e if not (weights_e[k] == weights_p[k]).all()]
    assert not changed, changed[:5]
