"""One Flash-GRPO optimizer step: prompts → rollouts → rewards → advantages → clipped policy loss.

Every rank draws the same global batch of prompts and the same SDE step indices (seeded by the
step number), then works on its own slice of the videos; rewards are gathered so advantages and
rectification weights are computed over the global batch.
"""

from __future__ import annotations

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
)
from fgrpo.algorithm.rectification import global_mean

from .dist import max_over_ranks, mean_over_ranks
from .sharded import local_state_bytes
from .reward_scoring import not_scored
from .rollout import Transitions, initial_latents, sample, step_noise_std_scale, transition_log_prob, video_generators


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


def _training_micro_batches(t, trans: Transitions, check_stop):
    """The training pass's micro-batches (indices, transitions on the device), in its order."""
    n, size = len(trans), t.recipe.rollout.micro_batch
    for s in range(0, n, size):
        check_stop()
        idx = torch.arange(s, min(s + size, n))
        mb = trans.select(idx)
        yield idx, Transitions(mb.video, mb.step, mb.x.to(t.device), mb.x_next.to(t.device), mb.log_prob.to(t.device))


@torch.no_grad()
def with_recomputed_old_log_prob(t, trans: Transitions, context, neg, check_stop) -> tuple[Transitions, float]:
    """log pi_old recomputed by the training pass's forward on the same micro-batches (same shapes,
    same row positions, same kernels), so an on-policy ratio is exactly 1 (verl's "recompute old
    log-prob"). Returns the transitions with it, and max |log pi_rollout - log pi_recomputed|."""
    ro = t.recipe.rollout
    old = torch.empty_like(trans.log_prob)
    for idx, mb in _training_micro_batches(t, trans, check_stop):
        out = transition_log_prob(t.model.transformer, mb, context, neg, t.sigmas, t.noise, ro.cfg_scale,
                                  t.policy.compute)
        old[idx] = out.log_prob.to(old)
    drift = float((old - trans.log_prob).abs().max()) if len(trans) else 0.0
    return Transitions(trans.video, trans.step, trans.x, trans.x_next, old), drift


