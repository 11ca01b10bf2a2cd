"""Helpers that see through DTensors (FSDP2 shards, TP shards): norms and memory accounting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Global L2 norm over all gradients, then scale them to at most `max_norm`.

    Parameters may live on different meshes (1-D FSDP, 2-D FSDP x TP, plain), which
    torch.nn.utils.clip_grad_norm_ cannot stack. Gradients are grouped by (mesh, placements): each
    group's local sum of squares is all-reduced once over the mesh dimensions it is sharded on
    (replicated dimensions hold equal values), so a step costs one collective per group, not one
    per parameter.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    squares, groups = [], {}
    for g in grads:
        if not isinstance(g, DTensor):
            squares.append(g.detach().float().pow(2).sum())
        elif any(p.is_partial() for p in g.placements):  # pending reduction: the full tensor is needed
            squares.append(cast(DTensor, g.detach().float()).full_tensor().pow(2).sum())  # detach/float keep DTensor
        else:  # insertion order is the parameter order: the same group order on every rank
            groups.setdefault((id(g.device_mesh), tuple(g.placements)), []).append(g)
    for members in groups.values():
        local = torch.stack([m.to_local().detach().float().pow(2).sum() for m in members]).sum()
        mesh = members[0].device_mesh
        for dim, placement in enumerate(members[0].placements):
            if not placement.is_replicate():  # Shard, and FSDP-over-TP's _StridedShard (is_shard() is False)
                dist.all_reduce(local, group=mesh.get_group(dim))
        squares.append(local)
    total = torch.stack([x.to(squares[0].device) for x in squares]).sum().sqrt()
    if torch.isfinite(total):
        scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(scale.to(g.device) if not isinstance(g, DTensor) else scale.item())
    return total


def local_state_bytes(params: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> int:
    """Bytes this rank holds for trained parameters, their gradients and the optimizer state."""
    total = 0
    for p in params.values():
        total += _local(p).numel() * _local(p).element_size()
        if p.grad is not None:
            total += _local(p.grad).numel() * _local(p.grad).element_size()
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                total += _local(v).numel() * _local(v).element_size()
    return total
