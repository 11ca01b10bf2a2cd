"""One Flash-GRPO optimizer step: prompts → rollouts → rewards → advantages → clipped policy loss.

Every rank draws the same global batch of prompts and the same SDE step indices (seeded by the
step number), then works on its own slice of the videos; rewards are gathered so advantages and
rectification weights are computed over the global batch.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from fgrpo.algorithm import (
    group_advantages,
    kl_to_reference,
    lambda_t,
    policy_loss,
    rectification_weights,
    sample_step_indices,
    zero_variance_share,
)
from fgrpo.distributed.process_group import global_mean, max_over_ranks, mean_over_ranks
from fgrpo.models.wan.first_frame import VideoCondition, log_prob_mask
from fgrpo.models.wan.parallelize import compiled_graph_count
from fgrpo.recipe.config import Recipe

from .failures import agree_on_scores, submit_safely
from .ode_solvers import OdeConfig
from .policy import Policy
from .refill import RefillStats, refill_salt, refill_zero_variance
from .reward_scoring import not_scored
from .rollout import (
    Transitions,
    initial_latents,
    sample,
    shared_prefix_starts,
    step_noise_std_scale,
    transition_log_prob,
    video_generators,
)
from .rollout_cache import CacheConfig, RolloutCache, rollout_cache
from .update import PolicyUpdate


class StopRequested(Exception):
    """A stop signal was seen (on any rank): drop the unfinished step."""


def sde_mask(mode: str, step_indices: torch.Tensor, num_steps: int) -> torch.Tensor:
    """[B, N] bool: where each video takes the SDE step (one step for flash/fast, all for full)."""
    if mode == "full-trajectory":
        return torch.ones(step_indices.numel(), num_steps, dtype=torch.bool)
    mask = torch.zeros(step_indices.numel(), num_steps, dtype=torch.bool)
    mask[torch.arange(step_indices.numel()), step_indices] = True
    return mask


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + step * 7_919 + salt) % (2**62)


@dataclass
class StepResult:
    metrics: dict
    applied: bool  # False when the step was skipped (non-finite loss or gradient)
    refill_videos: int = 0  # videos rolled out beyond the step's batch (rollout.refill_zero_variance)


def _training_micro_batches(policy: Policy, trans: Transitions, size: int, check_stop):
    """The training pass's micro-batches (indices, transitions on the device), in its order."""
    n = len(trans)
    for s in range(0, n, size):
        check_stop()
        idx = torch.arange(s, min(s + size, n))
        yield idx, trans.select(idx).to(policy.device)


def _log_prob(policy: Policy, mb: Transitions, context, neg, image=None):
    return transition_log_prob(
        policy.transformer,
        mb,
        context,
        neg,
        policy.sigmas,
        policy.noise,
        policy.guidance(),
        policy.compute_dtype,
        image,
    )


def with_recomputed_old_log_prob(
    policy: Policy, trans: Transitions, context, neg, size: int, check_stop, compiled: bool = False, image=None
) -> tuple[Transitions, float]:
    """log pi_old recomputed by the training pass's forward on the same micro-batches (same shapes,
    same row positions, same kernels), so an on-policy ratio is exactly 1 (verl's "recompute old
    log-prob"). Returns the transitions with it, and max |log pi_rollout - log pi_recomputed|.
    Without gradients in eager mode (the same kernels either way); with gradient tracking when the
    blocks are compiled: inductor compiles an inference graph and a training graph with different
    fusions, and only the training graph's roundings equal the loss pass's (tp=2, bf16: 3e-4 apart)."""
    old = torch.empty_like(trans.log_prob)
    for idx, mb in _training_micro_batches(policy, trans, size, check_stop):
        with torch.set_grad_enabled(compiled):
            old[idx] = _log_prob(policy, mb, context, neg, image).log_prob.detach().to(old)
    drift = float((old - trans.log_prob).abs().max()) if len(trans) else 0.0
    return Transitions(trans.video, trans.step, trans.x, trans.x_next, old), drift


