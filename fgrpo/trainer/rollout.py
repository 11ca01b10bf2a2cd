"""Rollouts: ODE sampling with SDE steps where a mask says so, recording what training needs.

Flash-GRPO: one SDE step per video (shared by its group); Fast: one per video, drawn per video;
full trajectory: every step. One code path serves all three; only the SDE mask differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fgrpo.algorithm import noise_scale, ode_step, sde_step
from fgrpo.algorithm.ode_grid import subgrid_indices, trajectory_nodes
from fgrpo.models.wan.first_frame import FirstFrameCondition, VideoCondition, impose_first_frame, log_prob_mask

from .ode_solvers import EULER_EVERY_STEP, OdeConfig, SegmentSolver
from .rollout_cache import RolloutCache, step_context


def velocity(
    transformer,
    x,
    sigma,
    context,
    neg_context=None,
    cfg_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
    image: VideoCondition | None = None,
) -> torch.Tensor:
    """v = v_u + cfg·(v_c − v_u), with the conditional and unconditional passes in one batch.

    Latents and text context enter in the compute `dtype` (the precision policy's); Wan's timestep
    input σ·1000 stays float32, as diffusers' pipeline feeds it. Returns float32. `image`: each
    video's image condition (image-to-video models, and Wan2.2-TI2V's text+image mode: the first
    frame given, fgrpo.models.wan.first_frame), in both passes as WanImageToVideoPipeline.

    Under sequence parallelism the transformer splits the tokens internally and returns the whole
    velocity on every sp rank (fgrpo.models.wan.sequence_parallel), so sampling, the SDE step and
    log-probs here run on whole latents, identically on the sp ranks of a group.
    """
    text, scale = text_input(context, neg_context, cfg_scale, dtype)
    return guided_velocity(transformer, x, sigma, text, scale, dtype, image_input(image, scale))


def text_input(context, neg_context, cfg_scale: float, dtype: torch.dtype) -> tuple[torch.Tensor, float | None]:
    """The transformer's text input in `dtype` and the guidance scale `guided_velocity` takes:
    ([context; neg_context], cfg_scale) with CFG (batched), (context, None) without (no negative
    context, or cfg_scale 1). The sampler builds it once per micro-batch: one tensor for every step
    lets the text-side projections be computed once (fgrpo.models.wan.cross_attention_cache)."""
    if neg_context is None or cfg_scale == 1.0:
        return context.to(dtype), None
    return torch.cat([context, neg_context]).to(dtype), cfg_scale


def image_input(image: VideoCondition | None, cfg_scale: float | None) -> VideoCondition | None:
    """The image condition `guided_velocity` takes for `text_input`'s batch: doubled with CFG (the
    unconditional half is conditioned on the same image, as in WanImageToVideoPipeline), as it is
    without (`cfg_scale` None: the one conditional pass still takes the image)."""
    if image is None or cfg_scale is None:
        return image
    return image.for_cfg()


def guided_velocity(
    transformer, x, sigma, text, cfg_scale: float | None, dtype: torch.dtype, image: VideoCondition | None = None
) -> torch.Tensor:
    """`velocity` from a prepared `text_input` (and `image_input`); `cfg_scale` None: no guidance
    (text is the context)."""
    t = (sigma * 1000.0).float()
    if cfg_scale is None:
        return _forward(transformer, x, t, text, image, dtype).float()
    out = _forward(transformer, torch.cat([x, x]), torch.cat([t, t]), text, image, dtype).float()
    v_cond, v_uncond = out.chunk(2)
    return classifier_free_guidance(v_cond, v_uncond, cfg_scale)


def classifier_free_guidance(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance of the velocity (Ho & Salimans; diffusers' Wan pipelines):

        v = v_u + s (v_c - v_u)

    `scale` a number, or a tensor broadcasting over the rows (one scale per row)."""
    return v_uncond + scale * (v_cond - v_uncond)


