"""`fgrpo eval` and `fgrpo export`: what a trained run's checkpoints are worth, and taking them out.

fgrpo eval RUN_OR_CHECKPOINT [--prompts FILE] [--steps 50] [--weights ema|model] [--reward-url URL]
fgrpo export RUN_DIR OUT_DIR [--step N | --best gold] [--weights ema|model]
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from fgrpo.fileio import atomic_write_json
from fgrpo.run_folder import RunFolder, SampleFolder


@dataclass
class EvalArgs:
    """Deterministic held-out evaluation of a trained run.

    Samples the held-out prompts (or `--prompts FILE`) with the EMA weights (or `--weights model`),
    deterministic ODE with `--steps` steps and fixed seeds, scores them with every reward of the
    recipe, and writes `eval.json`, a captioned grid and one video per prompt (MP4) to
    `RUN/eval/<name>/`. The trainer runs the same evaluation every `eval.interval` steps
    (metrics.jsonl, samples/).
    """

    target: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_OR_CHECKPOINT")]
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


def resolve_target(target: Path) -> tuple[RunFolder, int | None]:
    """(run folder, checkpoint step or None for the newest)."""
    if target.name.startswith("step-") and target.parent.name == "checkpoints":
        return RunFolder(target.parent.parent), int(target.name.split("-")[1])
    if RunFolder(target).is_run():
        return RunFolder(target), None
    raise FileNotFoundError(f"{target} is neither a run folder (with recipe.json) nor a checkpoints/step-N folder")


def per_video(records: list[dict], videos_per_prompt: int, rewards: list[float]) -> dict:
    """``videos``: one row per video (its prompt's fields, the video's index and reward), in grid
    order; ``by_category``: the mean reward per value of a ``category`` field, if prompts have one."""
    rows = [
        {**rec, "video": j, "reward": rewards[i * videos_per_prompt + j]}
        for i, rec in enumerate(records)
        for j in range(videos_per_prompt)
    ]
    out: dict = {"videos": rows}
    groups: dict[str, list[float]] = {}
    for row in rows:
        if "category" in row:
            groups.setdefault(str(row["category"]), []).append(row["reward"])
    if groups:
        out["by_category"] = {k: sum(v) / len(v) for k, v in sorted(groups.items())}
    return out


def cmd_eval(argv: list[str]) -> int:
    from fgrpo.data.image_prompts import prompt_images
    from fgrpo.data.prompts import read_prompt_lines, read_prompt_records, resolve_prompt_file, split_prompts
    from fgrpo.recipe.validate import image_to_video_prompt_problems
    from fgrpo.trainer.evaluate import evaluate_checkpoint

    a = tyro.cli(EvalArgs, args=argv, prog="fgrpo eval")
    folder, step = resolve_target(Path(a.target).absolute())
    run_dir = folder.path
    recipe = folder.read_recipe()
    ev = dataclasses.replace(
        recipe.eval, steps=a.steps, videos_per_prompt=a.videos_per_prompt or recipe.eval.videos_per_prompt
    )
    # A server the run launched has stopped with it: score in-process unless told of a server.
    rs = dataclasses.replace(recipe.reward_server, url=a.reward_url, launch=False)
    # This process's layout, not the training one's: DCP reshards the checkpoint to it.
    par = dataclasses.replace(recipe.parallelism, dp_replicate=1, dp_shard=-1, tp=1, sp=1)
    recipe = dataclasses.replace(recipe, eval=ev, reward_server=rs, parallelism=par)
    step, checkpoint, skipped = folder.usable_checkpoint(step)
    for note in skipped:
        print(f"fgrpo: {note}", file=sys.stderr)
    images = None  # the recipe's prompt file's (image-to-video models)
    if a.prompts:
        lines = read_prompt_lines(Path(a.prompts))
        records = [r for _, r in lines]
        ro = recipe.rollout
        problems = image_to_video_prompt_problems(
            recipe.model.preset, a.prompts, Path(a.prompts), lines, ro.width, ro.height
        )
        if problems:
            raise ValueError("--prompts: " + "\n  ".join(problems))
        images = prompt_images(Path(a.prompts), lines)
    else:
        everything = read_prompt_records(resolve_prompt_file(recipe.prompts.file))
        records = split_prompts(everything, recipe.prompts.heldout)[1]
    prompts = [r["prompt"] for r in records]
    if not prompts:
        raise ValueError("no prompts to evaluate: the recipe holds none out (prompts.heldout) and --prompts is unset")
    out = folder.eval_dir(a.name or f"step-{step}")  # made only once everything checked out
    out.mkdir(parents=True, exist_ok=True)
    # The policy and the rewards only: no optimizer (fgrpo.trainer.evaluate.evaluate_checkpoint).
    result = evaluate_checkpoint(recipe, run_dir, checkpoint, prompts, out / "samples", a.weights, images=images)
    used = result.pop("weights")
    summary = {
        "run": str(run_dir),
        "step": step,
        "weights": used,
        "steps": a.steps,
        "prompts": prompts,
        "videos_per_prompt": ev.videos_per_prompt,
        **result,
        **per_video(records, ev.videos_per_prompt, result["eval_rewards"]),
    }
    atomic_write_json(out / "eval.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("eval_rewards", "prompts", "videos")}, indent=2))
    samples = SampleFolder(out / "samples")
    print(
        f"wrote {out / 'eval.json'}, {samples.find_grid('videos')} (captioned grid) and {samples.path / 'videos'}/ "
        "(one video per prompt)"
    )
    return 0


@dataclass
class ExportArgs:
    """Export a trained run from one checkpoint: the transformer with the LoRA merged as a
    diffusers folder (OUT_DIR/transformer, for `WanTransformer3DModel.from_pretrained`), the LoRA
    alone as a diffusers LoRA file (OUT_DIR/lora, LoRA runs only) and OUT_DIR/export.json.
    `--best gold` exports the checkpoint of the best held-out gold evaluation (eval.gold_rewards;
    rotation keeps it, checkpoints/best-gold.json names it) instead of the newest."""

    run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    """Run folder (holds recipe.json and checkpoints/)."""
    out_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="OUT_DIR")]
    """Where to write transformer/, lora/ and export.json."""
    step: int | None = None
    """Checkpoint step; None = the newest complete one."""
    best: Literal["gold"] | None = None
    """Export the checkpoint with the best held-out score on this metric (gold: eval.gold_rewards)."""
    weights: Literal["ema", "model"] = "ema"
    """Export the EMA weights (what evaluation uses) or the raw trained weights."""


def best_checkpoint_step(run_dir: Path, metric: str) -> int:
    """The step of the kept checkpoint with the best `metric` (checkpoints/best-<metric>.json);
    ValueError saying why when the run has no such metric or no such checkpoint."""
    from fgrpo.run_folder.checkpoints import best_marker, checkpoint_path, read_best

    folder = RunFolder(run_dir)
    recipe = folder.read_recipe()  # FileNotFoundError when RUN_DIR is no run folder
    marker, where = read_best(folder.checkpoints, metric), best_marker(folder.checkpoints, metric)
    if marker is None and not recipe.eval.gold_rewards:
        raise ValueError(f"--best {metric}: {run_dir} has no {metric} metric (its recipe's eval.gold_rewards is empty)")
    if marker is None:
        raise ValueError(
            f"--best {metric}: {run_dir} has no kept best-{metric} checkpoint ({where} "
            "is missing or unreadable: no evaluation has recorded the metric yet?)"
        )
    step = marker["step"]
    if not checkpoint_path(folder.checkpoints, step).is_dir():
        raise ValueError(f"--best {metric}: checkpoint step-{step}, which {where} names, is gone")
    return step


def cmd_export(argv: list[str]) -> int:
    from fgrpo.export import CheckpointRotated, export_run

    a = tyro.cli(ExportArgs, args=argv, prog="fgrpo export")
    if a.best is not None and a.step is not None:
        raise ValueError("--step and --best name the checkpoint both ways: give one")
    step = best_checkpoint_step(Path(a.run_dir), a.best) if a.best is not None else a.step
    try:
        print(export_run(Path(a.run_dir), Path(a.out_dir), step, a.weights))
    except CheckpointRotated as e:  # a running job's rotation took the checkpoint: not bad input
        print(f"fgrpo: error: {e}", file=sys.stderr)
        return 1
    return 0


__all__ = ["EvalArgs", "ExportArgs", "best_checkpoint_step", "cmd_eval", "cmd_export", "per_video", "resolve_target"]
