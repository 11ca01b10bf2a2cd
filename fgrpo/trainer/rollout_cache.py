"""Training-free caches on a rollout's deterministic steps (`rollout.cache`), through diffusers' hooks.

The kinds are diffusers' implementations with diffusers' defaults:
- `first_block` (FirstBlockCache): the first block always runs; while its residual has changed by
  less than 5 % (relative mean absolute difference) since the last full forward, the other
  blocks are skipped and their last residual is added instead.
- `mag` (MagCache): every block is skipped (the previous forward's residual is added) while the
  error accumulated from the model's magnitude ratios stays under 0.06, at most 3 forwards in a
  row, never in the first 20 % of the steps. The ratios are the model's: diffusers ships Flux's
  only, so the recipe gives them (`rollout.cache_mag_ratios`; `calibrate_mag_ratios` measures them
  with diffusers' calibration mode).
- `taylorseer` (TaylorSeer, diffusers' lite variant): full forwards on the first 3 steps and every
  5th after; in between the blocks are skipped and the output projection's output is extrapolated
  to first order in the step (factors kept in float32: [2B, tokens, 64] each, small).

Where the cache acts, and where it must not:
- The hooks exist only inside `rollout_cache`, around a training rollout's sampling
  (flash_grpo.roll_out): the training pass, log pi_old's recomputation and evaluation run the
  plain model.
- A forward that holds an SDE step for any of its rows is computed in full (`step_context` with
  `exact`): each kind's skip decision is overridden for that call, so every block runs and the
  model's output is what it is without hooks, bit for bit; the hooks' bookkeeping advances as on
  any forward they compute (it refreshes the cache).
- State: the hooks keep it per diffusers cache context. The sampler names one context per set of
  rows evaluated together (`context_name`: their tensors have that set's batch) and resets every
  context at the start and end of each micro-batch, so nothing carries over between
  micro-batches, rollouts or steps. Counters (TaylorSeer's step, MagCache's ratio index) count a
  context's forwards.
- FSDP2 gives each block a subclass diffusers' block registry does not know: it is registered
  with its base class's metadata (same forward). Skipped blocks still pass through FSDP2's hooks,
  so every rank makes the same all-gathers. Compile, tensor and sequence parallelism are refused
  by validation (fgrpo.recipe.validate).

Compute: the FLOP counter (fgrpo.trainer.compute) counts the operations made, so skipped blocks
are not in `compute/flops`; `compute/forward_passes` counts transformer calls, cached or not.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

FIRST_BLOCK_THRESHOLD = 0.05  # diffusers' default
_ABSENT = object()


@dataclass(frozen=True)
class CacheConfig:
    """`rollout.cache`, `rollout.cache_mag_ratios` and the grid's step count (MagCache's schedule)."""

    kind: str = "none"
    steps: int = 1
    mag_ratios: tuple[float, ...] = ()

    @classmethod
    def from_rollout(cls, rollout) -> "CacheConfig":
        return cls(rollout.cache, rollout.steps, tuple(rollout.cache_mag_ratios))


def diffusers_config(config: CacheConfig, calibrate: bool = False):
    """The diffusers cache config of a kind; `calibrate`: MagCache's calibration mode (never
    skips; one more step than the grid, so diffusers neither prints nor clears the ratios)."""
    from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    if config.kind == "first_block":
        return FirstBlockCacheConfig(threshold=FIRST_BLOCK_THRESHOLD)
    if config.kind == "mag" and calibrate:
        return MagCacheConfig(calibrate=True, num_inference_steps=config.steps + 1)
    if config.kind == "mag":
        if not config.mag_ratios:
            raise ValueError("rollout.cache_mag_ratios: rollout.cache=mag needs the model's magnitude ratios")
        return MagCacheConfig(mag_ratios=list(config.mag_ratios), num_inference_steps=config.steps)
    if config.kind == "taylorseer":
        return TaylorSeerCacheConfig(use_lite_mode=True, taylor_factors_dtype=torch.float32)
    raise ValueError(f"rollout.cache: first_block, mag or taylorseer installs a cache, got {config.kind!r}")


def _register_block_subclasses(transformer) -> None:
    """FSDP2 makes each block an instance of a subclass (FSDPWanTransformerBlock) that diffusers'
    TransformerBlockRegistry does not know; register it with its base class's metadata."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    for cls in {type(block) for block in transformer.blocks}:
        for base in cls.__mro__:
            try:
                meta = TransformerBlockRegistry.get(base)
            except ValueError:
                continue
            if base is not cls:
                TransformerBlockRegistry.register(cls, dataclasses.replace(meta, _cached_parameter_indices=None))
            break


def _hooks(transformer) -> list:
    """Every diffusers hook registered under the transformer."""
    registries = [getattr(m, "_diffusers_hook", None) for m in transformer.modules()]
    return [hook for registry in registries if registry is not None for hook in registry.hooks.values()]


