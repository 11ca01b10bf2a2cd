"""Tensor parallelism (TP) for the blocks of diffusers' `WanTransformer3DModel`.

A Wan block is a Megatron-style transformer block, so most of it takes the usual plan: the q/k/v
projections and the first FFN linear are sharded column-wise (each rank computes a slice of the
output features), the attention output projection and the second FFN linear row-wise (each rank
multiplies its slice of the input features, and the partial sums are all-reduced). q/k/v are
sharded by whole heads, so attention itself runs on local heads without communication.

Two things make the plain plan numerically wrong for Wan (diffusers ships no TP plan for it):

* `norm_q` / `norm_k` are RMSNorms over the full width `heads * head_dim`, across all heads
  (`qk_norm="rms_norm_across_heads"`). On a rank that holds only some heads the mean square must
  be combined over the TP group, differentiably, and the norm's weight must be sharded with the
  heads. `HeadShardedRMSNorm` does that.
* `WanAttnProcessor` unflattens q/k/v with `attn.heads`, so each attention module must be told its
  per-rank head count (`heads / tp`).

Wan2.1 I2V's image cross-attention (`attn2.add_k_proj` / `add_v_proj`, `norm_added_k`) is the
text cross-attention's key/value side over the CLIP image tokens: its projections are column-wise
by the same heads as `to_q`, `norm_added_k` (again across heads) is head-sharded, and its per-head
output is added to the text attention's before the row-wise `to_out.0`. The image embedder, outside
the blocks, stays replicated.

LoRA (peft, attached by diffusers' `add_adapter`) is planned so that it composes with the sharded
base layer: for a column-wise layer `y = W x + B A x`, `A` stays replicated and `B` is sharded
column-wise like `W`; for a row-wise layer `A` is sharded row-wise like `W` (its small rank-`r`
output is all-reduced) and `B` stays replicated.

Sharded parameters become DTensors on the TP mesh, so torch.distributed.checkpoint and FSDP2
(on another mesh dimension) see ordinary sharded parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, TypeGuard, cast

import torch
import torch.distributed._functional_collectives as funcol
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

if TYPE_CHECKING:
    from diffusers.models.activations import GELU
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock
    from peft.tuners.lora import LoraLayer

__all__ = ["HeadShardedRMSNorm", "apply_tensor_parallel"]


class HeadShardedRMSNorm(nn.Module):
    r"""An RMSNorm over a width `D` whose features (whole heads) are sharded over a TP group.

    Rank `r` holds the features `S_r` (a contiguous `D / tp` slice, the same slice as the
    column-wise q/k projections) and the matching slice `w_{S_r}` of the weight. For `i` in `S_r`:

        y_i = x_i / sqrt( (1/D) * sum_{r'} sum_{j in S_{r'}} x_j^2  +  eps ) * w_i

    i.e. exactly `torch.nn.RMSNorm(D)` restricted to the local features. The inner sum over the
    local features is computed locally and the outer sum over ranks by an all-reduce that is
    differentiable (its backward is an all-reduce of the gradient), so gradients flowing into the
    mean square from every rank's heads reach every rank's inputs.

    Numerics follow `torch.nn.RMSNorm` (which diffusers' `WanAttention` uses, not diffusers' own
    RMSNorm): statistics, normalisation and the weight product are computed in float32 (float64
    for float64 inputs) and the result is cast back to the input dtype; `eps=None` means the
    machine epsilon of the computation dtype.

    The weight is stored as a DTensor with placement `Shard(0)` on the TP mesh; `forward` uses its
    local shard.
    """

    def __init__(self, norm: nn.RMSNorm, tp_mesh: DeviceMesh):
        super().__init__()
        if len(norm.normalized_shape) != 1:
            raise ValueError(f"expected an RMSNorm over the last dim, got normalized_shape={norm.normalized_shape}")
        self.full_dim = int(norm.normalized_shape[0])
        self.eps = norm.eps
        self.tp_mesh = tp_mesh
        if norm.weight is None:
            self.register_parameter("weight", None)
        else:
            sharded = distribute_tensor(norm.weight.detach(), tp_mesh, [Shard(0)])
            self.weight = nn.Parameter(sharded, requires_grad=norm.weight.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute_dtype = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(compute_dtype)
        eps = torch.finfo(compute_dtype).eps if self.eps is None else self.eps
        sum_sq = xf.pow(2).sum(dim=-1, keepdim=True)
        # Differentiable in torch>=2.13 (autograd registered for _c10d_functional::all_reduce).
        sum_sq = funcol.all_reduce(sum_sq, "sum", self.tp_mesh)
        y = xf * torch.rsqrt(sum_sq / self.full_dim + eps)
        if self.weight is not None:
            y = y * cast(DTensor, self.weight).to_local()  # a Parameter holding the DTensor built in __init__
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"full_dim={self.full_dim}, eps={self.eps}, tp={self.tp_mesh.size()}"


def _is_lora_layer(module: nn.Module) -> TypeGuard[LoraLayer]:
    """True for a peft LoRA layer wrapping a linear (`base_layer`, `lora_A`, `lora_B`)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft is optional for a model without adapters
        return False
    return isinstance(module, LoraLayer)


