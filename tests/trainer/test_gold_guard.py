"""The gold metric's guard (eval.gold_rewards) in parts: the recipe's checks, rank 0's judgement of
an evaluation against the run's earlier ones, the best-gold marker that checkpoint rotation
respects, `fgrpo export --best gold`'s refusals and `fgrpo status`'s note. The whole, on a real
miniature run that games its proxy: tests/miniature/test_gold_guard_run.py."""

import dataclasses
import json
import math

import pytest

from fgrpo.cli import main
from fgrpo.cli.eval import best_checkpoint_step
from fgrpo.cli.runs import divergence_note as status_note
from fgrpo.recipe.config import CheckpointConfig, EvalConfig, PromptsConfig, Recipe, RewardSpec
from fgrpo.recipe.validate import recipe_problems
from fgrpo.run_folder import RunFolder
from fgrpo.run_folder.checkpoints import best_marker, read_best, rotated_out, write_best
from fgrpo.trainer.checkpoint import rotate
from fgrpo.trainer.gold_guard import divergence_note, judge

GOLD = (RewardSpec(name="miniature_gold"),)


def _gold_problems(**changes) -> list[str]:
    recipe = Recipe(
        rewards=(RewardSpec(name="miniature_proxy"),),
        eval=EvalConfig(gold_rewards=GOLD),
        prompts=PromptsConfig(heldout=4),
    )
    for name, value in changes.items():
        recipe = dataclasses.replace(recipe, **{name: value})
    return [p for p in recipe_problems(recipe) if p.startswith("eval.")]


def test_recipe_checks_name_the_gold_field():
    assert _gold_problems() == []
    trained_too = _gold_problems(rewards=(RewardSpec(name="miniature_gold", weight=0.0),))
    assert len(trained_too) == 1 and trained_too[0].startswith("eval.gold_rewards.0.name: miniature_gold is also in")
    unknown = _gold_problems(eval=EvalConfig(gold_rewards=(RewardSpec(name="no_such_reward"),)))
    assert len(unknown) == 1 and unknown[0].startswith("eval.gold_rewards.0: ")
    no_heldout = _gold_problems(prompts=PromptsConfig(heldout=0))
    assert no_heldout == ["eval.gold_rewards: needs held-out prompts (prompts.heldout > 0)"]
    assert _gold_problems(eval=EvalConfig(gold_rewards=GOLD, divergence_window=1))[0].startswith(
        "eval.divergence_window: must be in"
    )


def test_gold_per_attribute_needs_distinct_labels():
    def gold(label=None, **args):
        return RewardSpec(name="miniature_gold", weight=0.0, args=args, label=label)

    per_attribute = (*GOLD, gold("gold_colour", attribute="colour"), gold("gold_count", attribute="count"))
    assert _gold_problems(eval=EvalConfig(gold_rewards=per_attribute)) == []
    # Labelled or not, a gold reward is never trained on.
    trained = (RewardSpec(name="miniature_proxy"), gold("gold_colour", attribute="colour"))
    assert _gold_problems(rewards=trained)[0].startswith("eval.gold_rewards.0.name: miniature_gold is also in")
    # One held-out name per score: a label repeated, or equal to a trained reward's name.
    repeated = _gold_problems(eval=EvalConfig(gold_rewards=(*GOLD, gold("g", attribute="size"), gold("g"))))
    assert repeated == [
        "eval.gold_rewards: g would record two held-out scores under one name (eval/<name>); give them distinct labels"
    ]
    clash = _gold_problems(eval=EvalConfig(gold_rewards=(*GOLD, gold("miniature_proxy", attribute="size"))))
    assert clash and clash[-1].startswith("eval.gold_rewards: miniature_proxy would record two")


def _eval(step: int, proxy: float, gold: float | None) -> dict:
    record = {"kind": "eval", "step": step, "tag": f"step-{step:06d}", "eval_reward": proxy}
    return record if gold is None else {**record, "eval_gold": gold}