def shared_prefix(
    policy: Policy,
    recipe: Recipe,
    step: int,
    local: slice,
    mask: torch.Tensor,
    context,
    neg,
    round_: int = 0,
    cache: RolloutCache | None = None,
    image=None,
):
    """`rollout.share_prefix`: the G videos of a prompt start from the same noise (drawn per prompt),
    so their deterministic prefix up to the group's SDE step is one ODE integration per prompt (on
    each rank that holds videos of it), copied to its videos. Returns the local videos' latents at
    their group's start step, and those steps."""
    G = recipe.rollout.group_size
    group = torch.arange(local.start, local.stop) // G
    groups, local_group = torch.unique(group, return_inverse=True)
    first = torch.tensor([int((local_group == g).nonzero()[0]) for g in range(len(groups))])
    gens = video_generators(
        [step_seed(recipe.prompts.seed, step, salt=refill_salt(500_000 + int(g), round_)) for g in groups]
    )
    start = shared_prefix_starts(mask, local_group)
    x, _ = sample(
        policy.transformer,
        initial_latents(policy.latent_shape, gens).to(policy.device),
        context[first],
        neg[first],
        policy.sigmas,
        torch.zeros_like(mask[first]),
        policy.noise,
        policy.guidance(),
        gens,
        recipe.rollout.micro_batch,
        policy.compute_dtype,
        end=start[first],
        ode=OdeConfig.from_rollout(recipe.rollout),
        cache=cache,
        image=None if image is None else image[first],
    )
    return x[local_group], start