Guidance = float | Sequence[float]
"""A guidance scale for every step, or one per step of the sigma grid (two experts, each its own:
fgrpo.models.wan.experts.step_guidance_scales)."""


def scale_at(cfg_scale: Guidance, step: int) -> float:
    """The guidance scale of grid step `step`."""
    return float(cfg_scale) if isinstance(cfg_scale, (int, float)) else float(cfg_scale[step])


def rowwise_velocity(
    transformer,
    x,
    sigma,
    context,
    neg_context,
    scales: Sequence[float],
    dtype: torch.dtype = torch.float32,
    image: VideoCondition | None = None,
) -> torch.Tensor:
    """`velocity` with row b guided by its own scale s_b (a training micro-batch may hold both
    experts' transitions, each expert guided by its own scale), in one transformer call: every row's
    conditional pass, then the unconditional pass of the rows with s_b != 1 (the sampler skips it
    there too),

        v_b = v_u,b + s_b (v_c,b - v_u,b)   (s_b != 1),        v_b = v_c,b   (s_b = 1).

    One call, so a two-expert model's ranks keep running the same collectives (WanExperts). Every
    row the same scale: `velocity` itself."""
    if neg_context is None or len(set(scales)) == 1:
        return velocity(transformer, x, sigma, context, neg_context, scales[0] if scales else 1.0, dtype, image)
    n = x.shape[0]
    guided = torch.tensor([b for b, s in enumerate(scales) if s != 1.0], dtype=torch.long, device=x.device)
    rows = torch.cat([torch.arange(n, device=x.device), guided])  # conditional passes, then the guided rows'
    text = torch.cat([context, neg_context[guided]]).to(dtype)
    t = (sigma * 1000.0).float()
    out = _forward(transformer, x[rows], t[rows], text, None if image is None else image[rows], dtype).float()
    v_cond, v_uncond = out[:n], out[n:]
    s = torch.tensor([scales[b] for b in guided.tolist()], dtype=torch.float32, device=x.device)
    s = s.view(-1, *([1] * (x.dim() - 1)))
    return v_cond.index_put((guided,), classifier_free_guidance(v_cond[guided], v_uncond, s))


class _StepInputs:
    """A micro-batch's text and image inputs for `guided_velocity`, built once per set of active rows
    and guidance (CFG or not), so every step with the same ones is fed the very same tensors (the
    text-side projections are cached by the text tensor's identity: cross_attention_cache)."""

    def __init__(self, context, neg, image: VideoCondition | None, dtype: torch.dtype):
        self.context, self.neg, self.image, self.dtype = context, neg, image, dtype
        self.built: dict[tuple[tuple[int, ...] | None, bool], tuple] = {}

    def at(self, active: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, float | None, VideoCondition | None]:
        """(text, scale or None without CFG, image) for the rows `active` (None: all) at `scale`."""
        key_rows = None if active is None else tuple(active.tolist())
        guided = self.neg is not None and scale != 1.0
        key = (key_rows, guided)
        if key not in self.built:
            if key_rows is not None:  # rows finished or not yet started: the previous subset is done with
                self.built = {k: v for k, v in self.built.items() if k[0] is None}
            ctx = self.context if active is None else self.context[active]
            neg = None if self.neg is None else (self.neg if active is None else self.neg[active])
            text, on = text_input(ctx, neg, scale, self.dtype)
            img = None if self.image is None or active is None else self.image[active]
            self.built[key] = (text, on is not None, image_input(self.image if active is None else img, on))
        text, on, img = self.built[key]
        return text, (scale if on else None), img


def _forward(transformer, x, t, text, image: VideoCondition | None, dtype: torch.dtype) -> torch.Tensor:
    if image is None:
        return transformer(x.to(dtype), t, text, return_dict=False)[0]
    if isinstance(image, FirstFrameCondition):  # the image as the first frame, its tokens at t = 0
        hidden, per_token = image.transformer_inputs(x, t, dtype)
        return transformer(hidden, per_token, text, return_dict=False)[0]
    hidden, extra = image.transformer_inputs(x, dtype)
    return transformer(hidden, t, text, return_dict=False, **extra)[0]


