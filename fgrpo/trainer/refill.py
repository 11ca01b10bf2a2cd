"""`rollout.refill_zero_variance`: a step's all-equal prompt groups replaced within the step.

After the step's rollouts are scored, groups whose G rewards are all equal (zero advantage: they
teach nothing) are replaced by fresh prompts drawn from the prompt sampler, rolled out and scored
as a small batch of their own (its own SDE step per group, its own seeds: `refill_salt`), and their
videos spliced into the batch at the replaced groups' places. The step still trains on exactly
prompts_per_step groups, each rank on its own slice of them.

Every rank decides alike: the choice is a function of the gathered rewards (fgrpo.algorithm.refill)
and the sampler is the same on every rank. A round's fresh videos split evenly over the
data-parallel ranks (`refill_batch_size`), so every rank makes the same forwards; their transitions
are gathered over the ranks so each can take those of its own slice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from fgrpo.algorithm import refill_batch_size, refill_pairs, video_sources, zero_variance_mask

from .rollout import Transitions

# A refill round's seeds (noise, SDE steps) are the step's own salts offset by round x 2^40: beyond
# any salt of a step's first rollouts, so no fresh video repeats the noise of one it replaces.
_ROUND_SALT = 2**40


def refill_salt(salt: int, round_: int) -> int:
    """The seed salt of refill round `round_` (0: the step's first rollouts, unchanged)."""
    return salt + round_ * _ROUND_SALT


@dataclasses.dataclass(frozen=True)
class RefillStats:
    """What a step's refill did (kept with its rollouts across a stop)."""

    groups: int = 0  # groups replaced
    rounds: int = 0  # refill rounds rolled out
    videos: int = 0  # videos rolled out by them (the job's, all ranks)
    draws: int = 0  # prompts drawn from the sampler by them

    def metrics(self) -> dict:
        return {"refilled_groups": self.groups, "refill_rounds": self.rounds, "refill_videos": self.videos}


def _gather_transitions(trans: Transitions, offset: int, dims, device) -> Transitions:
    """Every data-parallel rank's transitions (video numbers made global by `offset`), in rank order."""

    def gather(t: torch.Tensor) -> torch.Tensor:
        return dims.gather_dp(t.to(device)).to(t.device)

    return Transitions(
        gather(trans.video + offset), gather(trans.step), gather(trans.x), gather(trans.x_next), gather(trans.log_prob)
    )


def splice(rollout, fresh, fresh_all: Transitions, pairs, group_size: int, local: slice):
    """`rollout` with the groups of `pairs` (replaced, fresh) taken from the `fresh` rollout:
    prompts, SDE step indices and rewards of the global batch; this rank's transitions (from all
    ranks' fresh ones, `fresh_all`, numbered globally) and reward components (`fresh.components`
    gathered, global)."""
    G = group_size
    sources = video_sources(pairs, G)  # batch video -> fresh video, global numbers
    here = {v - local.start: f for v, f in sources.items() if local.start <= v < local.stop}

    prompts, indices, rewards = list(rollout.prompts), rollout.indices.clone(), rollout.all_rewards.clone()
    for j, f in pairs:
        prompts[j] = fresh.prompts[f]
        indices[j * G : (j + 1) * G] = fresh.indices[f * G : (f + 1) * G]
        rewards[j * G : (j + 1) * G] = fresh.all_rewards[f * G : (f + 1) * G]

    components = {k: v.clone() for k, v in rollout.components.items()}
    for k, v in components.items():
        for pos, f in here.items():
            v[pos] = fresh.components[k][f]

    replaced = torch.tensor(sorted(here), dtype=torch.long)
    keep = rollout.trans.select((~torch.isin(rollout.trans.video, replaced)).nonzero().flatten())
    wanted = torch.tensor(list(here.values()), dtype=torch.long)
    taken = fresh_all.select(torch.isin(fresh_all.video, wanted).nonzero().flatten())
    to_local = {f: pos for pos, f in here.items()}
    taken.video = torch.tensor([to_local[int(f)] for f in taken.video], dtype=torch.long)
    trans = Transitions.cat([keep, taken])
    trans = trans.select(torch.sort(trans.video, stable=True).indices)  # video order, as a rollout's

    return dataclasses.replace(
        rollout, prompts=prompts, indices=indices, all_rewards=rewards, components=components, trans=trans, text=None
    )


def refill_zero_variance(
    rollout,
    roll: Callable[[list[str], int], Any],  # -> a Rollout (fgrpo.trainer.flash_grpo, which calls this)
    draw: Callable[[int], list[str]],
    rounds: int,
    group_size: int,
    dims,
    device,
    local: slice,
):
    """Up to `rounds` refill rounds on `rollout` (a Rollout of the step): each draws as many fresh
    prompts as groups remain all-equal (rounded up to split over the ranks), rolls them out with
    `roll(prompts, round)` and splices in the fresh groups that are not all-equal. Groups still
    all-equal after the last round stay: the batch keeps its size. Returns the rollout and its
    RefillStats."""
    G, stats = group_size, RefillStats()
    for round_ in range(1, rounds + 1):
        need = int(zero_variance_mask(rollout.all_rewards, G).sum())
        if need == 0:
            break
        m = refill_batch_size(need, G, dims.dp)
        fresh = roll(draw(m), round_)
        per_rank = m * G // dims.dp
        fresh_all = _gather_transitions(fresh.trans, dims.dp_rank * per_rank, dims, device)
        gathered = {k: dims.gather_dp(v.to(device)).cpu() for k, v in fresh.components.items()}
        fresh = dataclasses.replace(fresh, components=gathered)
        pairs = refill_pairs(rollout.all_rewards, fresh.all_rewards, G)
        if pairs:
            rollout = splice(rollout, fresh, fresh_all, pairs, G, local)
        times = {k: rollout.times.get(k, 0.0) + fresh.times.get(k, 0.0) for k in rollout.times}
        rollout = dataclasses.replace(rollout, times=times)
        stats = RefillStats(stats.groups + len(pairs), round_, stats.videos + m * G, stats.draws + m)
    return rollout, stats
