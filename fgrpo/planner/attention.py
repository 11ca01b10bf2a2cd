"""Attention as GPUs run it, for planning: a flash-attention custom op with a memory-faithful fake kernel.

A planner that let `F.scaled_dot_product_attention` run under `FakeTensorMode` on a CPU build would
model whatever kernel the CPU dispatcher picks for fake tensors (possibly the math path, which
materialises the N x N score matrix: 51 GB for one 1.3B layer at 81x480x832 with CFG). GPUs run
flash or memory-efficient kernels that never hold the scores. So, while planning, every mask-free
attention call of the transformer (diffusers' `dispatch_attention_fn`) is routed by
`FlashAttentionRouting` to the custom op `fgrpo::flash_attention`:

    forward   out [B, H, N, Dv] in the input dtype + logsumexp [B, H, N] fp32    (what flash keeps
              for backward; under no_grad the logsumexp is freed at once)
    backward  dq, dk, dv like q, k, v, plus FA2's fp32 dq accumulator [B, H, N, D] and softmax
              row sums [B, H, N] as a transient workspace (allocated and dropped during the
              op, as `mha_bwd` does)

FLOPs are registered with `torch.utils.flop_counter.register_flop_formula` with torch's own SDPA
formulas: forward 4*B*H*N^2*D (two matmuls), backward 2.5x that (five). The same formulas are
registered for CPU's flash kernels (`aten._scaled_dot_product_flash_attention_for_cpu` and its
backward, which torch leaves uncounted), so `FlopCounterMode` on a real CPU run counts attention
exactly as the planner predicts it and as it counts CUDA's flash kernels.

The op's real implementation calls CPU's flash kernel, the one SDPA itself dispatches to for
mask-free inputs, so a routed real CPU run computes exactly what an unrouted one does (on other
devices only fake tensors run it). Training never routes: only the planner does, and the tests
that compare the op with SDPA. Attention outside the transformer (the UMT5 encoder's, with its
position bias as a mask) is left to SDPA's own dispatch, which on fake CPU tensors is CPU's flash
kernel too (out + logsumexp, no scores).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["FlashAttentionRouting", "flash_attention", "flash_attention_backward"]

aten = torch.ops.aten


@torch.library.custom_op("fgrpo::flash_attention", mutates_args=())
def flash_attention(query: Tensor, key: Tensor, value: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Non-causal attention without mask or dropout, [B, H, N, D] -> (out [B, H, N, Dv], logsumexp [B, H, N])."""
    _cpu_only(query)
    return aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, False, scale=scale)


@flash_attention.register_fake
def _flash_attention_fake(query, key, value, scale):
    b, h, n, _ = query.shape
    return query.new_empty(b, h, n, value.shape[-1]), query.new_empty(b, h, n, dtype=torch.float32)


