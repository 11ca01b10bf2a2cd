"""Wan's rotary embedding in a form inductor vectorizes, for compiled blocks (`parallelism.compile`).

diffusers' `WanAttnProcessor` rotates q and k by writing the two halves of each pair through strided
stores (`out[..., 0::2] = ...`, `out[..., 1::2] = ...` into `torch.empty_like`). Inductor's CPU
code generator turns that pattern into a scalar loop (an `x % 2` branch per element): on the CPU
benchmark model it was 7 % of a compiled rollout (benchmarks/rollout_peak.py). Stacking the two
halves (`torch.stack([...], -1).flatten(-2)`) computes the same products in the same dtypes, element
by element, and compiles to a vectorized loop (q and k of one block: 8.1 ms -> 1.4 ms on one core).

Bitwise the same: every output element is the same float32 expression rounded once to the
input's dtype, so outputs and gradients equal diffusers' in eager mode and compiled
(tests/test_rotary.py). Installed by `parallelize.apply_compile` only: in eager mode the stacked
form is slower (one more temporary), so uncompiled models keep diffusers' processor.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

__all__ = ["VectorizedRopeWanAttnProcessor", "apply_rotary_emb", "use_vectorized_rope"]


def apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """diffusers' Wan rotary embedding (x [B, S, H, D]; interleaved pairs), pairs stacked, not stored
    through strides."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)


class VectorizedRopeWanAttnProcessor(WanAttnProcessor):
    """diffusers' `WanAttnProcessor` with `apply_rotary_emb` for self-attention; every other call
    (cross-attention, image context) is diffusers' own."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or rotary_emb is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        # diffusers' self-attention path line for line, the rotation aside.
        query, key, value = _get_qkv_projections(attn, hidden_states, hidden_states)  # as diffusers' for None
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        query, key = apply_rotary_emb(query, *rotary_emb), apply_rotary_emb(key, *rotary_emb)
        out = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def use_vectorized_rope(transformer) -> int:
    """Give each block's self-attention (`attn1`) whose processor is exactly diffusers'
    `WanAttnProcessor` a `VectorizedRopeWanAttnProcessor` with the same attention backend (others,
    such as sequence parallelism's, are left alone). Returns how many were replaced."""
    replaced = 0
    for block in transformer.blocks:
        old = block.attn1.processor
        if type(old) is WanAttnProcessor:
            new = VectorizedRopeWanAttnProcessor()
            new._attention_backend = old._attention_backend
            new._parallel_config = old._parallel_config
            block.attn1.set_processor(new)
            replaced += 1
    return replaced