@dataclass
class Rollout:
    """A step's finished rollouts on this rank, and the global batch's rewards: all the update needs,
    and what a stop after them keeps (fgrpo.run_folder.pending) so a resumed job trains from it."""

    step: int  # optimizer steps done before this one
    prompts: list[str]  # the step's global batch of prompts
    indices: torch.Tensor  # SDE step index per video of the global batch
    trans: Transitions  # this rank's recorded SDE transitions
    all_rewards: torch.Tensor  # [P*G] the global batch's total rewards
    components: dict[str, torch.Tensor]  # this rank's per-reward scores
    times: dict[str, float]
    resumed: bool = False
    # this rank's text and negative context and image condition (None: text-to-video), as rolled out
    # (not kept: a resumed job looks them up)
    text: tuple[torch.Tensor, torch.Tensor, VideoCondition | None] | None = None
    # the prompts the step drew (None: `prompts`; they differ where rollout.refill_zero_variance
    # replaced groups), and what the refill did
    drawn: list[str] | None = None
    refill: RefillStats = RefillStats()

    def state_dict(self) -> dict:
        t = self.trans
        return {
            "step": self.step,
            "prompts": list(self.prompts),
            "indices": self.indices,
            "all_rewards": self.all_rewards,
            "components": dict(self.components),
            "times": dict(self.times),
            # None unless a refill replaced groups (then the resumed job matches what it draws with it)
            "drawn": None if self.drawn in (None, self.prompts) else list(self.drawn),
            "refill": dataclasses.asdict(self.refill),
            "trans": {
                "video": t.video,
                "step": t.step,
                "x": t.x.cpu(),
                "x_next": t.x_next.cpu(),
                "log_prob": t.log_prob.cpu(),
            },
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "Rollout":
        t = state["trans"]
        trans = Transitions(t["video"], t["step"], t["x"], t["x_next"], t["log_prob"])
        return cls(
            int(state["step"]),
            list(state["prompts"]),
            state["indices"],
            trans,
            state["all_rewards"],
            dict(state["components"]),
            dict(state["times"]),
            resumed=True,
            drawn=list(state.get("drawn") or state["prompts"]),
            refill=RefillStats(**state.get("refill", {})),
        )


class StopAfterRollout(StopRequested):
    """A stop seen once the step's rollouts were complete: they travel with it, to be kept."""

    def __init__(self, rollout: Rollout):
        super().__init__()
        self.rollout = rollout


def _local_videos(policy: Policy, recipe: Recipe, num_prompts: int | None = None) -> slice:
    """This rank's slice of a global batch of `num_prompts` (default prompts_per_step) x G videos."""
    P = recipe.rollout.prompts_per_step if num_prompts is None else num_prompts
    n_local = P * recipe.rollout.group_size // policy.dims.dp
    return slice(policy.dims.dp_rank * n_local, (policy.dims.dp_rank + 1) * n_local)


def _video_text(policy: Policy, prompts: list[str], group_size: int, local: slice):
    """This rank's videos' prompts, their text context, the negative context and their image condition."""
    video_prompts = [p for p in prompts for _ in range(group_size)][local]
    context, neg = policy.encode(video_prompts), policy.negative_context(len(video_prompts))
    return video_prompts, context, neg, policy.image_condition(video_prompts)


def flash_grpo_step(
    policy: Policy,
    update: PolicyUpdate,
    rewards,
    recipe: Recipe,
    step: int,
    prompts: list[str],
    check_stop,
    kept: Rollout | None = None,
    draw=None,
) -> StepResult:
    """One optimizer step (`step` = optimizer steps done so far) on the global batch `prompts`;
    from `kept` rollouts of this very step (a resumed job) instead of rolling out, when given.
    `draw(n)` gives n fresh prompts (the prompt sampler's) for rollout.refill_zero_variance.
    A stop seen after the rollouts raises StopAfterRollout, which carries them."""
    rollout = kept if kept is not None else roll_out(policy, rewards, recipe, step, prompts, check_stop)
    if kept is None and recipe.rollout.refill_zero_variance > 0:
        if draw is None:
            raise ValueError("rollout.refill_zero_variance needs fresh prompts: pass draw (the prompt sampler's next)")
        rollout = _refilled(policy, rewards, recipe, step, rollout, check_stop, draw)
    try:
        result = train_on(policy, update, recipe, rollout, check_stop)
    except StopRequested as e:
        raise StopAfterRollout(rollout) from e
    result.refill_videos = rollout.refill.videos
    return result


def _refilled(policy: Policy, rewards, recipe: Recipe, step: int, rollout: Rollout, check_stop, draw) -> Rollout:
    """The step's rollout with its all-equal groups replaced (fgrpo.trainer.refill)."""

    def roll(prompts: list[str], round_: int) -> Rollout:
        return roll_out(policy, rewards, recipe, step, prompts, check_stop, round_)

    drawn = list(rollout.prompts)
    out, stats = refill_zero_variance(
        rollout,
        roll,
        draw,
        recipe.rollout.refill_zero_variance,
        recipe.rollout.group_size,
        policy.dims,
        policy.device,
        _local_videos(policy, recipe),
    )
    return dataclasses.replace(out, drawn=drawn, refill=stats)


def roll_out(
    policy: Policy, rewards, recipe: Recipe, step: int, prompts: list[str], check_stop, round_: int = 0
) -> Rollout:
    """The step's rollouts of the global batch `prompts` on this rank (no grad), scored, with the
    rewards gathered to the global batch; `round_` > 0: a refill round's (its own seeds)."""
    r, ro, alg, dims = recipe, recipe.rollout, recipe.algorithm, policy.dims
    P, G = len(prompts), ro.group_size
    local = _local_videos(policy, recipe, P)
    n_local = local.stop - local.start
    times = {}

    # --- timestep indices: identical on every rank (same seed), one per prompt when iso-temporal
    gen = torch.Generator().manual_seed(step_seed(r.prompts.seed, step, salt=refill_salt(1, round_)))
    iso = alg.iso_temporal if alg.mode == "flash" else False
    indices = sample_step_indices(P, G, r.timesteps.window, list(r.timesteps.weights) or None, iso, gen)
    mask = sde_mask(alg.mode, indices, ro.steps)[local]

    # --- rollouts (no grad)
    t0 = time.perf_counter()
    video_prompts, context, neg, image = _video_text(policy, prompts, G, local)
    gens = video_generators(
        [step_seed(r.prompts.seed, step, salt=refill_salt(1000 + v, round_)) for v in range(local.start, local.stop)]
    )
    # eval mode, and what only sampling wants (Policy.rollout); rollout.cache's hooks exist only here
    with policy.rollout(), rollout_cache(policy.transformer, CacheConfig.from_rollout(ro)) as cache:
        if ro.share_prefix:
            latents, start = shared_prefix(policy, r, step, local, mask, context, neg, round_, cache, image)
        else:
            latents, start = initial_latents(policy.latent_shape, gens).to(policy.device), None
        pending, parts = [], []
        for s in range(0, n_local, ro.micro_batch):  # micro-batches, with a stop check between them
            check_stop()
            sl = slice(s, s + ro.micro_batch)
            f, tr = sample(
                policy.transformer,
                latents[sl],
                context[sl],
                neg[sl],
                policy.sigmas,
                mask[sl],
                policy.noise,
                policy.guidance(),
                gens[sl],
                ro.micro_batch,
                policy.compute_dtype,
                start=None if start is None else start[sl],
                ode=OdeConfig.from_rollout(ro),
                cache=cache,
                image=None if image is None else image[sl],
            )
            tr.video += s
            parts.append(tr)
            # Sent now: a reward server scores this micro-batch while the next one is rolled out.
            # sp and tp replicas hold the same videos: one rank of the slice scores them (gather_dp keeps
            # its scores).
            pending.append(
                submit_safely(rewards.submit, policy.decode(f), video_prompts[sl])
                if dims.scores_videos
                else not_scored(len(video_prompts[sl]), rewards.names)
            )
    trans = Transitions.cat(parts)
    del parts  # the records live on in `trans` only: kept twice they cost GiBs (fgrpo plan showed it)
    inline = sum(p.inline_s for p in pending)  # in-process scoring happened inside the loop above
    times["rollout"] = time.perf_counter() - t0 - inline

    # --- rewards, gathered to the global batch
    t0 = time.perf_counter()
    scored = agree_on_scores(pending)  # a failure on any rank is raised on every rank
    times["reward_wait"] = time.perf_counter() - t0 + inline
    local_rewards = torch.cat([total.to(policy.device) for total, _ in scored])
    components = {k: torch.cat([c[k].to(policy.device) for _, c in scored]) for k in scored[0][1]}
    all_rewards = dims.gather_dp(local_rewards).cpu()
    times["reward"] = time.perf_counter() - t0 + inline
    components = {k: v.cpu() for k, v in components.items()}
    return Rollout(step, list(prompts), indices, trans, all_rewards, components, times, text=(context, neg, image))


def train_on(policy: Policy, update: PolicyUpdate, recipe: Recipe, rollout: Rollout, check_stop) -> StepResult:
    """The policy update at the rollout's recorded SDE step(s), and the step's metrics."""
    r, ro, alg, dims = recipe, recipe.rollout, recipe.algorithm, policy.dims
    G = ro.group_size
    local = _local_videos(policy, recipe)
    trans, all_rewards, indices, times = rollout.trans, rollout.all_rewards, rollout.indices, dict(rollout.times)
    iso = alg.iso_temporal if alg.mode == "flash" else False
    # A resumed or refilled rollout holds no conditions: looked up in the caches.
    context, neg, image = rollout.text or _video_text(policy, rollout.prompts, G, local)[1:]
    advantages = group_advantages(all_rewards, G, alg.adv_std, alg.adv_clip)
    adv_local = advantages[local]

    # --- policy update at the recorded SDE step(s)
    t0 = time.perf_counter()
    check_stop()
    sig = policy.sigmas
    if alg.mode == "flash" and alg.rectification:
        s_t = step_noise_std_scale(sig, trans.step, policy.noise)
        inv_lam = 1.0 / lambda_t(sig[trans.step].float(), sig[trans.step + 1].float(), s_t)
        w = rectification_weights(inv_lam, global_mean(inv_lam))
    else:
        w = torch.ones(len(trans))
    update.zero_grad()
    n_trans = len(trans)
    drift = 0.0
    if alg.recompute_old_log_prob:
        trans, drift = with_recomputed_old_log_prob(
            policy, trans, context, neg, ro.micro_batch, check_stop, compiled=r.parallelism.compile, image=image
        )
    sums = {"loss": 0.0, "clip": 0.0, "kl": 0.0, "ratio_dev": 0.0}
    ratio_dev_max = 0.0  # on-policy (first use of a rollout) it must stay far below clip_range
    for idx, mb in _training_micro_batches(policy, trans, ro.micro_batch, check_stop):
        out = _log_prob(policy, mb, context, neg, image)
        kl = None
        if alg.kl_beta > 0:
            with torch.no_grad(), policy.reference():
                ref = _log_prob(policy, mb, context, neg, image)
            kl = kl_to_reference(out.mean, ref.mean, out.std, log_prob_mask(image, mb.x))  # as the log-prob
        total = policy_loss(
            out.log_prob,
            mb.log_prob,
            adv_local[mb.video].to(policy.device),
            alg.clip_range,
            weights=w[idx].to(policy.device),
            kl=kl,
            beta=alg.kl_beta,
        )
        frac = len(idx) / n_trans  # each micro-batch's share of this rank's mean
        (total.loss * frac).backward()
        dev = (total.ppo.ratio.detach() - 1).abs()
        sums["loss"] += float(total.loss.detach()) * frac
        sums["clip"] += float(total.ppo.clip_fraction) * frac
        sums["ratio_dev"] += float(dev.mean()) * frac
        ratio_dev_max = max(ratio_dev_max, float(dev.max()))
        sums["kl"] += float(kl.mean()) * frac if kl is not None else 0.0
    check_stop()
    sums = mean_over_ranks(sums)  # report the global batch, not rank 0's share
    ratio_dev_max, drift = max_over_ranks(ratio_dev_max), max_over_ranks(drift)
    grad_norm = update.clip()
    finite = bool(torch.isfinite(torch.tensor(sums["loss"])) and torch.isfinite(grad_norm))
    if finite:
        update.step()
    state_bytes = update.state_bytes()
    update.zero_grad()
    times["train"] = time.perf_counter() - t0

    metrics = {
        "step": rollout.step + 1 if finite else rollout.step,
        "reward_mean": float(all_rewards.mean()),
        "reward_std": float(all_rewards.std(correction=0)),
        "adv_std": float(advantages.std(correction=0)),
        "adv_abs_mean": float(advantages.abs().mean()),
        # prompt groups whose G rewards are all equal: zero advantage everywhere, nothing learned
        "zero_variance_groups": zero_variance_share(all_rewards, G),
        "loss": sums["loss"],
        "clip_frac": sums["clip"],
        "ratio_dev": sums["ratio_dev"],
        "ratio_dev_max": ratio_dev_max,
        # how far the rollout's own log-probs were from the training pass's (0 unless recomputed)
        "old_log_prob_drift": drift,
        "kl": sums["kl"],
        "grad_norm": float(grad_norm),
        "lr": update.lr,
        "timestep_indices": indices[::G].tolist() if iso else indices.tolist(),
        "time_rollout": times["rollout"],
        "time_reward": times["reward"],
        "time_reward_wait": times["reward_wait"],  # blocked on scores; the rest of scoring overlapped rollouts
        "time_train": times["train"],
        **{f"reward/{k}": float(dims.gather_dp(v.to(policy.device)).mean()) for k, v in rollout.components.items()},
        # 1 when this step trained on rollouts kept across a stop (its time_rollout is the original's)
        "rollout_resumed": int(rollout.resumed),
        "state_bytes_per_rank": state_bytes,
    }
    if ro.refill_zero_variance > 0:  # the trained batch's zero_variance_groups is after the refill
        metrics.update(rollout.refill.metrics())
    if r.parallelism.compile:
        metrics["compile/graphs"] = compiled_graph_count()
    return StepResult(metrics, finite)
