"""The process group: set-up from a torchrun-style environment (gloo on CPU, NCCL on GPU), rank
and world size, and the small collectives the trainer agrees through (flags, metrics, means)."""

from __future__ import annotations

import os
import re
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0  # the recipe's launch.collective_timeout_s default, for callers without a recipe


def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join the process group described by RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; without them,
    a one-process group (in-memory store), so that one process runs the same FSDP2 code path.
    `timeout_s` (launch.collective_timeout_s) bounds every collective: a stalled peer makes this
    rank fail after it (gloo raises; NCCL's watchdog ends the process) instead of hanging."""
    if not dist.is_initialized():
        # Small control collectives (stop flags, metrics) use CPU tensors: gloo carries those on GPU too.
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        if "WORLD_SIZE" in os.environ:
            timeout = timedelta(seconds=timeout_s)
            _default_subgroup_timeout(timeout)
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _default_subgroup_timeout(timeout: timedelta) -> None:
    # init_device_mesh's sub-groups (new_group / split_group without a timeout) take torch's module
    # defaults (30 min gloo, 10 min NCCL), not the default group's: a stall in a tp or sp group
    # would otherwise still hang for half an hour.
    from torch.distributed import distributed_c10d

    distributed_c10d.default_pg_timeout = timeout
    distributed_c10d.default_pg_nccl_timeout = timeout


# gloo's words: the operation that timed out, and any later one on the pair the timeout closed
_GLOO_TIMEOUT = re.compile(r"timed out waiting \d+ ?ms|application timeout caused pair closure", re.IGNORECASE)


def timed_out(exc: BaseException | None) -> bool:
    """Whether `exc` (or an error it came from) is the process group's timeout: gloo's "Timed out
    waiting Nms for recv/send operation" or "Application timeout caused pair closure", or a
    torch.distributed error (store, backend) saying it timed out. A reward server's HTTP timeout
    is neither."""
    for _ in range(10):  # the chain of causes, bounded
        if exc is None:
            return False
        message = str(exc)
        if _GLOO_TIMEOUT.search(message) or (
            isinstance(exc, dist.DistError) and re.search(r"time ?out|timed out", message, re.IGNORECASE)
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def shutdown() -> None:
    """Leave the process group. Every process that joined one must: a gloo group left to the
    interpreter's exit can abort the process ("terminate called without an active exception"),
    which Slurm then reports as a failed job after a completed run."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is True on any rank (the ranks decide together)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_ranks(flag: bool) -> bool:
    """True on every rank if `flag` is True on every rank."""
    return not any_rank(not flag)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average scalar metrics over all ranks (TP replicas hold equal values, so the mean is unchanged)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    t = torch.tensor([values[k] for k in values], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / dist.get_world_size() for k, v in zip(values, t.tolist())}


def max_over_ranks(value: float) -> float:
    """The largest of one scalar over all ranks."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def global_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over all ranks: all-reduce of (sum, count), so ranks may hold unequal counts.

    Falls back to t.mean() when torch.distributed is not initialised or world size is 1.
    Every rank must call it (collective). The result is detached (all_reduce has no autograd).
    """
    t = t.detach()
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return t.mean()
    # float64 so the sum over a large global batch loses nothing; one collective for both.
    count = torch.tensor(float(t.numel()), dtype=torch.float64, device=t.device)
    buf = torch.stack([t.sum().to(torch.float64), count])
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return (buf[0] / buf[1]).to(t.dtype)
