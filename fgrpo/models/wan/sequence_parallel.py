"""Sequence parallelism (Ulysses) for diffusers' `WanTransformer3DModel`.

A Wan2.1 video of 81 x 480 x 832 pixels is 21 x 30 x 52 = 32,760 tokens; with sp ranks, each runs
the 30 or 40 transformer blocks on 32,760 / sp of them. Per forward:

1. The patch embedding and the rotary tables are computed for the whole video on every sp rank
   (cheap: one convolution, one table), then each rank keeps its contiguous run of tokens
   (`split_tokens`; tokens are in Wan's (frame, row, column) order).
2. In every block, self-attention (`attn1`) exchanges tokens for heads with an all-to-all, runs
   the ordinary attention on all tokens of heads/sp heads, and exchanges back
   (`UlyssesWanAttnProcessor`). Projections, q/k RMSNorms (per token), modulation, the FFN and
   cross-attention are per token and run unchanged on the local run: cross-attention's queries
   are the local tokens, its keys and values the replicated context, text and (Wan2.1 I2V) the
   CLIP image tokens of `attn2.add_k_proj`, so diffusers' own `WanAttnProcessor` on `attn2`
   computes exactly the local rows of the whole video's result (no mask, one softmax per query).
   Image-to-video inputs concatenated along channels (Wan2.1 I2V, Wan2.2 I2V-A14B: mask and image
   latent) enter through the patch embedding and are split with it.
   Wan2.2-TI2V's text+image mode gives a timestep per token ([B, S]: the first frame's tokens at
   t = 0); diffusers then embeds it per token, and every block's modulation and the output norm's
   shift and scale are [B, S, ...] (`temb.ndim == 3`). A pre-hook on `condition_embedder` keeps
   this rank's run of those timesteps (the same tokens as the patch embedding's), so the time
   embedding is computed for the local tokens only: [B, S/sp, 6 x D] modulations, never the whole
   video's (TI2V-5B at 121 x 704 x 1280: 27,280 tokens x 6 x 3072, 1 GB per video in bf16). One
   timestep per video ([B], every other model and TI2V text-to-video) passes untouched.
3. The output projection's result is all-gathered (`gather_tokens`), so the model returns the full
   velocity on every sp rank: the sampler, the SDE step, log-probs and the loss run on the full
   latent, identically on each sp rank, exactly as in one process (the latent is small: 16 x 21 x
   60 x 104 values per video, 8 MB in fp32, against activations of 32,760 x 5120 per block).

Composes with tensor parallelism (apply TP first: Ulysses then splits each TP rank's heads/tp
heads, so sp x tp must divide the head count), with peft LoRA (it only wraps the linears) and
with FSDP2 over dp_shard x sp (fgrpo.distributed.parallel_dims explains the gradient scaling).

Why not diffusers' own context parallelism (`ContextParallelConfig(ulysses_degree=...)`,
`enable_parallelism`, Wan's `_cp_plan`; diffusers 0.42.1): `enable_parallelism` picks the device as
`rank % torch.accelerator.device_count()`, a ZeroDivisionError on a machine without an accelerator
(CPU with gloo, where every parity test runs); its config takes only a mesh with dimensions named
"ring" and "ulysses"; its output gather's backward keeps the local chunk of the local gradient
(right only with an extra loss scale by sp under FSDP over dp x sp); and its splitting hook sits on
the first block's input, so with activation checkpointing the whole video's hidden states are
that block's saved input. The hooks and the processor here are the same plan (same split points),
in ~100 lines that fgrpo controls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, cast

import torch
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh

from fgrpo.distributed.sequence_parallel import gather_tokens, heads_to_seq, seq_to_heads, split_tokens

if TYPE_CHECKING:
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

__all__ = ["UlyssesWanAttnProcessor", "apply_sequence_parallel"]


def _apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding, as diffusers' `WanAttnProcessor` applies it (same dtypes)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class UlyssesWanAttnProcessor:
    """Self-attention of a Wan block (`attn1`) over tokens split across the sp group.

    Exactly diffusers' `WanAttnProcessor` for text-to-video self-attention (q/k/v projections,
    q/k RMSNorm, rotary embedding on the local tokens' rows of the table, attention through
    diffusers' dispatcher and its backend, output projection), with one all-to-all of q, k and v
    together before attention ([B, S/sp, H, D] -> [B, S, H/sp, D]) and one after
    ([B, S, H/sp, D] -> [B, S/sp, H, D]). `attn.heads` is the heads of this TP rank.
    """

    _parallel_config = None  # diffusers' own context parallelism stays off

    def __init__(self, sp_mesh: DeviceMesh, attention_backend=None):
        self.sp_mesh = sp_mesh
        self._attention_backend = attention_backend

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb=None,
    ) -> torch.Tensor:
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        if encoder_hidden_states is not None or attention_mask is not None:
            raise NotImplementedError("UlyssesWanAttnProcessor is for Wan's self-attention (attn1) only")
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query, key = _apply_rotary_emb(query, *rotary_emb), _apply_rotary_emb(key, *rotary_emb)
        # One all-to-all for q, k and v (stacked along the batch).
        b = query.shape[0]
        query, key, value = seq_to_heads(torch.cat([query, key, value]), self.sp_mesh).split(b)
        out = dispatch_attention_fn(
            query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, backend=self._attention_backend
        )
        out = heads_to_seq(out, self.sp_mesh).flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def local_token_timesteps(timestep: torch.Tensor, seq_len: int, sp_mesh: DeviceMesh) -> tuple[torch.Tensor, int]:
    """This rank's run of per-token timesteps: `timestep` is [B x seq_len] (diffusers' flattened
    [B, S]), the result [B x S/sp] and S/sp, the tokens `split_tokens` keeps of the video."""
    local = split_tokens(timestep.unflatten(0, (-1, seq_len)), 1, sp_mesh)
    return local.flatten(), local.shape[1]


def _check_sequence_parallel(transformer: nn.Module, sp: int) -> None:
    for i, block in enumerate(cast("Iterable[WanTransformerBlock]", transformer.blocks)):
        attn = block.attn1
        if attn.heads % sp:
            divisors = [d for d in range(1, attn.heads + 1) if attn.heads % d == 0]
            raise ValueError(
                f"parallelism.sp={sp} does not divide the {attn.heads} attention heads of blocks.{i}.attn1 "
                f"(per tensor-parallel rank); Ulysses gives each sp rank whole heads, choose one of {divisors}"
            )
        if getattr(attn, "fused_projections", False):
            raise ValueError(f"blocks.{i}.attn1: unfuse the q/k/v projections before sequence parallelism")
        # Image keys and values belong to cross-attention (attn2, unchanged under sp); the Ulysses
        # processor that replaces attn1's computes self-attention only.
        if getattr(attn, "add_k_proj", None) is not None:
            raise NotImplementedError(f"blocks.{i}.attn1: added (image) keys and values in self-attention")
    if getattr(transformer, "_fgrpo_sp_mesh", None) is not None:
        raise RuntimeError("sequence parallelism is already applied to this transformer")


def apply_sequence_parallel(transformer: nn.Module, sp_mesh: DeviceMesh) -> None:
    """Split every video's tokens over the 1-D mesh `sp_mesh`, in place (parameters untouched).

    Hooks: `patch_embedding`'s output keeps this rank's run of tokens, shaped [B, C, 1, 1, S/sp] so
    that Wan's own `flatten(2).transpose(1, 2)` yields the [B, S/sp, C] token matrix; `rope`'s two
    tables keep the same rows; so do per-token timesteps entering `condition_embedder` (Wan2.2
    TI2V's text+image mode); `proj_out`'s output is all-gathered along the tokens. Each block's
    `attn1` gets a `UlyssesWanAttnProcessor`. Apply after tensor parallelism, before activation
    checkpointing and FSDP2. The token count of a video (latent frames x H/16 x W/16) must divide
    by sp (checked on every forward; recipes are checked before launch).

    Raises:
        ValueError: if sp (`parallelism.sp`) does not divide the heads of each TP rank, or the
            projections are fused.
    """
    if sp_mesh.ndim != 1:
        raise ValueError(f"sp_mesh must be 1-D (slice the sp dimension, e.g. mesh['sp']), got {sp_mesh.ndim}-D")
    _check_sequence_parallel(transformer, sp_mesh.size())

    def split_patches(module, args, out: torch.Tensor) -> torch.Tensor:
        b, c = out.shape[:2]
        return split_tokens(out.flatten(2), 2, sp_mesh).reshape(b, c, 1, 1, -1)

    def split_rope(module, args, out):
        return tuple(split_tokens(t, 1, sp_mesh) for t in out)

    def split_token_timesteps(module, args: tuple, kwargs: dict):
        # diffusers 0.42 calls condition_embedder(timestep, text, image, timestep_seq_len=S); were S
        # ever passed positionally, the blocks would fail loudly on [B, S] against [B, S/sp] tokens
        seq_len = kwargs.get("timestep_seq_len")
        if seq_len is None:
            return None  # one timestep per video: replicated, as in text-to-video
        timestep, *rest = args
        local, local_len = local_token_timesteps(timestep, seq_len, sp_mesh)
        return (local, *rest), {**kwargs, "timestep_seq_len": local_len}

    def gather_output(module, args, out: torch.Tensor) -> torch.Tensor:
        return gather_tokens(out, 1, sp_mesh)

    wan = cast("WanTransformer3DModel", transformer)
    wan.patch_embedding.register_forward_hook(split_patches)
    wan.rope.register_forward_hook(split_rope)
    wan.condition_embedder.register_forward_pre_hook(split_token_timesteps, with_kwargs=True)
    wan.proj_out.register_forward_hook(gather_output)
    for block in cast("Iterable[WanTransformerBlock]", wan.blocks):
        processor = UlyssesWanAttnProcessor(sp_mesh, getattr(block.attn1.processor, "_attention_backend", None))
        # diffusers types processors as a closed union of its own classes; custom ones are supported
        block.attn1.set_processor(processor)  # pyright: ignore[reportArgumentType]
    # nn.Module.__setattr__'s stub admits only tensors and modules; a plain attribute is fine at runtime
    transformer._fgrpo_sp_mesh = sp_mesh  # pyright: ignore[reportArgumentType]
