"""Wan2.2 A14B's two experts: `transformer` denoises the high-noise steps, `transformer_2` the
low-noise ones, switched at the folder's `boundary_ratio` exactly as diffusers 0.42's `WanPipeline`
switches (`expert_of_timestep`).

`WanExperts` holds both as one module, called as a Wan transformer is: each row of a batch goes
through the expert of its own timestep, so the sampler, the training pass and the FLOP counter
need no change. Its parameter names are `transformer.<name>` and `transformer_2.<name>` (the
folder's subfolders): checkpoints, EMA and export keep the experts apart by them. Each expert is
parallelised on its own (its own FSDP2 root), as a single transformer is.

Two things a single transformer does not need:
- **Rollouts gather one expert at a time** (`WanExperts.one_gathered`, for
  `parallelism.rollout_unsharded`): an expert's FSDP2 weights are gathered when a forward first
  needs it and resharded before the other expert is gathered, so at most one expert is resident
  unsharded (each micro-batch goes high -> low: two gathers per micro-batch, not one per rollout).
- **Collectives agree across ranks in training** (`train()` mode, several processes): a
  micro-batch's rows may need the low expert on one rank and not on another, but FSDP2's
  all-gathers and reduce-scatters are collective. The ranks agree (an all-reduce MAX) which experts
  run, and an expert a rank has no rows for runs on one dummy row whose output enters the result
  times 0: the same forwards and backwards on every rank, the gradient unchanged.
"""

from __future__ import annotations

import json
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import torch
import torch.distributed as dist
from torch import nn

from fgrpo.distributed.unsharded import fsdp_modules, unsharded_weights

EXPERT_SUBFOLDERS = ("transformer", "transformer_2")  # the diffusers folder's, high noise then low
EXPERT_NAMES = ("high", "low")  # lora.experts' words for them
NUM_TRAIN_TIMESTEPS = 1000  # FlowMatchEulerDiscreteScheduler's num_train_timesteps: t = sigma x 1000


def expert_of_timestep(timestep: torch.Tensor, boundary_ratio: float | None) -> torch.Tensor:
    """The expert of each timestep [B]: 0 (`transformer`, high noise) or 1 (`transformer_2`).

    diffusers 0.42 `WanPipeline.__call__`: `boundary_timestep = boundary_ratio *
    num_train_timesteps`; the high-noise `transformer` runs `if boundary_timestep is None or t >=
    boundary_timestep`, else `transformer_2`. Here `t` is the timestep the transformer is fed (fgrpo:
    float32 sigma x 1000, as the pipeline's scheduler timesteps), compared in its own dtype as the
    pipeline compares its tensor `t` with the Python float. No boundary: always 0."""
    t = timestep.reshape(timestep.shape[0], -1)[:, 0]  # per-token timesteps ([B, seq]): the video's
    if boundary_ratio is None:
        return torch.zeros(t.shape[0], dtype=torch.long, device=t.device)
    return (t < boundary_ratio * NUM_TRAIN_TIMESTEPS).long()


def step_experts(sigmas: torch.Tensor, boundary_ratio: float | None) -> list[int]:
    """The expert of each step i of a sigma grid (its N + 1 sigmas): that of sigma_i, fed as the
    sampler feeds it (fgrpo.trainer.rollout: float32 sigma x 1000). An SDE transition i -> i + 1 is
    produced, and trained, by this expert."""
    t = (sigmas[:-1].to(torch.float32) * 1000.0).float()
    return expert_of_timestep(t, boundary_ratio).tolist()


def step_guidance_scales(
    sigmas: torch.Tensor, boundary_ratio: float | None, cfg_scale: float, cfg_scale_2: float | None
) -> tuple[float, ...]:
    """The classifier-free guidance scale of each step i of a sigma grid (its N + 1 sigmas): that of
    the step's expert (`step_experts`),

        s_i = cfg_scale    if expert(sigma_i) = high noise (`transformer`),
        s_i = cfg_scale_2  if expert(sigma_i) = low noise (`transformer_2`);  cfg_scale_2 None: cfg_scale,

    as diffusers 0.42's `WanPipeline` and `WanImageToVideoPipeline` pick `current_guidance_scale`
    (`guidance_scale_2` defaults to `guidance_scale`). No boundary (one transformer): cfg_scale."""
    scales = (cfg_scale, cfg_scale if cfg_scale_2 is None else cfg_scale_2)
    return tuple(float(scales[e]) for e in step_experts(sigmas, boundary_ratio))


def trained_experts(setting: str) -> tuple[int, ...]:
    """`lora.experts` ("high", "low", "both") -> the expert indices it trains."""
    if setting == "both":
        return (0, 1)
    return (EXPERT_NAMES.index(setting),)


def folder_boundary_ratio(folder: str | Path) -> float | None:
    """A diffusers Wan folder's `boundary_ratio` when it holds two experts (model_index.json names a
    `transformer_2`), else None. Raises FileNotFoundError naming model.path when transformer_2/ is missing."""
    folder = Path(folder)
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    second = index.get("transformer_2")
    if not (isinstance(second, list) and second and second[0] is not None):
        return None
    if not (folder / "transformer_2").is_dir():
        raise FileNotFoundError(f"model.path: {folder / 'transformer_2'} is missing (model_index.json names it)")
    ratio = index.get("boundary_ratio")
    if ratio is None:
        raise ValueError(f"model.path: {index_file} has a transformer_2 but no boundary_ratio")
    return float(ratio)


def _rows(x, rows: torch.Tensor, batch: int):
    return x[rows] if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == batch else x