def test_judge_marks_new_bests_and_the_divergence():
    history = [_eval(0, 0.80, 0.50), _eval(2, 0.85, 0.55), _eval(4, 0.90, 0.45)]
    assert judge(_eval(6, 0.95, 0.60), history, 3, 0.0) == {"gold_best": True}
    assert judge(_eval(6, 0.95, 0.55), history, 3, 0.0)["gold_best"] is False  # ties keep the earlier best
    fired = judge(_eval(6, 0.95, 0.40), history, 3, 0.0)
    assert fired["gold_best"] is False and fired["divergence"]["step"] == 6
    assert fired["divergence"]["best_step"] == 2 and fired["divergence"]["best_gold"] == 0.55
    assert "gold fell while the proxy rose over steps 2-6" in divergence_note(fired)
    assert judge(_eval(6, 0.95, 0.40), history, 3, 0.2) == {"gold_best": False}  # within the tolerance
    assert judge(_eval(6, 0.95, None), history, 3, 0.0) == {}  # no gold in the record: nothing to judge
    assert judge(_eval(0, 0.9, 0.1), [], 3, 0.0) == {"gold_best": True}  # the first evaluation is the best
    # an earlier record without gold (or with a non-finite one) is no best and no point of the trend
    assert judge(_eval(6, 0.9, 0.1), [_eval(0, 0.5, None), _eval(2, 0.5, math.nan)], 2, 0.0) == {"gold_best": True}


def _checkpoint(ckpts, step: int) -> None:
    folder = ckpts / f"step-{step}"
    folder.mkdir(parents=True)
    (folder / ".metadata").write_bytes(b"x")


def test_rotation_keeps_the_best_gold_checkpoint_whatever_keep_last_says(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8):
        _checkpoint(ckpts, step)
    assert [p.name for p in rotated_out(ckpts, 1)] == ["step-2", "step-4", "step-6"]
    write_best(ckpts, 4, 0.7, "step-000004")
    assert read_best(ckpts) == {"step": 4, "metric": "gold", "value": 0.7, "tag": "step-000004"}
    assert [p.name for p in rotated_out(ckpts, 1)] == ["step-2", "step-6"]
    rotate(ckpts, 1)
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step-4", "step-8"]
    write_best(ckpts, 8, 0.8, "step-000008")  # a new best: the old one is rotated like any other
    rotate(ckpts, 1)
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step-8"]
    best_marker(ckpts).write_text("{not json")
    assert read_best(ckpts) is None  # a damaged marker protects nothing and names nothing


def _run(tmp_path, gold: bool) -> RunFolder:
    folder = RunFolder(tmp_path / "run")
    recipe = Recipe(
        rewards=(RewardSpec(name="miniature_proxy"),),
        eval=EvalConfig(gold_rewards=GOLD if gold else ()),
        checkpoint=CheckpointConfig(keep_last=1),
    )
    folder.write_recipe(recipe)
    return folder


def test_export_best_gold_refuses_clearly(tmp_path, capsys):
    folder = _run(tmp_path, gold=False)
    with pytest.raises(ValueError, match="has no gold metric .*eval.gold_rewards is empty"):
        best_checkpoint_step(folder.path, "gold")
    folder = _run(tmp_path, gold=True)
    with pytest.raises(ValueError, match="no kept best-gold checkpoint .*best-gold.json is missing"):
        best_checkpoint_step(folder.path, "gold")
    write_best(folder.checkpoints, 6, 0.6, "step-000006")
    with pytest.raises(ValueError, match="checkpoint step-6, which .*best-gold.json names, is gone"):
        best_checkpoint_step(folder.path, "gold")
    _checkpoint(folder.checkpoints, 6)
    assert best_checkpoint_step(folder.path, "gold") == 6
    # on the command line: usage errors, exit 2, before anything is written
    out = tmp_path / "export"
    assert main(["export", str(folder.path), str(out), "--best", "gold", "--step", "6"]) == 2
    assert "give one" in capsys.readouterr().err
    write_best(folder.checkpoints, 9, 0.9, "step-000009")
    assert main(["export", str(folder.path), str(out), "--best", "gold"]) == 2
    assert "step-9" in capsys.readouterr().err and not out.exists()


def test_status_note_says_where_gold_diverged():
    fired = judge(_eval(6, 0.95, 0.40), [_eval(0, 0.8, 0.5), _eval(2, 0.85, 0.55), _eval(4, 0.9, 0.45)], 3, 0.0)
    evals = [_eval(0, 0.8, 0.5), {**_eval(6, 0.95, 0.40), **fired}, _eval(8, 0.96, 0.41)]
    note = status_note(evals)
    assert note.startswith("gold diverged from the trained reward at step 6 (gold 0.4000, best 0.5500 at step 2")
    assert "--best gold" in note
    again = {**fired, "divergence": {**fired["divergence"], "step": 10, "gold": 0.3}}
    note = status_note([*evals, {**_eval(10, 0.97, 0.3), **again}])
    assert note.startswith("gold diverged from the trained reward since step 6, latest at step 10 (gold 0.3000")
    assert status_note([_eval(0, 0.8, 0.5)]) == ""
    assert "damaged" in status_note([{**_eval(6, 0.9, 0.4), "divergence": {"step": 6}}])
    json.dumps(fired)  # the judgement is what metrics.jsonl stores
