"""Choice of the single SDE step per rollout (Flash-GRPO, docs section 3.1-3.3)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def sample_step_indices(
    num_prompts: int,
    group_size: int,
    window: tuple[int, int] | list[int],
    weights: Sequence[float] | None,
    iso_temporal: bool,
    generator: torch.Generator,
) -> Tensor:
    """Draw the SDE step index i for every rollout -> long tensor [num_prompts * group_size].

    i ~ Categorical(p) on the step indices [start, end) of `window`, p = weights / sum(weights)
    (uniform if weights is None). The released code uses window = (0, 10) of 20 steps, uniform.

    Layout is prompt-major: rollouts of prompt k sit at positions k*G .. k*G + G - 1.
    iso_temporal=True draws one index per prompt, shared by its G rollouts, so the group baseline
    compares rollouts at the same timestep; False draws every rollout independently (the
    "Fast" / ablation variant). Only `generator` is consumed, so every rank that seeds the same
    generator identically gets the same indices, as section 3.2 requires.
    """
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if len(window) != 2:
        raise ValueError(f"window must be [start, end), got {window!r}")
    start, end = int(window[0]), int(window[1])
    if start < 0 or end <= start:
        raise ValueError(f"window must satisfy 0 <= start < end, got [{start}, {end})")
    width = end - start
    if weights is None:
        probs = torch.full((width,), 1.0 / width, dtype=torch.float64)
    else:
        if len(weights) != width:
            raise ValueError(f"weights has {len(weights)} entries, window [{start}, {end}) has {width}")
        if any(not math.isfinite(w) or w < 0 for w in weights):
            raise ValueError(f"weights must be finite and >= 0, got {list(weights)}")
        total = float(sum(weights))
        if total <= 0:
            raise ValueError("weights must not all be zero")
        probs = torch.tensor([float(w) / total for w in weights], dtype=torch.float64)

    # Sampled on CPU with the caller's generator: reproducible and device-independent.
    num_draws = num_prompts if iso_temporal else num_prompts * group_size
    idx = torch.multinomial(probs, num_draws, replacement=True, generator=generator) + start
    if iso_temporal:
        idx = idx.repeat_interleave(group_size)
    return idx.long()
