"""Count the all-gathers a block of code issues, and the bytes they produce.

    with AllGatherMeter() as meter:
        sample(...)
    meter.count, meter.bytes

What is counted: every all-gather operator that reaches the dispatcher on this rank while the
`with` block runs -- c10d's in-place ops (`_allgather_base_`, which `dist.all_gather_single` /
`all_gather_into_tensor` and so FSDP2's unshard issue, `allgather_`, `allgather_coalesced_`,
`allgather_into_tensor_coalesced_`) and the functional ones DTensor / tensor parallelism use
(`_c10d_functional.all_gather_into_tensor[_coalesced]`). One operator call is one all-gather (a
coalesced call is one). Its bytes are the `nbytes` of the output tensor(s) it returns: the whole
gathered buffer on this rank, all ranks' pieces and FSDP2's dim-0 padding included, not the
bytes this rank sends (that is bytes / group size). Asynchronous all-gathers are counted when
issued. Other collectives (reduce-scatter, all-reduce, all-to-all) are not counted.

It is a `TorchDispatchMode`, as torch.distributed.tensor.debug.CommDebugMode: it works on any
backend (gloo on CPU, NCCL) and sees the collectives FSDP2 issues from its hooks.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["AllGatherMeter", "is_all_gather"]

_NAMESPACES = ("c10d", "_c10d_functional", "c10d_functional")


def is_all_gather(func) -> bool:
    """Whether an operator overload is an all-gather collective (c10d or functional)."""
    name = func.name()  # e.g. "c10d::_allgather_base_", "_c10d_functional::all_gather_into_tensor"
    ns, _, op = name.partition("::")
    return ns in _NAMESPACES and ("allgather" in op or "all_gather" in op)


class AllGatherMeter(TorchDispatchMode):
    """All-gathers issued inside the `with` block: `count`, `bytes` (output nbytes, see the module
    docstring) and `by_op` (count per operator name). Re-entering adds to the totals."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.bytes = 0
        self.by_op: Counter[str] = Counter()

    @property
    def mib(self) -> float:
        return self.bytes / 2**20

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if is_all_gather(func):
            self.count += 1
            self.by_op[func.name()] += 1
            self.bytes += sum(t.nbytes for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        return out
