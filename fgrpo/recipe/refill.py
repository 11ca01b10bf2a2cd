"""Checks of `rollout.refill_zero_variance` (called by fgrpo.recipe.validate)."""

from __future__ import annotations

from .config import Recipe


def refill_problems(recipe: Recipe) -> list[str]:
    """A refill splices fresh groups' transitions into the batch, gathered over the data-parallel
    ranks: one per video in flash/fast mode. full-trajectory records one per step of every video
    (rollout.steps times as many to gather, and its baseline is Flow-GRPO's unchanged batch)."""
    rounds = recipe.rollout.refill_zero_variance
    if isinstance(rounds, int) and rounds > 0 and recipe.algorithm.mode == "full-trajectory":
        return [
            f"rollout.refill_zero_variance: refills flash/fast steps (one SDE transition per video); "
            f"algorithm.mode=full-trajectory records every step: set it to 0, got {rounds}"
        ]
    return []
