"""The miniature model's motion with and without guidance, on the recipe's held-out prompts.

    python benchmarks/miniature_motion.py [--cfg 1] [--videos 4]

Samples every held-out prompt of `recipes/miniature.py` `--videos` times with the recipe's
held-out sampler at guidance `--cfg` (the videos a run's "before" evaluation starts from:
`fgrpo.trainer.probe_samples`, deterministic ODE, fixed seeds) and reads motion back with the world's
detectors: per speed class, the gold direction (the share of videos whose motion is within cos 0.9
of the prompt's direction), the mean cosine to it, the median speed over the prompted one and the
gold speed; per direction, the gold direction. With `--cfg 1` (the recipe's sampler) against
`--cfg 4` (the build's), it shows what guidance adds to motion: what the policy gradient would have
to learn. Numbers in docs/miniature.md.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fgrpo.cli.reward_audit import heldout_prompts  # noqa: E402
from fgrpo.miniature.detect import detect  # noqa: E402
from fgrpo.miniature.scoring import gold_scores, parse_prompts  # noqa: E402
from fgrpo.miniature.world import DIRECTIONS, SPEEDS  # noqa: E402
from fgrpo.recipe.io import load_recipe_file  # noqa: E402
from fgrpo.trainer.probe_samples import sample_probe_videos  # noqa: E402


@dataclass
class Args:
    cfg: float = 1.0
    videos: int = 4
    """Videos per held-out prompt."""


@torch.no_grad()
def main() -> None:
    a = tyro.cli(Args)
    recipe = load_recipe_file(REPO / "recipes" / "miniature.py")
    recipe = dataclasses.replace(recipe, rollout=dataclasses.replace(recipe.rollout, cfg_scale=a.cfg))
    with tempfile.TemporaryDirectory() as cache:
        prompts, frames = sample_probe_videos(recipe, heldout_prompts(recipe), a.videos, Path(cache))
    videos = frames.float() / 255
    scenes = parse_prompts(prompts)
    b = len(prompts)
    det = detect(videos)
    gold = gold_scores(videos, prompts, det)
    unit = torch.tensor([DIRECTIONS[s.direction] for s in scenes])
    cos = (det.velocity * unit).sum(-1) / det.speed.clamp(min=1e-6)
    ratio = det.speed / torch.tensor([SPEEDS[s.speed] for s in scenes])
    print(f"cfg {a.cfg}, {b} videos: gold " + ", ".join(f"{k} {float(v.mean()):.2f}" for k, v in gold.items()))
    for speed in SPEEDS:
        m = torch.tensor([s.speed == speed for s in scenes])
        print(
            f"  {speed:>8} ({int(m.sum())} videos): direction gold {float(gold['direction'][m].mean()):.2f}, "
            f"mean cos {float(cos[m].mean()):.2f}, speed / prompted (median) {float(ratio[m].median()):.2f}, "
            f"speed gold {float(gold['speed'][m].mean()):.2f}"
        )
    for direction in DIRECTIONS:
        m = torch.tensor([s.direction == direction for s in scenes])
        right, mean_cos = float(gold["direction"][m].mean()), float(cos[m].mean())
        print(f"  {direction:>8}: direction gold {right:.2f}, mean cos {mean_cos:.2f}")


if __name__ == "__main__":
    main()
