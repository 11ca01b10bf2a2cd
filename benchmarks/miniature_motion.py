"""The miniature model's motion with and without guidance, on the held-out prompts.

    python benchmarks/miniature_motion.py [--cfg 1] [--videos 4]

Samples every held-out prompt `--videos` times (the trainer's sampler, deterministic ODE, 10 steps,
fixed seeds) and reads motion back with the world's detectors: per speed class, the gold direction
(the share of videos whose motion is within cos 0.9 of the prompt's direction), the mean cosine to
it, the median speed over the prompted one and the gold speed; per direction, the gold direction.
With `--cfg 1` (the recipe's sampler) against `--cfg 4` (the build's), it shows what guidance adds
to motion: what the policy gradient would have to learn. Numbers in docs/miniature.md.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fgrpo.algorithm import wan_sigmas  # noqa: E402
from fgrpo.miniature.detect import detect  # noqa: E402
from fgrpo.miniature.pretrain import MAX_TEXT_TOKENS, miniature_model_path  # noqa: E402
from fgrpo.miniature.scoring import gold_scores  # noqa: E402
from fgrpo.miniature.world import DIRECTIONS, SPEEDS, prompt_sets  # noqa: E402
from fgrpo.models.wan.loading import load_wan  # noqa: E402
from fgrpo.trainer.rollout import NoiseConfig, sample, video_generators  # noqa: E402


@dataclass
class Args:
    cfg: float = 1.0
    videos: int = 4
    """Videos per held-out prompt."""
    steps: int = 10
    shift: float = 3.0


@torch.no_grad()
def main() -> None:
    a = tyro.cli(Args)
    c = load_wan(miniature_model_path(), dtype="float32", max_text_tokens=MAX_TEXT_TOKENS)
    scenes = [s for s in prompt_sets().heldout for _ in range(a.videos)]
    prompts = [s.prompt for s in scenes]
    b = len(prompts)
    context = c.encode_prompts(prompts)
    neg = c.encode_prompts([""] * b) if a.cfg != 1 else None
    x = torch.stack([torch.randn(16, 3, 8, 8, generator=g) for g in video_generators(list(range(b)))])
    mask = torch.zeros(b, a.steps, dtype=torch.bool)
    finals, _ = sample(
        c.transformer,
        x,
        context,
        neg,
        wan_sigmas(a.steps, a.shift),
        mask,
        NoiseConfig("wan", 0.7),  # unused: no SDE step
        a.cfg,
        video_generators(list(range(b))),
        b,
        torch.float32,
    )
    videos = c.decode(finals)
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
