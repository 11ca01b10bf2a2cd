"""A reward with prompts that saturate, for rollout.refill_zero_variance tests on the tiny model."""

from __future__ import annotations

import torch


def easy_prompt(prompt: str, every: int) -> bool:
    """One prompt in about `every` is easy: every video of it gets the full reward."""
    return sum(map(ord, prompt)) % every == 0


def saturating(frames, prompts, every="2"):
    """1 for every video of an easy prompt (its group all-equal), brightness for the others."""
    bright = frames.float().mean(dim=(1, 2, 3, 4))
    easy = torch.tensor([easy_prompt(p, int(every)) for p in prompts])
    return torch.where(easy, torch.ones_like(bright), bright)