def _compute(residual) -> bool:
    return True


def full_compute_overrides(hooks: list) -> list[tuple[object, str, object]]:
    """(object, attribute, value) that make each kind's hooks compute every block on a call:
    FirstBlockCache's decision always says compute; MagCache's error bound is -inf (no error is
    at most it, NaN included); TaylorSeer's cool-down starts at step 0 (computes, and updates
    its factors)."""
    from diffusers.hooks.first_block_cache import FBCHeadBlockHook
    from diffusers.hooks.mag_cache import MagCacheHeadHook
    from diffusers.hooks.taylorseer_cache import TaylorSeerCacheHook

    out: list[tuple[object, str, object]] = []
    for hook in hooks:
        if isinstance(hook, FBCHeadBlockHook):
            out.append((hook, "_should_compute_remaining_blocks", _compute))
        elif isinstance(hook, MagCacheHeadHook):
            out.append((hook.config, "threshold", -math.inf))
        elif isinstance(hook, TaylorSeerCacheHook):
            out.append((hook, "disable_cache_after_step", 0))
    return out


@contextmanager
def _overridden(overrides: list[tuple[object, str, object]]) -> Iterator[None]:
    saved = [(obj, name, vars(obj).get(name, _ABSENT)) for obj, name, _ in overrides]
    try:
        for obj, name, value in overrides:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, old in saved:
            if old is _ABSENT:
                delattr(obj, name)
            else:
                setattr(obj, name, old)


def context_name(rows: list[int]) -> str:
    """The cache context of the rows (positions in a micro-batch) evaluated together."""
    return "rows " + ",".join(map(str, rows))


class RolloutCache:
    """A kind's hooks installed on the transformer, until `remove`."""

    def __init__(self, transformer, config) -> None:
        _register_block_subclasses(transformer)
        transformer.enable_cache(config)
        self.transformer = transformer
        self.hooks = _hooks(transformer)
        self.full_compute = full_compute_overrides(self.hooks)
        if not self.full_compute:  # a forward holding an SDE step could not be made exact
            transformer.disable_cache()
            raise RuntimeError(f"rollout.cache: no skip decision found to override among {self.hooks}")

    def reset(self) -> None:
        """Forget every context's state (a micro-batch starts and ends with none)."""
        from diffusers.hooks import HookRegistry

        HookRegistry.check_if_exists_or_initialize(self.transformer).reset_stateful_hooks()

    @contextmanager
    def context(self, rows: list[int], exact: bool) -> Iterator[None]:
        """One forward of `rows`; `exact`: every block computed (it holds an SDE step)."""
        with self.transformer.cache_context(context_name(rows)):
            with _overridden(self.full_compute) if exact else nullcontext():
                yield

    def remove(self) -> None:
        self.transformer.disable_cache()


def step_context(cache: RolloutCache | None, rows: list[int], exact: bool):
    """The context of one sampler forward: none without a cache."""
    return nullcontext() if cache is None else cache.context(rows, exact)


@contextmanager
def rollout_cache(transformer, config: CacheConfig) -> Iterator[RolloutCache | None]:
    """The recipe's cache on the transformer for the block (None for `none`), removed on exit."""
    if config.kind == "none":
        yield None
        return
    cache = RolloutCache(transformer, diffusers_config(config))
    try:
        yield cache
    finally:
        cache.remove()


class _MagCalibration(RolloutCache):
    """MagCache in calibration mode; keeps the ratios of the all-rows context before each reset."""

    def __init__(self, transformer, steps: int, rows: int) -> None:
        super().__init__(transformer, diffusers_config(CacheConfig("mag", steps), calibrate=True))
        self.name = context_name(list(range(rows)))
        self.ratios: list[float] = []

    def reset(self) -> None:
        from diffusers.hooks.hooks import CacheContext
        from diffusers.hooks.mag_cache import MagCacheHeadHook

        manager = next(h.state_manager for h in self.hooks if isinstance(h, MagCacheHeadHook))
        manager.set_context(CacheContext(self.name))
        self.ratios = list(manager.get_state().calibration_ratios) or self.ratios
        super().reset()


def calibrate_mag_ratios(transformer, steps: int, rows: int, run: Callable[[RolloutCache], object]) -> list[float]:
    """MagCache's magnitude ratios for this model and sampler by diffusers' calibration mode: the
    mean over tokens of |residual_t| / |residual_(t-1)| of the blocks, one per forward (the first
    1.0). `run(cache)` samples one micro-batch of `rows` videos over the `steps` grid steps with
    `cache` and no SDE step (rollout.sample(..., cache=cache)). The result is rollout.cache_mag_ratios."""
    cache = _MagCalibration(transformer, steps, rows)
    try:
        run(cache)
    finally:
        cache.remove()
    return [float(r) for r in cache.ratios]