def flash_grpo_step(t, prompts: list[str], check_stop) -> StepResult:
    """Run one optimizer step for trainer `t` (see trainer.Trainer for the attributes used)."""
    r, ro, alg = t.recipe, t.recipe.rollout, t.recipe.algorithm
    P, G = ro.prompts_per_step, ro.group_size
    n_global = P * G
    dp_rank, dp_size = t.dims.dp_rank, t.dims.dp
    n_local = n_global // dp_size
    local = slice(dp_rank * n_local, (dp_rank + 1) * n_local)
    times = {}

    # --- timestep indices: identical on every rank (same seed), one per prompt when iso-temporal
    gen = torch.Generator().manual_seed(step_seed(r.prompts.seed, t.step, salt=1))
    iso = alg.iso_temporal if alg.mode == "flash" else False
    weights = list(r.timesteps.weights) or None
    indices = sample_step_indices(P, G, r.timesteps.window, weights, iso, gen)
    mask = sde_mask(alg.mode, indices, ro.steps)[local]

    # --- rollouts (no grad)
    t0 = time.perf_counter()
    video_prompts = [p for p in prompts for _ in range(G)][local]
    context = t.encode(video_prompts)
    neg = t.neg_context.expand(len(video_prompts), -1, -1)
    seeds = [step_seed(r.prompts.seed, t.step, salt=1000 + v) for v in range(local.start, local.stop)]
    gens = video_generators(seeds)
    t.model.transformer.eval()
    latents = initial_latents(t.latent_shape, gens).to(t.device)
    pending, trans = [], []
    for s in range(0, n_local, ro.micro_batch):  # micro-batches, with a stop check between them
        check_stop()
        sl = slice(s, s + ro.micro_batch)
        f, tr = sample(t.model.transformer, latents[sl], context[sl], neg[sl], t.sigmas, mask[sl],
                       t.noise, ro.cfg_scale, gens[sl], ro.micro_batch, t.policy.compute)
        tr.video += s
        trans.append(tr)
        # Sent now: a reward server scores this micro-batch while the next one is rolled out.
        # TP replicas hold the same videos: TP rank 0 scores them (gather_dp keeps its scores).
        pending.append(t.rewards.submit(t.model.decode(f), video_prompts[sl]) if t.dims.tp_rank == 0
                       else not_scored(len(video_prompts[sl]), t.rewards.names))
    trans = Transitions(*(torch.cat([getattr(x, k) for x in trans]) for k in ("video", "step", "x", "x_next", "log_prob")))
    inline = sum(p.inline_s for p in pending)  # in-process scoring happened inside the loop above
    times["rollout"] = time.perf_counter() - t0 - inline

    # --- rewards, gathered to the global batch
    t0 = time.perf_counter()
    scored = [p.result() for p in pending]
    times["reward_wait"] = time.perf_counter() - t0 + inline
    local_rewards = torch.cat([total.to(t.device) for total, _ in scored])
    components = {k: torch.cat([c[k].to(t.device) for _, c in scored]) for k in scored[0][1]}
    rewards = t.dims.gather_dp(local_rewards).cpu()
    advantages = group_advantages(rewards, G, alg.adv_std, alg.adv_clip)
    adv_local = advantages[local]
    times["reward"] = time.perf_counter() - t0 + inline

    # --- policy update at the recorded SDE step(s)
    t0 = time.perf_counter()
    check_stop()
    t.model.transformer.train()
    s_t = step_noise_std_scale(t.sigmas, trans.step, t.noise)
    if alg.mode == "flash" and alg.rectification:
        inv_lam = 1.0 / lambda_t(t.sigmas[trans.step].float(), t.sigmas[trans.step + 1].float(), s_t)
        w = rectification_weights(inv_lam, global_mean(inv_lam))
    else:
        w = torch.ones(len(trans))
    t.optimizer.zero_grad(set_to_none=True)
    n_trans = len(trans)
    drift = 0.0
    if alg.recompute_old_log_prob:
        trans, drift = with_recomputed_old_log_prob(t, trans, context, neg, check_stop)
    sums = {"loss": 0.0, "clip": 0.0, "kl": 0.0, "ratio_dev": 0.0}
    ratio_dev_max = 0.0  # on-policy (first use of a rollout) it must stay far below clip_range
    for idx, mb in _training_micro_batches(t, trans, check_stop):
        out = transition_log_prob(t.model.transformer, mb, context, neg, t.sigmas, t.noise, ro.cfg_scale,
                                  t.policy.compute)
        kl = None
        if alg.kl_beta > 0:
            with torch.no_grad(), t.reference_policy():
                ref = transition_log_prob(t.model.transformer, mb, context, neg, t.sigmas, t.noise, ro.cfg_scale,
                                          t.policy.compute)
            kl = kl_to_reference(out.mean, ref.mean, out.std)
        total = policy_loss(out.log_prob, mb.log_prob, adv_local[mb.video].to(t.device), alg.clip_range,
                            weights=w[idx].to(t.device), kl=kl, beta=alg.kl_beta)
        frac = len(idx) / n_trans  # each micro-batch's share of this rank's mean
        (total.loss * frac).backward()
        sums["loss"] += float(total.loss.detach()) * frac
        sums["clip"] += float(total.ppo.clip_fraction) * frac
        sums["ratio_dev"] += float((total.ppo.ratio.detach() - 1).abs().mean()) * frac
        ratio_dev_max = max(ratio_dev_max, float((total.ppo.ratio.detach() - 1).abs().max()))
        sums["kl"] += float(kl.mean()) * frac if kl is not None else 0.0
    check_stop()
    sums = mean_over_ranks(sums)  # report the global batch, not rank 0's share
    ratio_dev_max = max_over_ranks(ratio_dev_max)
    drift = max_over_ranks(drift)
    grad_norm = t.reduce_and_clip_gradients()
    finite = bool(torch.isfinite(torch.tensor(sums["loss"])) and torch.isfinite(grad_norm))
    if finite:
        t.optimizer.step()
        t.lr_schedule.step()
        t.state_bytes = local_state_bytes(t.params, t.optimizer)
    t.optimizer.zero_grad(set_to_none=True)
    times["train"] = time.perf_counter() - t0

    metrics = {
        "step": t.step + 1 if finite else t.step,
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std(correction=0)),
        "adv_std": float(advantages.std(correction=0)),
        "adv_abs_mean": float(advantages.abs().mean()),
        "loss": sums["loss"],
        "clip_frac": sums["clip"],
        "ratio_dev": sums["ratio_dev"],
        "ratio_dev_max": ratio_dev_max,
        # how far the rollout's own log-probs were from the training pass's (0 unless recomputed)
        "old_log_prob_drift": drift,
        "kl": sums["kl"],
        "grad_norm": float(grad_norm),
        "lr": t.lr_schedule.get_last_lr()[0],
        "timestep_indices": indices[::G].tolist() if iso else indices.tolist(),
        "time_rollout": times["rollout"],
        "time_reward": times["reward"],
        "time_reward_wait": times["reward_wait"],  # blocked on scores; the rest of scoring overlapped rollouts
        "time_train": times["train"],
        **{f"reward/{k}": float(t.dims.gather_dp(v.to(t.device)).mean()) for k, v in components.items()},
        "state_bytes_per_rank": t.state_bytes,
    }
    return StepResult(metrics, finite)
