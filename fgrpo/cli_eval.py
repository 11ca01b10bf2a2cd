"""`fgrpo eval RUN_OR_CHECKPOINT`: deterministic held-out evaluation of a trained run.

Samples the held-out prompts (or `--prompts FILE`) with the EMA weights (or `--weights model`),
deterministic ODE with `--steps` steps and fixed seeds, scores them with every reward of the
recipe, and writes `eval.json` and a grid of the videos to `RUN/eval/<name>/`. The trainer runs
the same evaluation every `eval.interval` steps (metrics.jsonl, samples/).
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro


@dataclass
class EvalArgs:
    target: tyro.conf.Positional[str]
    """A run folder, or one of its checkpoints/step-N folders."""
    prompts: str | None = None
    """Prompt file (one per line, or JSONL with a `prompt` field); default: the run's held-out prompts."""
    steps: int = 50
    """Deterministic ODE steps."""
    videos_per_prompt: int | None = None
    """Fixed seeds per prompt; default: the recipe's eval.videos_per_prompt."""
    weights: Literal["ema", "model"] = "ema"
    """Evaluate the EMA weights (what the paper reports) or the raw trained weights."""
    name: str | None = None
    """Output folder name under RUN/eval/ (default: step-N)."""
    reward_url: str | None = None
    """Score with a running reward server (fgrpo reward-server) instead of in this process."""


def resolve_target(target: Path) -> tuple[Path, int | None]:
    """(run folder, checkpoint step or None for the newest)."""
    if target.name.startswith("step-") and target.parent.name == "checkpoints":
        return target.parent.parent, int(target.name.split("-")[1])
    if (target / "recipe.json").exists():
        return target, None
    raise FileNotFoundError(f"{target} is neither a run folder (with recipe.json) nor a checkpoints/step-N folder")


def per_video(records: list[dict], videos_per_prompt: int, rewards: list[float]) -> dict:
    """``videos``: one row per video (its prompt's fields, the video's index and reward), in grid
    order; ``by_category``: the mean reward per value of a ``category`` field, if prompts have one."""
    rows = [{**rec, "video": j, "reward": rewards[i * videos_per_prompt + j]}
            for i, rec in enumerate(records) for j in range(videos_per_prompt)]
    out: dict = {"videos": rows}
    groups: dict[str, list[float]] = {}
    for row in rows:
        if "category" in row:
            groups.setdefault(str(row["category"]), []).append(row["reward"])
    if groups:
        out["by_category"] = {k: sum(v) / len(v) for k, v in sorted(groups.items())}
    return out


def cmd_eval(argv: list[str]) -> int:
    from fgrpo.data.prompts import read_prompt_records, resolve_prompt_file, split_prompts
    from fgrpo.recipe.io import load_recipe_json
    from fgrpo.trainer import checkpoint
    from fgrpo.trainer.evaluate import evaluate_heldout
    from fgrpo.trainer.trainer import Trainer

    a = tyro.cli(EvalArgs, args=argv, prog="fgrpo eval", description=__doc__)
    run_dir, step = resolve_target(Path(a.target).absolute())
    recipe = load_recipe_json(run_dir / "recipe.json")
    ev = dataclasses.replace(recipe.eval, steps=a.steps,
                             videos_per_prompt=a.videos_per_prompt or recipe.eval.videos_per_prompt)
    # A server the run launched has stopped with it: score in-process unless told of a server.
    rs = dataclasses.replace(recipe.reward_server, url=a.reward_url, launch=False)
    recipe = dataclasses.replace(recipe, eval=ev, reward_server=rs)
    found = dict(checkpoint.complete_checkpoints(run_dir / "checkpoints"))
    if not found or (step is not None and step not in found):
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint{'' if step is None else f' for step {step}'}")
    step = step if step is not None else max(found)
    out = run_dir / "eval" / (a.name or f"step-{step}")
    out.mkdir(parents=True, exist_ok=True)
    if a.prompts:
        records = read_prompt_records(Path(a.prompts))
    else:
        records = split_prompts(read_prompt_records(resolve_prompt_file(recipe.prompts.file)), recipe.prompts.heldout)[1]
    prompts = [r["prompt"] for r in records]
    # one process; its model, EMA, rewards and sampler are what is used
    t = Trainer(recipe, out, extra_prompts=tuple(prompts), text_cache_root=run_dir.parent)
    t.resume(found[step])
    t.heldout_prompts = prompts
    if not t.heldout_prompts:
        raise ValueError("no prompts to evaluate: the recipe holds none out (prompts.heldout) and --prompts is unset")
    use_ema = a.weights == "ema" and t.ema is not None
    with t.ema.swapped_in() if use_ema else nullcontext():
        t.connect_rewards()
        result = evaluate_heldout(t, "videos")
    summary = {"run": str(run_dir), "step": step, "weights": "ema" if use_ema else "model", "steps": a.steps,
               "prompts": t.heldout_prompts, "videos_per_prompt": ev.videos_per_prompt, **result,
               **per_video(records, ev.videos_per_prompt, result["eval_rewards"])}
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("eval_rewards", "prompts", "videos")}, indent=2))
    print(f"wrote {out / 'eval.json'} and {out / 'samples' / 'videos.gif'}")
    return 0

