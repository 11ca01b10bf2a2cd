"""Rollouts without resharding: FSDP2's gathered weights kept for a whole rollout.

FSDP2 (`fully_shard` per block, per fp32-kept module and at the root: fgrpo.models.wan.parallelize)
all-gathers a group's weights in its pre-forward and frees them in its post-forward. Sampling runs
about 40 no-grad forwards per video (20 steps x CFG in one batch), so every block's weights are
gathered about 40 times per rollout. `unsharded_weights` gathers each group once on entry, keeps
it through every forward, and reshards on exit: the same weights, the same math (the latents and
log-probs are bitwise those of the resharding path), fewer collectives, and the gathered weights
(`gathered_weight_bytes`) resident for the rollout.

Whether to do it is the recipe's `parallelism.rollout_unsharded` (`rollout_unsharded_decision`):
`on`, `off`, or `auto`: on CPU always; on CUDA when the gathered weights take at most
`SAFE_FRACTION` (half) of the device's free memory (`torch.cuda.mem_get_info`, measured with the
weights still sharded), so the other half stays for the rollout's activations, the VAE decode
done inside the rollout and the allocator's fragmentation; and only if that holds on every rank
(`decide_for` agrees them with an all-reduce: FSDP2's all-gathers are collective).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal, cast

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp._fully_shard._fsdp_common import FSDPMeshInfo

__all__ = [
    "SAFE_FRACTION",
    "decide_for",
    "fits_unsharded",
    "fsdp_modules",
    "gathered_weight_bytes",
    "rollout_unsharded_decision",
    "unsharded_weights",
]

SAFE_FRACTION = 0.5
"""`auto` keeps the gathered weights only if they take at most this fraction of the free memory."""

Setting = Literal["auto", "on", "off"]


def fsdp_modules(module: torch.nn.Module) -> list[FSDPModule]:
    """Every FSDP2 module in the tree (`module` itself included), outermost first."""
    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def _groups(m: FSDPModule):
    return m._get_fsdp_state()._fsdp_param_groups


def gathered_weight_bytes(module: torch.nn.Module, padded: bool = False) -> int:
    """Bytes of this rank's gathered (unsharded) FSDP2 weights: over every FSDP parameter, its
    full numel over the FSDP mesh (with TP: the rank's TP shard) times the itemsize of the dtype it
    is gathered in (the group's mixed-precision `param_dtype`, else its own). `padded=True`
    counts FSDP2's all-gather buffers instead, dim 0 padded to a multiple of the shard degree
    (what the all-gathers produce: fgrpo.distributed.comm_meter)."""
    total = 0
    for m in fsdp_modules(module):
        for group in _groups(m):
            for fp in group.fsdp_params:
                dtype = fp.sharded_param.dtype
                if fp.mp_policy.param_dtype is not None and dtype.is_floating_point:
                    dtype = fp.mp_policy.param_dtype
                if padded:
                    numel = fp.padded_sharded_param_size.numel() * cast(FSDPMeshInfo, group.mesh_info).shard_mesh_size
                else:
                    numel = fp._orig_size.numel()
                total += numel * dtype.itemsize
    return total


def fits_unsharded(gathered_bytes: int, free_bytes: int, fraction: float = SAFE_FRACTION) -> bool:
    """`auto` on CUDA: the gathered weights take at most `fraction` of the free device memory."""
    return gathered_bytes <= fraction * free_bytes


def rollout_unsharded_decision(
    setting: Setting, device_type: str, gathered_bytes: int, free_bytes: int | None = None
) -> bool:
    """The recipe's `parallelism.rollout_unsharded` for one rollout. `auto`: on for CPU; on CUDA
    only when `fits_unsharded(gathered_bytes, free_bytes)`; off on other devices."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"parallelism.rollout_unsharded: one of auto, on, off; got {setting!r}")
    if setting != "auto":
        return setting == "on"
    if device_type == "cpu":
        return True
    if device_type == "cuda":
        return free_bytes is not None and fits_unsharded(gathered_bytes, free_bytes)
    return False


def decide_for(module: torch.nn.Module, setting: Setting, device: torch.device) -> bool:
    """`rollout_unsharded_decision` for `module` now: its gathered bytes and, on CUDA, the free
    memory. Collective for `auto` on CUDA (every rank calls it): the ranks must agree, or those
    that reshard would wait in all-gathers the others never issue, so it is on only if it is on
    for every rank (an all-reduce MIN over the default group)."""
    if setting != "auto" or device.type != "cuda":
        return rollout_unsharded_decision(setting, device.type, 0)
    free, _ = torch.cuda.mem_get_info(device)
    keep = rollout_unsharded_decision(setting, "cuda", gathered_weight_bytes(module), free)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([int(keep)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        keep = bool(flag.item())
    return keep


def _settle_roots(mods: list[FSDPModule]) -> list[FSDPModule]:
    """Run FSDP2's root lazy init now (its first forward would): it decides which module is the
    root and that the root keeps its weights after forward, which must be settled before the
    reshard-after-forward settings are saved, or a first forward inside the block would be lost.
    Returns the roots."""
    inner = {id(c) for m in mods for c in cast(torch.nn.Module, m).modules() if c is not m}  # FSDPModule: a mixin
    roots = [m for m in mods if id(m) not in inner]
    for m in roots:
        m._get_fsdp_state()._lazy_init()
    return roots


@contextmanager
def unsharded_weights(module: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Every FSDP2 module under `module` unsharded once on entry (the all-gathers issued
    together, then waited for), kept unsharded across every forward inside the block, and
    resharded on exit, exceptions included (after one, FSDP2's `reset_iter_state` on the root
    also clears a forward it aborted), with each module's reshard-after-forward setting restored
    (the blocks' True; the root's own, False). For no-grad sampling only: the gathered copies
    are not updated if the sharded weights change inside the block. `enabled=False` (or no
    FSDP2 module) does nothing."""
    mods = fsdp_modules(module) if enabled else []
    if not mods:
        yield
        return
    roots = _settle_roots(mods)
    states = [m._get_fsdp_state() for m in mods]
    saved_auto = [(s, s._auto_reshard_after_forward) for s in states]
    saved = [(g, g.post_forward_mesh_info) for s in states for g in s._fsdp_param_groups]
    try:
        for m in mods:
            m.set_reshard_after_forward(False, recurse=False)
        handles = [m.unshard(async_op=True) for m in mods]
        for h in handles:
            if h is not None:
                h.wait()
        yield
    except BaseException:
        for r in roots:
            r.reset_iter_state()
        raise
    finally:
        for m in mods:
            m.reshard()
        # The public setter takes a bool for every group; restore exactly what each one had.
        for g, info in saved:
            g.post_forward_mesh_info = info
        for s, auto in saved_auto:
            s._auto_reshard_after_forward = auto
