"""The planner's instruments: a fake world of N ranks, torch's FSDP2 memory tracker with a peak per
phase, and FLOP counting that sees each rank's local work.

* `fake_world(N)`: torch's "fake" process-group backend (`FakeStore`), as torchtitan plans
  layouts; collectives return at once, so one process builds the mesh and applies TP + FSDP2 for
  any world size, and plays rank 0 (FSDP2 gives rank 0 the largest shard of an uneven split).
* `PhaseTracker`: `FSDPMemTracker` entered once for the whole plan (so every tensor is tracked
  from its allocation, e.g. the root's parameters FSDP2 keeps unsharded after a forward), with
  `start_phase` resetting the peak and the per-module stats (torch's tracker refuses a second
  root forward otherwise) and `peak` returning the breakdown at the phase's peak.
* `count_flops()`: `FlopCounterMode` under a mode that lets DTensor desugar first, so a tensor-
  parallel matmul is counted with its local (per-rank) shape; plain FlopCounterMode counts a
  DTensor op at its global shape, i.e. the whole TP group's work on every rank.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import cast

import torch.distributed as dist
from torch import nn
from torch._guards import active_fake_mode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.module_tracker import ModuleTracker

from fgrpo.distributed.parallel_dims import ParallelDims

from .attention import flash_attention  # noqa: F401  (registers the attention FLOP formulas count_flops relies on)

__all__ = ["PhaseTracker", "count_flops", "fake_world", "parallel_dims", "storage_bytes"]


@contextmanager
def fake_world(world_size: int, rank: int = 0):
    """A default process group of `world_size` fake ranks, this process being `rank`."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError(
            "the planner needs a process without a process group (plan before init_process_group, or in a subprocess)"
        )
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def parallel_dims(recipe, world_size: int) -> ParallelDims:
    """The trainer's mesh for this recipe at `world_size` (as Trainer builds it)."""
    par = recipe.parallelism
    return ParallelDims.from_config(par.dp_replicate, par.dp_shard, par.tp, world_size, sp=par.sp)


def storage_bytes(*tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (DTensors: this rank's shard)."""
    storages = {}  # storage objects are preserved per StorageImpl, and kept alive here
    for t in tensors:
        if t is not None:
            st = (t.to_local() if isinstance(t, DTensor) else t).untyped_storage()
            storages[id(st)] = st
    return sum(st.nbytes() for st in storages.values())


class PhaseTracker(FSDPMemTracker):
    """`FSDPMemTracker` with a peak per phase; `others`: more FSDP2 roots tracked as the first (a
    second trained expert: its sharded weights and gradients counted as the first's)."""

    def __init__(self, mod: nn.Module, optm=None, *others: nn.Module):
        super().__init__(mod, optm)
        if others:
            # torch's tracker takes one root and instruments the FSDP2 modules of `_root_mod.modules()`
            # (on entering): a container of the roots has them all.
            self._root_mod = nn.ModuleList([mod, *others])

    def start_phase(self) -> None:
        """Forget module stats (a phase calls the root again) and restart the peak from now."""
        self.reset_mod_stats()
        current = self.get_tracker_snapshot("current")
        # torch's tracker keeps its running peak in these two attributes and offers no reset.
        self._peak_mem = {dev: snap.get("Total", 0) for dev, snap in current.items()}
        self._peak_mem_snap = current

    def peak(self) -> dict[str, int]:
        """Bytes by category (FSDPMemTracker's names) at the peak since `start_phase`, and "Total"."""
        snap = self.get_tracker_snapshot("peak")
        out: dict[str, int] = {}
        for dev_snap in snap.values():
            for k, v in dev_snap.items():
                key = getattr(k, "value", k)
                out[key] = out.get(key, 0) + int(v)
        return out


class _LocalView(TorchDispatchMode):
    """Declines DTensor ops so DTensor runs them as local ops, which the modes below then see."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(issubclass(t, DTensor) for t in types):
            return NotImplemented
        return func(*args, **(kwargs or {}))


class _NoModuleTracking:
    """Stands in for FlopCounterMode's `ModuleTracker`: every FLOP is attributed to "Global"."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@contextmanager
def count_flops():
    """A `FlopCounterMode` (no display) counting this rank's local FLOPs; read `.get_total_flops()`.

    Two of its internals are replaced. Ops that DTensor runs for sharding propagation are not
    counted (see below). Its per-module breakdown is switched off: the `ModuleTracker` behind it keeps a gradient hook
    handle on every submodule's inputs until it exits, which keeps each activation-checkpointed
    block's intermediate tensors alive (1.3B, one CFG micro-batch: 122 GiB of activations instead
    of 13 GiB), so counting would change the memory being measured."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = cast(ModuleTracker, _NoModuleTracking())  # duck-typed: the parts FlopCounterMode uses
    entry = active_fake_mode()
    count = counter._count_flops

    def this_ranks_work(func_packet, out, args, kwargs):
        # DTensor's sharding propagation runs ops on global shapes under a fake mode of its own
        # (in real runs too); they are not computed. torch's memory trackers skip them the same way.
        if active_fake_mode() is not entry:
            return out
        return count(func_packet, out, args, kwargs)

    counter._count_flops = this_ranks_work
    with counter, _LocalView():
        yield counter