def _out_features(linear: nn.Module) -> int:
    return cast(nn.Linear, linear.base_layer if _is_lora_layer(linear) else linear).out_features


def _blocks(transformer: nn.Module) -> Iterable[WanTransformerBlock]:
    return cast("Iterable[WanTransformerBlock]", transformer.blocks)


def _ffn_linears(block: WanTransformerBlock) -> tuple[nn.Module, nn.Module]:
    """The FFN's input projection (`ffn.net.0.proj`, inside diffusers' GELU) and output linear (`ffn.net.2`)."""
    return cast("GELU", block.ffn.net[0]).proj, block.ffn.net[2]


def _linear_plan(path: str, module: nn.Module, columnwise: bool) -> dict:
    """The plan for one linear at `path` (relative to the block), a plain `nn.Linear` or a LoRA layer.

    Column-wise: `W` and `B` shard their outputs; `A` (input replicated, rank-`r` output) stays
    replicated, so `B` receives the same input on every rank. Row-wise: `W` and `A` shard their
    inputs and all-reduce their outputs; `B` then sees a replicated input and stays replicated.
    """
    style = ColwiseParallel if columnwise else RowwiseParallel
    if not _is_lora_layer(module):
        return {path: style()}
    if getattr(module, "lora_variant", None):  # DoRA & co. need the full weight norm
        raise NotImplementedError(f"{path}: LoRA variants (e.g. DoRA) are not supported with tensor parallelism")
    if module.merged:
        raise NotImplementedError(f"{path}: unmerge LoRA adapters before applying tensor parallelism")
    plan = {f"{path}.base_layer": style()}
    sharded = module.lora_B if columnwise else module.lora_A
    for adapter in sharded.keys():
        plan[f"{path}.{'lora_B' if columnwise else 'lora_A'}.{adapter}"] = style()
    return plan


def _has_image_attention(attn: nn.Module) -> bool:
    """Whether `attn` also attends to image tokens (Wan2.1 I2V's `added_kv_proj_dim`)."""
    return getattr(attn, "add_k_proj", None) is not None


def _column_projections(attn: nn.Module) -> tuple[str, ...]:
    """The projections of `attn` whose outputs are heads: sharded column-wise, by the same heads."""
    image = ("add_k_proj", "add_v_proj") if _has_image_attention(attn) else ()
    return ("to_q", "to_k", "to_v", *image)


def _head_norms(attn: nn.Module) -> tuple[str, ...]:
    """The norms of `attn` over the full width of its heads (across heads): head-sharded."""
    return ("norm_q", "norm_k", "norm_added_k") if _has_image_attention(attn) else ("norm_q", "norm_k")


