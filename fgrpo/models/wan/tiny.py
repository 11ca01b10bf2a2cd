"""The `tiny` preset: a small Wan-architecture model built from config, saved as a diffusers folder.

No weights can be downloaded on CPU test machines, so the project builds its own tiny model and
loads it back through the same `from_pretrained` path that real Wan weights take. The building
itself is random_build.py's (one builder for every preset); this module fixes the tiny recipe:
PyTorch's default init from the global RNG, float32, a 2-layer UMT5 of width 32.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .random_build import (
    TOKENIZER_VOCAB,
    TextEncoderSpec,
    build_components,
    build_tokenizer,
    cached_build,
    save_components,
)

TINY_FORMAT_VERSION = 1  # bump when the tiny model changes, so cached folders are rebuilt
TINY_VOCAB = TOKENIZER_VOCAB
TINY_MARKER = "FGRPO_TINY_VERSION"
TINY_TEXT_ENCODER = TextEncoderSpec(d_kv=8, d_ff=64, num_layers=2, num_heads=4)


def build_tiny_tokenizer(corpus: list[str]):
    """A byte-level BPE tokenizer (no unknown tokens) wrapped as a transformers fast tokenizer."""
    return build_tokenizer(corpus, TINY_VOCAB)


def build_tiny_components(seed: int = 0, corpus: list[str] | None = None) -> dict:
    """Build the tiny transformer, VAE, UMT5 text encoder and tokenizer with seeded random weights."""
    return build_components("tiny", seed, text=TINY_TEXT_ENCODER, dtype=torch.float32, fast_init=False, corpus=corpus)


def _marker_text(seed: int) -> str:
    return f"{TINY_FORMAT_VERSION} seed={seed}\n"


def save_tiny_model(path: str | Path, seed: int = 0) -> Path:
    """Save the tiny preset as a diffusers-format folder (what `WanPipeline.from_pretrained` reads).

    Written to a temporary sibling and renamed, so an interrupted build never leaves a folder
    that looks complete.
    """
    return save_components(path, build_tiny_components(seed), TINY_MARKER, _marker_text(seed))


def tiny_cache_name(seed: int = 0) -> str:
    """The cached tiny model's folder name under $FGRPO_CACHE."""
    return f"tiny-wan-v{TINY_FORMAT_VERSION}-seed{seed}"


def tiny_model_path(seed: int = 0) -> Path:
    """The cached tiny model folder, built on first use ($FGRPO_CACHE, default ~/.cache/fgrpo)."""
    return cached_build(
        tiny_cache_name(seed), TINY_MARKER, _marker_text(seed), lambda path: save_tiny_model(path, seed)
    )