def _agreed(needed: list[bool], device: torch.device) -> list[bool]:
    """`needed` OR-ed over every rank (FSDP2's collectives must run on all of them)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return needed
    flag = torch.tensor([int(n) for n in needed], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return [bool(f) for f in flag.tolist()]


class _OneGathered:
    """The expert whose FSDP2 weights are gathered now (at most one)."""

    def __init__(self, experts: tuple[nn.Module, ...]):
        self.experts, self.current, self.stack = experts, None, ExitStack()

    def use(self, e: int) -> None:
        if self.current == e:
            return
        self.stack.close()  # the other expert resharded before this one gathers
        self.current, self.stack = None, ExitStack()
        self.stack.enter_context(unsharded_weights(self.experts[e]))
        self.current = e

    def close(self, *exc) -> None:
        self.stack.__exit__(*(exc or (None, None, None)))
        self.current = None


class WanExperts(nn.Module):
    """Two Wan transformers of one architecture, called as one (see the module docstring)."""

    def __init__(self, transformer: nn.Module, transformer_2: nn.Module, boundary_ratio: float):
        super().__init__()
        self.transformer, self.transformer_2 = transformer, transformer_2
        self.boundary_ratio = boundary_ratio
        self._gathered: _OneGathered | None = None

    @property
    def experts(self) -> tuple[nn.Module, nn.Module]:
        return self.transformer, self.transformer_2

    def trains(self, e: int) -> bool:
        return any(p.requires_grad for p in self.experts[e].parameters())

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict: bool = False, **kwargs):
        if return_dict:
            raise ValueError("WanExperts returns a tuple (return_dict=False), as fgrpo calls it")
        which = expert_of_timestep(timestep, self.boundary_ratio)
        needed = [bool((which == e).any()) for e in (0, 1)]
        if self.training:
            needed = _agreed(needed, hidden_states.device)
        run = [e for e in (0, 1) if needed[e]]
        if len(run) == 1 and bool((which == run[0]).all()):  # sampling: every row at one step
            return (self._run(run[0], hidden_states, timestep, encoder_hidden_states, kwargs),)
        batch, outs, order, dummies = hidden_states.shape[0], [], [], []
        for e in run:
            rows = (which == e).nonzero().flatten()
            real = rows.numel() > 0
            rows = rows if real else torch.zeros(1, dtype=torch.long, device=which.device)
            hidden, t, text = (_rows(a, rows, batch) for a in (hidden_states, timestep, encoder_hidden_states))
            out = self._run(e, hidden, t, text, {k: _rows(v, rows, batch) for k, v in kwargs.items()}, real)
            if real:
                outs.append(out)
                order.append(rows)
            else:
                dummies.append(out)
        out = torch.cat(outs)[torch.argsort(torch.cat(order))]
        for d in dummies:  # in the graph, so its backward (and FSDP2's reduce-scatter) runs; adds 0
            out = out + d.sum() * 0
        return (out,)

    def _run(self, e: int, hidden, t, text, kwargs: dict, real: bool = True) -> torch.Tensor:
        if real and torch.is_grad_enabled() and not self.trains(e):
            raise RuntimeError(
                f"a transition at the {EXPERT_NAMES[e]}-noise expert's timesteps reached the training pass, but "
                "lora.experts froze that expert (validation keeps timesteps.window within the trained experts' steps)"
            )
        if self._gathered is not None:
            self._gathered.use(e)
        return self.experts[e](hidden, t, text, return_dict=False, **kwargs)[0]

    @contextmanager
    def one_gathered(self, enabled: bool = True) -> Iterator[None]:
        """Within the block (no-grad sampling), each expert's FSDP2 weights gathered while it runs,
        resharded before the other gathers, and resharded on exit, exceptions included."""
        if not enabled:
            yield
            return
        for module in (m for expert in self.experts for m in fsdp_modules(expert)):
            module.reshard()  # a root keeps its own weights after a no-grad forward: none kept here
        self._gathered = gathered = _OneGathered(self.experts)
        try:
            yield
        except BaseException as e:
            gathered.close(type(e), e, e.__traceback__)
            raise
        else:
            gathered.close()
        finally:
            self._gathered = None


def experts_of(module: nn.Module) -> list[nn.Module]:
    """The transformers a policy module runs: both experts of a WanExperts, else the module."""
    return list(module.experts) if isinstance(module, WanExperts) else [module]


@contextmanager
def rollout_weights(module: nn.Module, enabled: bool) -> Iterator[None]:
    """`parallelism.rollout_unsharded` for a rollout: one transformer's FSDP2 weights gathered once
    (fgrpo.distributed.unsharded), or two experts' one at a time (`WanExperts.one_gathered`)."""
    with module.one_gathered(enabled) if isinstance(module, WanExperts) else unsharded_weights(module, enabled):
        yield


@contextmanager
def for_each_expert(module: nn.Module, context: Callable[[nn.Module], ContextManager]) -> Iterator[None]:
    """`context(transformer)` entered for every transformer of `module` (one, or both experts)."""
    with ExitStack() as stack:
        for expert in experts_of(module):
            stack.enter_context(context(expert))
        yield


@contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[None]:
    """The reference policy: LoRA adapters disabled on every transformer that has them (a frozen
    expert has none), enabled again on exit."""
    adapted = [e for e in experts_of(module) if getattr(e, "_hf_peft_config_loaded", False)]
    if not isinstance(module, WanExperts):
        adapted = [module]  # diffusers' PEFT integration: one transformer, as it always was
    for e in adapted:
        e.disable_adapters()  # type: ignore[operator]  (diffusers' PeftAdapterMixin)
    try:
        yield
    finally:
        for e in adapted:
            e.enable_adapters()  # type: ignore[operator]
