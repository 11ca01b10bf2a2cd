"""Text-side work computed once per rollout instead of once per denoising step.

During sampling the weights and the text encodings are fixed, yet diffusers' Wan forward
recomputes, at every step, the text projection (`condition_embedder.text_embedder`) and every
block's cross-attention key and value (`norm_k(to_k(text))`, `to_v(text)`): with 20 steps and
CFG, 20 times the same numbers. `cached_text_projections` keeps them for as long as the
transformer is fed the same text tensor, so each is computed on the rollout's first step only.
The results are the same tensors the uncached forward computes (same modules, same inputs, same
kernels), so samples are bitwise unchanged (tests/test_cross_attention_cache.py).

How, without touching diffusers' processor: the Wan processor takes key and value from one fused
`to_kv` projection when `attn.fused_projections` is set and applies `norm_k` to the key. Inside
the context every cross-attention module gets `fused_projections = True`, a `to_kv` that returns
the cached `[norm_k(to_k(text)), to_v(text)]`, and `norm_k` an identity forward; all restored on
exit. No module is replaced (parameter names and state dicts never change).
The cached projection is dynamo-disabled: under `parallelism.compile` the block's graph calls
out to it, so no tensor identity ever becomes a guard (no recompiles). LoRA, tensor parallel and
FSDP2 see ordinary calls of the real modules inside the block's forward.

Caching is keyed by the identity of the text tensor (held, so its id is never reused): the
sampler passes one tensor for all steps of a micro-batch (fgrpo.trainer.rollout.sample). Memory:
one key and value per block, [2·micro_batch, 512, width/tp] each in the compute dtype (14B, tp 1,
micro-batch 1: 40 x 2 x 10 MiB).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from diffusers.models.transformers.transformer_wan import WanAttention


class _SameInputSameOutput:
    """A forward that returns its previous output when called again with the very same tensor
    (without gradients only: with them it computes afresh, and keeps nothing)."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor]):
        self.forward = forward
        self.last_input: torch.Tensor | None = None
        self.last_output: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.forward(x)
        if x is not self.last_input or self.last_output is None:
            self.last_output = self.forward(x)
            self.last_input = x
        return self.last_output


class _CachedKeyValue(nn.Module):
    """`to_kv` for one cross-attention module: [norm_k(to_k(text)), to_v(text)] along the last
    dimension, computed once per text tensor. Holds the real modules outside the module tree, so
    state dicts and FSDP2 never see them twice."""

    def __init__(self, attn: WanAttention, norm_k):
        super().__init__()
        cache = _SameInputSameOutput(lambda text: torch.cat([norm_k(attn.to_k(text)), attn.to_v(text)], dim=-1))
        # Disabled here, not by a decorator: importing this module must not initialise dynamo
        # (which fixes inductor's cache folder before the trainer can place it, policy.py).
        self._cached = cast(Callable[[torch.Tensor], torch.Tensor], torch._dynamo.disable(cache))  # untyped

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self._cached(text)


def cross_attentions(transformer) -> list[WanAttention]:
    """Each block's cross-attention module (Wan: `attn2`)."""
    return [block.attn2 for block in transformer.blocks]


@contextmanager
def cached_text_projections(transformer, enabled: bool = True) -> Iterator[None]:
    """Within the block, the text projection and each cross-attention's key and value are computed
    once per text tensor, in calls without gradients (sampling); calls with gradients compute
    everything afresh, as without the context. Off for image cross-attention (Wan2.1 I2V): its
    processor cuts the text from a context concatenated anew at every call (nothing to key on), and
    with fused projections it would ask for a fused image projection (`to_added_kv`) that is not there."""
    if not enabled or any(attn.add_k_proj is not None for attn in cross_attentions(transformer)):
        yield
        return
    text_embedder = transformer.condition_embedder.text_embedder
    saved = [(attn, attn.fused_projections) for attn in cross_attentions(transformer)]
    if any(hasattr(attn, "to_kv") for attn, _ in saved):
        raise RuntimeError("the cross-attention projections are already fused; nothing to cache")
    # Instance attributes shadow the classes' forward methods: no module is replaced, so parameter
    # names, state dicts and FSDP2's view of the model stay as they are.
    text_embedder.forward = _SameInputSameOutput(text_embedder.forward)
    try:
        for attn, _ in saved:
            # cast: diffusers declares `to_kv` an nn.Linear; any module with its call signature does
            cast(nn.Module, attn).to_kv = _CachedKeyValue(attn, attn.norm_k.forward)
            attn.norm_k.forward = _identity  # the cached key is normalised already
            attn.fused_projections = True
        yield
    finally:
        del text_embedder.forward
        for attn, fused in saved:
            if hasattr(attn, "to_kv"):
                del attn.to_kv
            vars(attn.norm_k).pop("forward", None)
            attn.fused_projections = fused


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x
