"""How much of a group's reward spread the one SDE step causes, against the initial noise's.

    python benchmarks/miniature_sde_signal.py [--shift 3] [--noise wan|flow-grpo|dance-grpo]
        [--constant 0.7] [--cfg 4] [--prompts 6]

On the miniature model (its cached build) and `--prompts` RL prompts x 8 videos: the mean
within-group std of `miniature_faithfulness` (and of each attribute's soft score) when the videos
differ only in their initial noise (deterministic ODE), and when they share it and differ only in one
SDE step at step 0, 2 or 4 (10 steps, the trainer's own sampler, guidance `--cfg`). Flash-GRPO's
advantage credits that one step with the whole difference, so the ratio says how much of its policy
gradient is signal, overall and per attribute. Numbers in docs/miniature.md.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fgrpo.algorithm import wan_sigmas  # noqa: E402
from fgrpo.miniature.pretrain import MAX_TEXT_TOKENS, miniature_model_path  # noqa: E402
from fgrpo.miniature.scoring import faithfulness_scores, mean_score  # noqa: E402
from fgrpo.miniature.world import ATTRIBUTES, prompt_sets  # noqa: E402
from fgrpo.models.wan.loading import load_wan  # noqa: E402
from fgrpo.trainer.rollout import NoiseConfig, sample, video_generators  # noqa: E402


@dataclass
class Args:
    shift: float = 3.0
    noise: str = "wan"
    constant: float = 0.7
    cfg: float = 4.0
    """Guidance of the sampler (the recipe samples at 1: no unconditional pass)."""
    steps: int = 10
    group: int = 8
    prompts: int = 6


@torch.no_grad()
def group_stds(c, a: Args, prompt: str, shared_initial_noise: bool, sde_step: int | None) -> dict[str, float]:
    """Within-group std of the faithfulness reward ("overall") and of each attribute's soft score."""
    g = a.group
    context = c.encode_prompts([prompt] * g)
    neg = c.encode_prompts([""] * g) if a.cfg != 1 else None
    init = video_generators([13 if shared_initial_noise else 13 + 7 * i for i in range(g)])
    x = torch.stack([torch.randn(16, 3, 8, 8, generator=gen) for gen in init])
    mask = torch.zeros(g, a.steps, dtype=torch.bool)
    if sde_step is not None:
        mask[:, sde_step] = True
    finals, _ = sample(
        c.transformer,
        x,
        context,
        neg,
        wan_sigmas(a.steps, a.shift),
        mask,
        NoiseConfig(a.noise, a.constant),
        a.cfg,
        video_generators([1000 + i for i in range(g)]),
        g,
        torch.float32,
    )
    scores = faithfulness_scores(c.decode(finals), [prompt] * g)
    return {"overall": float(mean_score(scores).std())} | {k: float(scores[k].std()) for k in ATTRIBUTES}


def main() -> None:
    a = tyro.cli(Args)
    c = load_wan(miniature_model_path(), dtype="float32", max_text_tokens=MAX_TEXT_TOKENS)
    prompts = [s.prompt for s in prompt_sets().rl_train[: a.prompts]]
    columns = ("overall", *ATTRIBUTES)
    print(f"{'':>26}  " + " ".join(f"{k:>10}" for k in columns))
    for label, shared, k in (
        ("initial noise only (ODE)", False, None),
        ("SDE at step 0", True, 0),
        ("SDE at step 2", True, 2),
        ("SDE at step 4", True, 4),
    ):
        rows = [group_stds(c, a, p, shared, k) for p in prompts]
        print(f"{label:>26}: " + " ".join(f"{statistics.mean(r[col] for r in rows):>10.4f}" for col in columns))


if __name__ == "__main__":
    main()
