"""The gold metric's guard over the trained (proxy) reward, at every evaluation (eval.gold_rewards).

Each evaluation records `eval_gold` (the gold rewards' weighted total on the held-out videos,
fgrpo.trainer.evaluate) beside `eval_reward` (the trained reward's, the proxy). Rank 0 then
judges the record against the run's earlier evaluations (metrics.jsonl, so a resumed run
remembers): `gold_best` is true when the gold beats every earlier evaluation's, and `divergence`
holds fgrpo.algorithm.divergence's finding when its rule fires. Then every rank acts on rank
0's judgement together:

* a new best: the checkpoint of this step is saved if it does not exist (the "before" evaluation,
  or one between checkpoint.interval), and checkpoints/best-gold.json names it, so that rotation
  (checkpoint.keep_last) keeps it and `fgrpo export RUN OUT --best gold` finds it;
* divergence: a console warning (the record is in metrics.jsonl, `fgrpo status` shows it), and
  with eval.on_divergence = stop, `stop_note` says why: the trainer ends the run cleanly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rich.markup import escape

from fgrpo.algorithm.divergence import Divergence, divergence
from fgrpo.distributed import process_group as dist
from fgrpo.run_folder import RunFolder
from fgrpo.run_folder.checkpoints import checkpoint_path, write_best

from . import checkpoint
from .evaluate import gold_scorer

PROXY, GOLD = "eval_reward", "eval_gold"


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def judge(record: dict, history: list[dict], window: int, tolerance: float) -> dict:
    """The gold fields of evaluation `record` (with its "step") given the run's earlier evaluation
    records: {"gold_best": bool, "divergence": Divergence.record() when the rule fires}; {} when the
    record has no gold."""
    gold = _number(record.get(GOLD))
    if gold is None:
        return {}
    earlier = [g for g in (_number(e.get(GOLD)) for e in history) if g is not None]
    out: dict = {"gold_best": gold > max(earlier, default=-math.inf)}
    evals = [*history, record]
    found = divergence(
        [int(e.get("step", 0)) for e in evals],
        [e.get(PROXY) for e in evals],  # the rule leaves out what is not a number
        [e.get(GOLD) for e in evals],
        window,
        tolerance,
    )
    if found is not None:
        out["divergence"] = found.record()
    return out


def divergence_note(record: dict) -> str:
    """One line for the console and `fgrpo status` from an evaluation record's "divergence"."""
    return "gold diverges from the trained reward: " + Divergence(**record["divergence"]).describe()


class GoldGuard:
    def __init__(self, recipe, folder: RunFolder, is_main: bool, say: Callable[[str], None]):
        self.recipe, self.folder, self.is_main, self.say = recipe, folder, is_main, say
        self.scorer = gold_scorer(recipe)  # None: no gold metric, nothing to guard
        self.saved_step: int | None = None  # the step act() saved a checkpoint for
        self.stop_note = ""  # why the run stops (eval.on_divergence = stop), once the rule fired

    def judge(self, record: dict, history: list[dict]) -> dict:
        """Rank 0: `judge` with the recipe's window and tolerance."""
        ev = self.recipe.eval
        return judge(record, history, ev.divergence_window, ev.divergence_tolerance) if self.scorer else {}

    def act(self, record: dict, step: int, save: Callable[[], None]) -> None:
        """Every rank, after rank 0 judged `record` (other ranks' records lack the judgement)."""
        if self.scorer is None:
            return
        main, ckpts = self.is_main, self.folder.checkpoints
        if dist.any_rank(main and bool(record.get("gold_best"))):
            if dist.any_rank(main and not checkpoint_path(ckpts, step).is_dir()):
                save()
                self.saved_step = step
            if main:
                write_best(ckpts, step, float(record[GOLD]), str(record.get("tag", "")))
                checkpoint.rotate(ckpts, self.recipe.checkpoint.keep_last)  # the previous best may go now
        if dist.any_rank(main and "divergence" in record):
            note = divergence_note(record) if main else ""
            if main:
                self.say(f"[bold red]WARNING[/] {escape(note)} (eval.on_divergence = {self.recipe.eval.on_divergence})")
            if self.recipe.eval.on_divergence == "stop":
                self.stop_note = f"stopped early at step {step} by eval.on_divergence = stop: {note}".rstrip(": ")
