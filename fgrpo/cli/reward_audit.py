"""`fgrpo reward-audit`: before spending compute, what do the recipe's rewards prefer?

  fgrpo reward-audit RECIPE.py [--videos N] [--no-samples] [--json PATH] [--run RUN_DIR]
                               [--reward-url URL] [--section.field VALUE ...]

Probe videos of the recipe's held-out prompts (the model's own samples, fgrpo.trainer.probe_samples;
ground-truth renders for miniature-world prompts) are scored with every reward as they are and
under each controlled edit (fgrpo.rewards.audit_edits); fgrpo.rewards.audit turns the scores into
rows and flags. Output: a table, `--json PATH`, and `--run RUN_DIR` (RUN/reward-audit.json, shown by
`fgrpo report RUN`).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import tyro

from fgrpo.recipe.config import Recipe

from .launch import parse_recipe_args, resolve_run_dir

if TYPE_CHECKING:
    import torch


@dataclass
class RewardAuditArgs:
    """Score probe videos with every reward of the recipe, as they are and under controlled edits, and
    flag rewards that prefer degenerate edits, before any GPU-hour goes into training on them. Probe
    videos: the recipe's held-out prompts (the last prompts.heldout lines of its prompts file), each
    sampled --videos times by the recipe's untrained model (the run's "before" evaluation: eval.steps
    ODE steps, fixed seeds) and, for miniature-world prompts, rendered as ground truth (seeds 0..N-1).
    Edits: saturation, brightness and contrast up and down, sharpen, blur, JPEG (quality 10), additive
    noise, frame shuffle, frame reversal, frozen (the first frame repeated), duplicated frames, fewer
    frames. Per reward and edit: the mean score change (edited - original) and the win rate (the share
    of videos whose edited version scores higher). A reward's score range is the highest minus the
    lowest score of any video in the audit, original or edited. Flags: "prefers" when a degrading
    edit (every one but sharpen, duplicated and fewer frames) has a win rate above --win-rate (0.5)
    and a mean change above --min-change (0.001) x the score range; "motion-blind" on frozen, shuffle
    or reverse when its mean |change| is at most --motion-tolerance (0.02) x the score range, and for
    the reward when all three are. Prints a table (reward | edit | mean change | win rate | flag);
    exit status 0 whatever is found."""

    recipe: Annotated[Recipe, tyro.conf.arg(name="")]
    videos: int = 2
    """Probe videos per held-out prompt, of each kind (model samples, ground-truth renders)."""
    samples: bool = True
    """Sample the recipe's model (loads it; minutes for a large model). --no-samples: ground-truth
    renders only, which only miniature-world prompts have."""
    json: str | None = None
    """Also write the audit (rules, each reward's flags, every row) as JSON to this file."""
    run: str | None = None
    """Also write it to RUN_DIR/reward-audit.json, where `fgrpo report RUN_DIR` shows it (the folder of
    a run of this recipe, or the one `fgrpo show RECIPE.py` names before launching)."""
    reward_url: str | None = None
    """Score with a running reward server (fgrpo reward-server) instead of in this process; default:
    the recipe's reward_server.url (a server the recipe would launch is not started: in-process)."""
    win_rate: float = 0.5
    """The `prefers` flag's win-rate threshold, in [0, 1)."""
    motion_tolerance: float = 0.02
    """The `motion-blind` flag's tolerance, a share of the reward's score range, in [0, 1)."""
    min_change: float = 0.001
    """The `prefers` flag's smallest mean change, a share of the reward's score range, in [0, 1)."""


def heldout_prompts(recipe: Recipe) -> list[str]:
    from fgrpo.data.prompts import read_prompts, resolve_prompt_file, split_prompts

    prompts = split_prompts(read_prompts(resolve_prompt_file(recipe.prompts.file)), recipe.prompts.heldout)[1]
    if not prompts:
        raise ValueError("prompts.heldout: the recipe holds no prompts out, so there is nothing to probe with")
    return prompts


def ground_truth_probes(prompts: list[str], per_prompt: int) -> tuple[list[str], torch.Tensor] | None:
    """Renders of the miniature-world prompts among `prompts` (seeds 0..per_prompt-1), or None if none is one."""
    from fgrpo.miniature.world import parse_prompt, render_batch

    scenes = {}
    for p in prompts:
        try:
            scenes[p] = parse_prompt(p)
        except ValueError:
            continue
    if not scenes:
        return None
    names = [p for p in scenes for _ in range(per_prompt)]
    seeds = [seed for _ in scenes for seed in range(per_prompt)]
    return names, render_batch([scenes[p] for p in names], seeds)


def check_run_folder(run: str | None, recipe: Recipe) -> Path | None:
    """RUN_DIR as a path; refused when it is a file or a run trained on other rewards."""
    from fgrpo.recipe.io import to_dict
    from fgrpo.run_folder import RunFolder

    if run is None:
        return None
    path = Path(run).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"--run: {path} is not a folder")
    folder = RunFolder(path)
    if folder.is_run() and to_dict(folder.read_recipe())["rewards"] != to_dict(recipe)["rewards"]:
        raise ValueError(f"--run: {path} is a run with other rewards than this recipe's; audit its own recipe")
    return path