def _check_divisible(transformer: nn.Module, tp: int) -> None:
    """Refuse degrees that would shard a head or the FFN unevenly, before touching the model.

    Uneven shards are not an option: a head split across ranks breaks attention, and DTensor's
    row-wise input (`from_local` with `Shard(-1)`) assumes even shards.
    """
    for i, block in enumerate(_blocks(transformer)):
        for name in ("attn1", "attn2"):
            attn = getattr(block, name)
            if attn.heads % tp:
                divisors = [d for d in range(1, attn.heads + 1) if attn.heads % d == 0]
                raise ValueError(
                    f"parallelism.tp={tp} does not divide the number of attention heads ({attn.heads}) "
                    f"of blocks.{i}.{name}; tensor parallelism shards whole heads, choose one of {divisors}"
                )
            if getattr(attn, "fused_projections", False):
                raise ValueError(f"blocks.{i}.{name}: unfuse the q/k/v projections before tensor parallelism")
        ffn_dim = _out_features(_ffn_linears(block)[0])
        if ffn_dim % tp:
            raise ValueError(f"parallelism.tp={tp} does not divide the FFN width ({ffn_dim}) of blocks.{i}")


def apply_tensor_parallel(transformer: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Shard every block of a diffusers `WanTransformer3DModel` over the 1-D mesh `tp_mesh`, in place.

    Per block:
      * `attn1` / `attn2`: `to_q`, `to_k`, `to_v` column-wise (output sharded by heads, returned as
        plain local tensors so the attention processor is unchanged), `to_out.0` row-wise (output
        replicated); `norm_q` / `norm_k` replaced by `HeadShardedRMSNorm`; `heads`, `inner_dim`
        and `kv_inner_dim` divided by the TP degree (the processor unflattens with `heads`).
      * Image cross-attention (Wan2.1 I2V, `attn2.add_k_proj` / `add_v_proj`): column-wise like
        `to_k` / `to_v`; `norm_added_k` replaced by `HeadShardedRMSNorm`.
      * `ffn.net.0.proj` column-wise, `ffn.net.2` row-wise.
      * LoRA layers (peft) on any of these: see `_linear_plan`.

    Everything outside the blocks (embeddings, `norm*`, `scale_shift_table`, `proj_out`) stays
    replicated: it is small, and its inputs and outputs are replicated. Block inputs and outputs
    are replicated, so the model's forward signature and output are unchanged. Every rank of the
    TP group must feed the same inputs; LoRA dropout on a column-wise layer's replicated input
    must then draw the same mask on every rank (same seed), or be 0 (the default).

    Apply LoRA before this function, and FSDP2 (on another mesh dimension) after it.

    Raises:
        ValueError: if the TP degree (`parallelism.tp`) does not divide the head count or the FFN
            width, or the projections are fused.
    """
    if tp_mesh.ndim != 1:
        raise ValueError(f"tp_mesh must be 1-D (slice the TP dimension, e.g. mesh['tp']), got {tp_mesh.ndim}-D")
    tp = tp_mesh.size()
    _check_divisible(transformer, tp)

    for block in _blocks(transformer):
        plan: dict = {}
        for name in ("attn1", "attn2"):
            attn = getattr(block, name)
            for proj in _column_projections(attn):
                plan.update(_linear_plan(f"{name}.{proj}", getattr(attn, proj), columnwise=True))
            plan.update(_linear_plan(f"{name}.to_out.0", attn.to_out[0], columnwise=False))
        ffn_in, ffn_out = _ffn_linears(block)
        plan.update(_linear_plan("ffn.net.0.proj", ffn_in, columnwise=True))
        plan.update(_linear_plan("ffn.net.2", ffn_out, columnwise=False))
        parallelize_module(block, tp_mesh, plan)

        for name in ("attn1", "attn2"):
            attn = getattr(block, name)
            for norm_name in _head_norms(attn):
                norm = getattr(attn, norm_name)
                if isinstance(norm, nn.RMSNorm):
                    setattr(attn, norm_name, HeadShardedRMSNorm(norm, tp_mesh))
                elif not isinstance(norm, nn.Identity):
                    raise NotImplementedError(f"{name}.{norm_name}: unsupported q/k norm {type(norm).__name__}")
            attn.heads //= tp
            attn.inner_dim //= tp
            attn.kv_inner_dim //= tp