@torch.library.custom_op("fgrpo::flash_attention_backward", mutates_args=())
def flash_attention_backward(
    grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, out: Tensor, logsumexp: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, workspace). The workspace is what FA2 allocates for one call (fp32 dq
    accumulator and softmax row sums); the real CPU kernel's own scratch is internal, so the real
    op returns an empty one."""
    _cpu_only(query)
    dq, dk, dv = aten._scaled_dot_product_flash_attention_for_cpu_backward(
        grad_out, query, key, value, out, logsumexp, 0.0, False, scale=scale
    )
    return dq, dk, dv, query.new_empty(0, dtype=torch.float32)


def _cpu_only(query: Tensor) -> None:
    if query.device.type != "cpu":
        raise NotImplementedError(
            "fgrpo::flash_attention runs for real on CPU only (tests, benchmarks); "
            "GPUs train with SDPA itself, the planner runs the op on fake tensors"
        )


_BACKWARD_WORKSPACE = [True]  # set by FlashAttentionRouting: model FA2's workspace (GPU) or not (CPU)


@flash_attention_backward.register_fake
def _flash_attention_backward_fake(grad_out, query, key, value, out, logsumexp, scale):
    b, h, n, d = query.shape
    size = b * h * n * (d + 1) if _BACKWARD_WORKSPACE[0] else 0  # dq_accum [B,H,N,D] + softmax_d [B,H,N]
    workspace = query.new_empty(size, dtype=torch.float32)
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value), workspace


def _setup_context(ctx, inputs, output):
    query, key, value, scale = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, out, lse)
    ctx.scale = scale


def _backward(ctx, grad_out, grad_lse):
    query, key, value, out, lse = ctx.saved_tensors
    dq, dk, dv, _ = flash_attention_backward(grad_out, query, key, value, out, lse, ctx.scale)
    return dq, dk, dv, None


flash_attention.register_autograd(_backward, setup_context=_setup_context)


def _forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _register_flops() -> None:
    """Once per process: the custom ops, and CPU's flash kernels (which torch does not count)."""
    for op, formula in (
        (torch.ops.fgrpo.flash_attention, _forward_flops),
        (aten._scaled_dot_product_flash_attention_for_cpu, _forward_flops),
        (torch.ops.fgrpo.flash_attention_backward, _backward_flops),
        (aten._scaled_dot_product_flash_attention_for_cpu_backward, _backward_flops),
    ):
        _register_once(op, formula)


def _register_once(op, formula: Callable[..., int]) -> None:
    if op not in flop_registry:
        register_flop_formula(op)(formula)


_register_flops()


class FlashAttentionRouting:
    """Within this context the Wan transformer's attention runs `fgrpo::flash_attention`.

    diffusers' attention dispatcher (`dispatch_attention_fn`, which `WanAttnProcessor` and fgrpo's
    Ulysses processor call) looks its backend up in `_AttentionBackendRegistry` at every call; the
    active backend's entry (native SDPA unless DIFFUSERS_ATTN_BACKEND says otherwise) is replaced
    by one that sends mask-free, dropout-free, non-causal calls to the op and anything else to the
    backend it replaced. A registry entry, unlike a `TorchFunctionMode`, is also seen by the
    recomputation activation checkpointing runs inside backward (a function mode is disabled
    while it handles `Tensor.backward`). `routed` counts the calls taken.
    `backward_workspace`: whether the fake backward allocates FA2's fp32 workspace (GPU targets)."""

    def __init__(self, backward_workspace: bool = True):
        self.routed = 0
        self.backward_workspace = backward_workspace

    def __enter__(self):
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry as registry

        self._name, original = registry.get_active_backend()
        self._original = original

        def routed(
            query,
            key,
            value,
            attn_mask=None,
            dropout_p=0.0,
            is_causal=False,
            scale=None,
            enable_gqa=False,
            _parallel_config=None,
            **kwargs,
        ):
            local = not any(isinstance(t, DTensor) for t in (query, key, value))
            if (
                attn_mask is None
                and not dropout_p
                and not is_causal
                and not enable_gqa
                and _parallel_config is None
                and not kwargs.get("return_lse")
                and query.dim() == 4
                and local
            ):
                self.routed += 1
                q, k, v = (t.permute(0, 2, 1, 3) for t in (query, key, value))  # [B, N, H, D] -> [B, H, N, D]
                s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
                return flash_attention(q, k, v, float(s))[0].permute(0, 2, 1, 3)
            return original(
                query=query,
                key=key,
                value=value,
                attn_mask=attn_mask,
                dropout_p=dropout_p,
                is_causal=is_causal,
                scale=scale,
                enable_gqa=enable_gqa,
                _parallel_config=_parallel_config,
                **kwargs,
            )

        self._saved_workspace = _BACKWARD_WORKSPACE[0]
        _BACKWARD_WORKSPACE[0] = self.backward_workspace
        registry._backends[self._name] = routed
        return self

    def __exit__(self, *exc):
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry as registry

        registry._backends[self._name] = self._original
        _BACKWARD_WORKSPACE[0] = self._saved_workspace
        return False
