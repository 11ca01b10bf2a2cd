"""Helpers that see through DTensors (FSDP2 shards, TP shards): norms and memory accounting."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Global L2 norm over all gradients, then scale them to at most `max_norm`.

    Parameters may live on different meshes (1-D FSDP, 2-D FSDP x TP, plain), which
    torch.nn.utils.clip_grad_norm_ cannot stack; each DTensor norm is reduced on its own mesh.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    squares = []
    for g in grads:
        n = g.detach().float().norm()
        squares.append((n.full_tensor() if isinstance(n, DTensor) else n) ** 2)
    total = torch.stack(squares).sum().sqrt()
    if torch.isfinite(total):
        scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(scale.to(g.device) if not isinstance(g, DTensor) else scale.item())
    return total


def local_state_bytes(params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> int:
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