@dataclass
class NoiseConfig:
    kind: str
    constant: float


@dataclass
class Transitions:
    """SDE transitions of a rollout: (x_i, x_{i+1}, log π_old) at step i of video `video`."""

    video: torch.Tensor  # [T] local video index
    step: torch.Tensor  # [T] step index i
    x: torch.Tensor  # [T, C, F, H, W]
    x_next: torch.Tensor
    log_prob: torch.Tensor  # [T]

    def __len__(self) -> int:
        return int(self.video.numel())

    def select(self, idx: torch.Tensor) -> "Transitions":
        return Transitions(self.video[idx], self.step[idx], self.x[idx], self.x_next[idx], self.log_prob[idx])

    def to(self, device) -> "Transitions":
        """States and log-probs on `device` (indices stay on the CPU, where they index)."""
        return Transitions(self.video, self.step, self.x.to(device), self.x_next.to(device), self.log_prob.to(device))

    @classmethod
    def cat(cls, parts: list["Transitions"]) -> "Transitions":
        fields = ("video", "step", "x", "x_next", "log_prob")
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in fields))


def step_noise_std_scale(sigmas: torch.Tensor, step: torch.Tensor, noise: NoiseConfig) -> torch.Tensor:
    """s_t for each step index (σ_max of the `wan` schedule is the grid's second sigma)."""
    return noise_scale(noise.kind, sigmas[step], float(sigmas[1]), noise.constant).float()


