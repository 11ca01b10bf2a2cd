"""Which prompt groups `rollout.refill_zero_variance` replaces, and by which fresh groups (pure).

A group whose G rewards are all equal has zero advantage everywhere and teaches nothing
(`zero_variance_groups`); the trainer replaces it by a fresh prompt's group, rolled out and scored
within the step. Everything here is a function of the gathered rewards, so every rank decides alike.
"""

from __future__ import annotations

import math

from torch import Tensor


def zero_variance_mask(rewards: Tensor, group_size: int) -> Tensor:
    """[num_prompts] bool: the groups whose G rewards are all equal (max - min == 0); `rewards` is
    the global batch [num_prompts * G], prompt-major, as in group_advantages."""
    groups = rewards.reshape(-1, group_size)
    return groups.amax(dim=1) == groups.amin(dim=1)


def refill_batch_size(need: int, group_size: int, dp: int) -> int:
    """Fresh groups a refill round rolls out to replace `need` groups: the fewest >= need whose
    videos split evenly over the `dp` data-parallel ranks, so every rank makes the same forwards."""
    if need < 1 or group_size < 1 or dp < 1:
        raise ValueError(f"need, group_size and dp must be >= 1, got {need}, {group_size}, {dp}")
    step = dp // math.gcd(group_size, dp)  # groups per whole share of every rank
    return -(-need // step) * step


def refill_pairs(rewards: Tensor, fresh_rewards: Tensor, group_size: int) -> list[tuple[int, int]]:
    """(replaced group, fresh group) pairs: the batch's all-equal groups in order, each taking the
    next fresh group (in draw order) that is not all-equal itself. Fewer pairs than all-equal groups
    when the fresh ones saturate too; the rest stay for the next round."""
    zero = zero_variance_mask(rewards, group_size).nonzero().flatten().tolist()
    usable = (~zero_variance_mask(fresh_rewards, group_size)).nonzero().flatten().tolist()
    return list(zip(zero, usable))


def video_sources(pairs: list[tuple[int, int]], group_size: int) -> dict[int, int]:
    """{video of the batch: fresh video it now holds}, videos numbered prompt-major."""
    return {j * group_size + i: f * group_size + i for j, f in pairs for i in range(group_size)}
