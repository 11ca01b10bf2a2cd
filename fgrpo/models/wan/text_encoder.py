"""The UMT5 text encoder as training uses it: encode prompts with their token lengths, load it
lazily (a run whose text-embedding cache is complete never loads it), and free it.

UMT5-XXL is 5.68B parameters (11.4 GB in bf16): fgrpo encodes each prompt set once
(fgrpo.models.wan.text_cache) and then frees the encoder on every rank.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch

EncodeFn = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def encode_with_lengths(
    tokenizer, text_encoder: torch.nn.Module, prompts: list[str], max_text_tokens: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``WanComponents.encode_prompts`` (the same tokenizer call and masking), plus the lengths.

    Returns ``(embeddings [B, max_text_tokens, D] in dtype, zero past each prompt's length;
    lengths [B] int64 on the CPU)``.
    """
    device = next(text_encoder.parameters()).device
    tokens = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_text_tokens,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    hidden = text_encoder(ids, mask).last_hidden_state
    emb = (hidden * mask.unsqueeze(-1).to(hidden.dtype)).to(dtype)
    lengths = mask.sum(dim=1).cpu().long()
    # Trimming keeps the first `length` tokens: the padding must be on the right.
    if not torch.equal(mask.cpu().bool(), torch.arange(mask.shape[1]) < lengths[:, None]):
        raise ValueError("the tokenizer pads on the left; the text-embedding cache needs right padding")
    return emb, lengths


def components_encode_fn(components) -> EncodeFn:
    """An ``encode_fn`` for :meth:`TextEmbeddingCache.build` from a ``WanComponents``."""
    c = components
    return lambda prompts: encode_with_lengths(c.tokenizer, c.text_encoder, prompts, c.max_text_tokens, c.dtype)


class LazyTextEncoder:
    """An ``encode_fn`` that loads the tokenizer and UMT5 encoder from a Wan diffusers folder on its
    first call (as ``load_wan`` does: same ``from_pretrained`` calls, frozen, eval), so a run whose
    cache is already complete never loads the 11 GB encoder. :meth:`free` releases it."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        dtype: torch.dtype | str,
        max_text_tokens: int,
        device: torch.device | str = "cpu",
    ):
        self.model_path, self.max_text_tokens, self.device = Path(model_path), int(max_text_tokens), device
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.tokenizer = self.text_encoder = None

    @property
    def loaded(self) -> bool:
        return self.text_encoder is not None

    def load(self) -> None:
        from transformers import AutoTokenizer, UMT5EncoderModel

        encoder = UMT5EncoderModel.from_pretrained(
            self.model_path, subfolder="text_encoder", torch_dtype=self.dtype, local_files_only=True
        )
        # cast: transformers wraps `to` in functools.wraps(Module.to), which pyright reads as unbound
        self.text_encoder = cast(torch.nn.Module, encoder.requires_grad_(False).eval()).to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, subfolder="tokenizer", local_files_only=True)

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.text_encoder is None:
            self.load()
        assert self.text_encoder is not None  # load() sets it
        return encode_with_lengths(self.tokenizer, self.text_encoder, prompts, self.max_text_tokens, self.dtype)

    def free(self) -> int:
        """Release the encoder (if loaded); returns the bytes released."""
        nbytes = free_module(self.text_encoder) if self.text_encoder is not None else 0
        self.text_encoder = self.tokenizer = None
        return nbytes


def free_module(module: torch.nn.Module) -> int:
    """Release a module's weights now (even if other references to the module remain).

    Parameters and buffers are moved to the meta device, then garbage is collected and, with CUDA,
    the caching allocator returns the freed blocks to the driver. Returns the bytes released.
    The module is unusable afterwards (its forward would produce meta tensors): drop it too.
    """
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values() if t.device.type != "meta")
    del tensors
    module.to("meta")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return nbytes


def free_text_encoder(components) -> int:
    """``free_module(components.text_encoder)`` and ``components.text_encoder = None``, so a stray
    ``encode_prompts`` fails loudly instead of returning meta tensors. Returns the bytes released."""
    nbytes = free_module(components.text_encoder) if components.text_encoder is not None else 0
    components.text_encoder = None
    return nbytes