def video_generators(seeds: list[int]) -> list[torch.Generator]:
    """One generator per video: a video's noise does not depend on how videos are batched or placed."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def initial_latents(shape: tuple[int, ...], generators: list[torch.Generator]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


@dataclass(frozen=True)
class _RowPlan:
    """One row's steps in a `sample` call: the next node after each node it is evaluated at, and
    the deterministic segment (its nodes) each non-SDE step belongs to."""

    next: dict[int, int]
    segment: dict[int, tuple[int, ...]]

    @classmethod
    def of(cls, grid: list[int], start: int, end: int, sde_row: torch.Tensor) -> "_RowPlan":
        sde = set(sde_row.nonzero().flatten().tolist())
        nodes = trajectory_nodes(grid, start, end, sde)
        segments, current = [], [nodes[0]]
        for a, b in zip(nodes[:-1], nodes[1:]):
            if a in sde:  # the SDE step a -> a + 1 = b closes the segment before it
                segments.append(current)
                current = [b]
            else:
                current.append(b)
        segments.append(current)
        segment = {i: tuple(seg) for seg in segments for i in seg[:-1]}
        return cls(dict(zip(nodes[:-1], nodes[1:])), segment)


def _solver_steps(solvers, solver: str, plans, active, i: int, sig, xa, v, x_new) -> None:
    """The active rows' deterministic steps from grid step i by their segments' multistep solvers
    (rows with the same segment share one), written into x_new; SDE rows are left as they are."""
    by_segment: dict[tuple[int, ...], list[int]] = {}
    for pos, r in enumerate(active.tolist()):
        seg = plans[r].segment.get(i)
        if seg is not None:
            by_segment.setdefault(seg, []).append(pos)
    for seg, pos in by_segment.items():
        if seg not in solvers:
            solvers[seg] = SegmentSolver(solver, sig[list(seg)])
        x_new[pos] = solvers[seg].step(v[pos], xa[pos])
        if solvers[seg].steps_left == 0:
            del solvers[seg]


@torch.no_grad()
def sample(
    transformer,
    latents: torch.Tensor,
    context: torch.Tensor,
    neg_context: torch.Tensor | None,
    sigmas: torch.Tensor,
    sde_mask: torch.Tensor,
    noise: NoiseConfig,
    cfg_scale: Guidance,
    generators: list[torch.Generator],
    micro_batch: int,
    dtype: torch.dtype = torch.float32,
    start: torch.Tensor | None = None,
    end: torch.Tensor | None = None,
    ode: OdeConfig = EULER_EVERY_STEP,
    cache: RolloutCache | None = None,
    image: VideoCondition | None = None,
) -> tuple[torch.Tensor, Transitions]:
    """Integrate every video from σ_start to σ_end (default σ_0 to 0); SDE at (video, step) where
    `sde_mask` is True.

    latents [B, C, F, H, W] float32 (video b at σ_{start[b]}); context [B, L, D]; sde_mask [B, N]
    bool; start/end [B] step indices (a row takes steps start[b] <= i < end[b]: a shared prefix ends
    where its group's first SDE step is, and the group's videos start there). One generator per video
    supplies its SDE noise. Returns the latents at σ_end and the recorded SDE transitions.

    `ode` (rollout.ode_solver, rollout.ode_steps): the deterministic steps between σ_start, the SDE
    steps and σ_end take the sub-grid of fgrpo.algorithm.ode_grid (every grid step by default), by
    Euler or a diffusers multistep solver (fgrpo.trainer.ode_solvers); an SDE step i always goes
    σ_i → σ_{i+1} on the grid. A row is evaluated at grid step i only when i is one of its nodes.

    `cache` (rollout.cache, fgrpo.trainer.rollout_cache): the deterministic steps may skip blocks;
    a forward holding an SDE step is computed in full; its state is reset per micro-batch.

    `cfg_scale`: one guidance scale, or one per grid step (two experts: each expert's steps its own,
    fgrpo.models.wan.experts.step_guidance_scales); a step at scale 1 takes the conditional pass alone.

    `image` [B] (image-to-video models): each video's image condition, in every forward. Wan2.2-TI2V's
    text+image mode (FirstFrameCondition): the image's latent is the first latent frame at the start
    and after every step, ODE or SDE, and an SDE transition's log-prob leaves that frame out.
    """
    device = latents.device
    sig = sigmas.to(device=device, dtype=torch.float32)
    n_steps = sig.numel() - 1
    n = latents.shape[0]
    start = torch.zeros(n, dtype=torch.long) if start is None else start.long().cpu()
    end = torch.full((n,), n_steps, dtype=torch.long) if end is None else end.long().cpu()
    grid = subgrid_indices(n_steps, ode.steps)
    finals, records = [], []
    for first in range(0, n, micro_batch):
        sl = slice(first, first + micro_batch)
        x, mask, st, en = latents[sl].float().clone(), sde_mask[sl], start[sl], end[sl]
        neg = None if neg_context is None else neg_context[sl]
        img = None if image is None else image[sl]
        inputs = _StepInputs(context[sl], neg, img, dtype)  # one text tensor for all steps (per guidance)
        x = impose_first_frame(x, img)  # TI2V text+image: the image is the first frame from the start
        plans = [_RowPlan.of(grid, int(st[r]), int(en[r]), mask[r]) for r in range(x.shape[0])]
        solvers: dict[tuple[int, ...], SegmentSolver] = {}  # per segment of nodes, for its rows
        if cache is not None:
            cache.reset()  # a micro-batch's cache starts empty
        for i in range(int(st.min()), int(en.max())):
            active = torch.tensor([r for r, p in enumerate(plans) if i in p.next], dtype=torch.long)
            if active.numel() == 0:
                continue
            whole = active.numel() == x.shape[0]
            text, scale, img_in = inputs.at(None if whole else active, scale_at(cfg_scale, i))
            xa = x if whole else x[active]
            s = sig[i].expand(xa.shape[0])
            s_next = sig[torch.tensor([plans[r].next[i] for r in active.tolist()], device=device)]
            rows = mask[active, i].nonzero().flatten().tolist()  # positions among the active rows
            with step_context(cache, active.tolist(), exact=bool(rows)):  # an SDE step: every block
                v = guided_velocity(transformer, xa, s, text, scale, dtype, img_in)
            x_new = ode_step(xa, v, s, s_next)
            if ode.solver != "euler":
                _solver_steps(solvers, ode.solver, plans, active, i, sig, xa, v, x_new)
            if rows:
                videos = active[rows]
                eps = torch.stack([torch.randn(x.shape[1:], generator=generators[first + int(r)]) for r in videos])
                step = torch.full((len(rows),), i, dtype=torch.long)
                s_t = step_noise_std_scale(sig.cpu(), step, noise).to(device)
                sampled = log_prob_mask(img, xa)  # TI2V text+image: the imposed first frame not counted
                out = sde_step(xa[rows], v[rows], s[rows], s_next[rows], s_t, noise=eps.to(device), mask=sampled)
                x_next = impose_first_frame(out.prev_sample.float(), img, videos)
                records.append(Transitions(videos + first, step, xa[rows].clone(), x_next, out.log_prob))
                x_new[rows] = x_next
            # TI2V text+image: re-imposed after every step (the pipeline blends before every call and at
            # the end; its other frames are the same, first_frame.py)
            x_new = impose_first_frame(x_new, img, None if whole else active)
            if whole:
                x = x_new
            else:
                x[active] = x_new
        finals.append(x)
    if cache is not None:
        cache.reset()  # nothing kept past the rollout's forwards (decoding, scoring)
    if records:
        trans = Transitions.cat(records)
    else:
        empty = latents.new_zeros((0, *latents.shape[1:]))
        trans = Transitions(
            torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), empty, empty, latents.new_zeros(0)
        )
    return torch.cat(finals), trans


def shared_prefix_starts(sde_mask: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """[B] the step where each video's group leaves its shared deterministic prefix: the earliest
    SDE step of any video of the group (flash with iso-temporal grouping: the group's one step)."""
    first_sde = torch.where(sde_mask.any(1), sde_mask.float().argmax(1), sde_mask.shape[1])
    per_group = torch.full((int(group.max()) + 1,), sde_mask.shape[1], dtype=torch.long)
    per_group.scatter_reduce_(0, group, first_sde, reduce="amin")
    return per_group[group]


def transition_log_prob(
    transformer,
    trans: Transitions,
    context,
    neg_context,
    sigmas: torch.Tensor,
    noise: NoiseConfig,
    cfg_scale: Guidance,
    dtype: torch.dtype = torch.float32,
    image: VideoCondition | None = None,
):
    """Recompute log π_θ(x_{i+1} | x_i) for recorded transitions (with gradients); returns the SDEStep.
    `cfg_scale`: as `sample`'s (each transition guided by its step's scale, `rowwise_velocity`).
    `image`: the videos' image conditions (indexed like `context`, by video). Wan2.2-TI2V's text+image
    mode: the log-density over every latent frame but the first (imposed, not sampled), exactly as
    `sample` recorded it, so an on-policy ratio stays exactly 1:
        log π(x_{i+1} | x_i) = (1 / |S|) Σ_{e ∈ S} log N(x_{i+1,e}; μ_θ,e, std²),  S = frames 1..F'-1."""
    device = trans.x.device
    sig = sigmas.to(device=device, dtype=torch.float32)
    s, s_next = sig[trans.step], sig[trans.step + 1]
    neg = None if neg_context is None else neg_context[trans.video]
    img = None if image is None else image[trans.video]
    scales = [scale_at(cfg_scale, int(k)) for k in trans.step.tolist()]  # each transition's step's
    v = rowwise_velocity(transformer, trans.x, s, context[trans.video], neg, scales, dtype, img)
    s_t = step_noise_std_scale(sigmas.cpu(), trans.step.cpu(), noise).to(device)
    return sde_step(trans.x, v, s, s_next, s_t, prev_sample=trans.x_next, mask=log_prob_mask(image, trans.x))
