"""Ulysses sequence parallelism: the collectives, differentiable, over a 1-D `sp` mesh.

A video's tokens are split into `sp` contiguous runs, one per sp rank. Everything that acts on one
token at a time (projections, norms, FFN, cross-attention to the replicated text and image tokens, a
per-token time embedding) runs on the local run as it is. Self-attention needs every token:
`seq_to_heads` trades the split over tokens for a split over heads (an all-to-all), so each rank
holds all tokens of heads/sp heads, attention runs unchanged on those, and `heads_to_seq` trades
back (DeepSpeed-Ulysses, arXiv 2309.14509).

`split_tokens` / `gather_tokens` enter and leave the sequence-parallel region. Their backward
passes are the exact adjoints, treating each rank's copy of a replicated tensor as its own:

* `split_tokens` (replicated -> local run) is a slice: its backward puts the run's gradient back
  in place, zeros elsewhere, without communication.
* `gather_tokens` (local runs -> replicated) is an all-gather: its backward is a reduce-scatter
  (sum) over the sp group.

So when every sp rank computes the same loss from the gathered output (fgrpo's case: the velocity
is gathered and the SDE step, log-prob and loss run on the full latent on every sp rank), the sp
ranks' parameter gradients sum to sp x the gradient of one copy of the loss. FSDP2 shards over
dp_shard x sp and averages, which divides that sp back out (fgrpo.distributed.parallel_dims).

These are torch's functional collectives (`torch.distributed._functional_collectives`), which carry
autograd in torch >= 2.13 (all_to_all_single's backward is the reverse all-to-all, all_gather's a
reduce-scatter); they run on gloo (CPU) and NCCL alike.
"""

from __future__ import annotations

import torch
import torch.distributed._functional_collectives as funcol
from torch.distributed.device_mesh import DeviceMesh

__all__ = ["gather_tokens", "heads_to_seq", "seq_to_heads", "split_tokens"]


def _size_rank(mesh: DeviceMesh) -> tuple[int, int]:
    return mesh.size(), mesh.get_local_rank()


def split_tokens(x: torch.Tensor, dim: int, mesh: DeviceMesh) -> torch.Tensor:
    """This rank's contiguous run of `x` along `dim` (the token dimension), which must divide evenly."""
    sp, rank = _size_rank(mesh)
    n = x.shape[dim]
    if n % sp:
        raise ValueError(
            f"parallelism.sp={sp} does not divide the {n} tokens of a video; choose an sp that divides "
            "latent frames x (height / 16) x (width / 16)"
        )
    return x.narrow(dim, rank * (n // sp), n // sp)


def gather_tokens(x: torch.Tensor, dim: int, mesh: DeviceMesh) -> torch.Tensor:
    """Concatenate the sp ranks' runs along `dim`, in rank order (backward: reduce-scatter, sum)."""
    if mesh.size() == 1:
        return x
    front = x.movedim(dim, 0).contiguous()
    full = funcol.all_gather_single(front, 0, mesh)  # differentiable (reduce-scatter in backward)
    return full.movedim(0, dim)


def _all_to_all(x: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """Chunk i of dim 0 goes to rank i; chunk i of the result came from rank i (differentiable)."""
    return funcol.all_to_all_single(x.contiguous(), None, None, mesh)


def seq_to_heads(x: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """[B, S/sp, H, D] (local tokens, all heads) -> [B, S, H/sp, D] (all tokens, local heads).

    Rank r receives heads [r*H/sp, (r+1)*H/sp); tokens come back in rank order, i.e. in their
    original order."""
    sp = mesh.size()
    if sp == 1:
        return x
    b, s_local, h, d = x.shape
    if h % sp:
        raise ValueError(f"parallelism.sp={sp} does not divide the {h} attention heads held by this rank")
    # [sp (destination = head group), S/sp, B, H/sp, D]
    send = x.reshape(b, s_local, sp, h // sp, d).permute(2, 1, 0, 3, 4)
    recv = _all_to_all(send, mesh)  # [sp (source = token run), S/sp, B, H/sp, D]
    return recv.reshape(sp * s_local, b, h // sp, d).permute(1, 0, 2, 3)


def heads_to_seq(x: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """[B, S, H/sp, D] (all tokens, local heads) -> [B, S/sp, H, D] (local tokens, all heads);
    the inverse of `seq_to_heads`."""
    sp = mesh.size()
    if sp == 1:
        return x
    b, s, h_local, d = x.shape
    # [sp (destination = token run), S/sp, B, H/sp, D]
    send = x.reshape(b, sp, s // sp, h_local, d).permute(1, 2, 0, 3, 4)
    recv = _all_to_all(send, mesh)  # [sp (source = head group), S/sp, B, H/sp, D]
    return recv.permute(2, 1, 0, 3, 4).reshape(b, s // sp, sp * h_local, d)