def connect(recipe: Recipe, reward_url: str | None, token_dir: Path):
    """The recipe's rewards: a reward server's client (--reward-url or reward_server.url), else in-process."""
    from fgrpo.trainer.reward_scoring import connect_rewards

    rs = dataclasses.replace(recipe.reward_server, url=reward_url or recipe.reward_server.url, launch=False)
    return connect_rewards(dataclasses.replace(recipe, reward_server=rs), token_dir)


def render_table(result: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    probes = ", ".join(
        f"{n} {'model samples' if k == 'samples' else 'ground-truth renders'}"
        for k, n in result["probe_videos"].items()
    )
    console.print(
        f"{escape(result['recipe'])}: {probes} of {result['heldout_prompts']} held-out prompts, "
        f"scored {result['scored']}"
    )
    table = Table("reward", "edit", "mean change", "win rate", "flag", title="fgrpo reward-audit", title_justify="left")
    last = None
    for row in result["rows"]:
        if last is not None and row["reward"] != last:
            table.add_section()
        flag = ", ".join(row["flags"])
        table.add_row(
            escape(row["reward"]) if row["reward"] != last else "",
            row["edit"] if row["degrading"] else f"[dim]{row['edit']}[/]",
            f"{row['mean_change']:+.4f}",
            f"{row['win_rate']:.2f}",
            f"[bold red]{flag}[/]" if flag else "",
        )
        last = row["reward"]
    console.print(table)
    rules = result["rules"]
    console.print(f"[dim]prefers: {rules['prefers']} (dim edits are not judged)[/]")
    console.print(f"[dim]motion-blind: {rules['motion-blind']}[/]")
    for reward in result["rewards"]:
        found = "; ".join(reward["flags"]) or "no flag"
        style = "bold red" if reward["flags"] else "green"
        console.print(
            f"{escape(reward['reward'])} (original mean {reward['original_mean']:+.4f}): [{style}]{escape(found)}[/]"
        )


def cmd_reward_audit(argv: list[str]) -> int:
    import torch

    from fgrpo.fileio import atomic_write_json
    from fgrpo.recipe.validate import validate
    from fgrpo.rewards.audit import AuditRules, audit, score_probes
    from fgrpo.run_folder import RunFolder

    base, args = parse_recipe_args("reward-audit", argv, RewardAuditArgs)
    rules = AuditRules(args.win_rate, args.motion_tolerance, args.min_change)
    if args.videos < 1:
        raise ValueError(f"--videos: must be >= 1, got {args.videos}")
    recipe = validate(args.recipe)
    run = check_run_folder(args.run, recipe)
    if args.json is not None and not Path(args.json).absolute().parent.is_dir():
        raise FileNotFoundError(f"--json: the folder of {args.json} does not exist")
    prompts = heldout_prompts(recipe)
    probes = {}
    renders = ground_truth_probes(prompts, args.videos)
    if renders is not None:
        probes["renders"] = renders
    elif not args.samples:
        raise ValueError(
            "--no-samples: the held-out prompts have no ground-truth renders (only miniature-world "
            "prompts do); sample the model instead (drop --no-samples)"
        )
    rewards = connect(recipe, args.reward_url, run or resolve_run_dir(base, recipe))
    try:
        if args.samples:
            from fgrpo.trainer.probe_samples import sample_probe_videos

            print(
                f"sampling {args.videos} x {len(prompts)} videos with {recipe.model.path or recipe.model.preset}",
                file=sys.stderr,
                flush=True,
            )
            cache_root = Path(recipe.logging.runs_dir).absolute()
            probes["samples"] = sample_probe_videos(recipe, prompts, args.videos, cache_root)
        device = "cuda" if rewards.where == "in-process" and torch.cuda.is_available() else "cpu"
        with_total = sum(1 for r in recipe.rewards if r.weight != 0) >= 2
        scored = [
            score_probes(rewards, v, p, batch_size=recipe.rollout.micro_batch, device=device, with_total=with_total)
            for p, v in probes.values()
        ]
    finally:
        rewards.close()
    original = {k: torch.cat([s[0][k] for s in scored]) for k in scored[0][0]}
    edited = {e: {k: torch.cat([s[1][e][k] for s in scored]) for k in scored[0][1][e]} for e in scored[0][1]}
    result = {
        "recipe": recipe.name,
        "prompts_file": recipe.prompts.file,
        "heldout_prompts": len(prompts),
        "probe_videos": {name: len(p) for name, (p, _) in probes.items()},
        "scored": rewards.where,
        **audit(original, edited, rules),
    }
    render_table(result)
    if args.json is not None:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    if run is not None:
        RunFolder(run).write_reward_audit(result)
        print(f"wrote {RunFolder(run).reward_audit_file}")
    return 0


__all__ = ["RewardAuditArgs", "check_run_folder", "cmd_reward_audit", "ground_truth_probes", "heldout_prompts"]
