"""The `tiny-i2v-a14b` preset: Wan2.2-I2V-A14B's structure at CPU size, built from config and saved as a
diffusers folder that `WanImageToVideoPipeline.from_pretrained` reads, as tiny_a14b.py does for T2V-A14B.

As Wan-AI/Wan2.2-I2V-A14B-Diffusers: two `WanTransformer3DModel` of one architecture with 36 input
channels (16 noise + 4 first-frame mask + 16 image latent), `transformer` (high noise) and
`transformer_2` (low noise), `boundary_ratio` in model_index.json, and no image encoder nor image
processor (Wan2.2 I2V has no CLIP image cross-attention: the image enters through the condition
channels only). Drawn by tiny_a14b.py's builder from this preset's configs: the first expert, VAE,
text encoder and tokenizer as the `tiny` preset draws them, the second expert from its own seed.
"""

from __future__ import annotations

from pathlib import Path

from .random_build import cached_build, save_components
from .tiny_a14b import build_tiny_a14b_components

TINY_I2V_A14B = "tiny-i2v-a14b"
TINY_I2V_A14B_FORMAT_VERSION = 1  # bump when the model changes, so cached folders are rebuilt
TINY_I2V_A14B_MARKER = "FGRPO_TINY_I2V_A14B_VERSION"


def build_tiny_i2v_a14b_components(seed: int = 0) -> dict:
    """WanImageToVideoPipeline's components and config of the tiny I2V two-expert model, seeded, float32."""
    return build_tiny_a14b_components(seed, TINY_I2V_A14B)


def _marker_text(seed: int) -> str:
    return f"{TINY_I2V_A14B_FORMAT_VERSION} seed={seed}\n"


def save_tiny_i2v_a14b_model(path: str | Path, seed: int = 0) -> Path:
    """Save the tiny I2V two-expert model as a WanImageToVideoPipeline folder (atomically)."""
    return save_components(
        path,
        build_tiny_i2v_a14b_components(seed),
        TINY_I2V_A14B_MARKER,
        _marker_text(seed),
        pipeline="WanImageToVideoPipeline",
    )


def tiny_i2v_a14b_cache_name(seed: int = 0) -> str:
    """The cached tiny I2V two-expert model's folder name under $FGRPO_CACHE."""
    return f"tiny-i2v-a14b-v{TINY_I2V_A14B_FORMAT_VERSION}-seed{seed}"


def tiny_i2v_a14b_model_path(seed: int = 0) -> Path:
    """The cached tiny I2V two-expert folder, built on first use ($FGRPO_CACHE, default ~/.cache/fgrpo)."""
    return cached_build(
        tiny_i2v_a14b_cache_name(seed),
        TINY_I2V_A14B_MARKER,
        _marker_text(seed),
        lambda path: save_tiny_i2v_a14b_model(path, seed),
    )
