"""The `tiny-a14b` preset: Wan2.2-T2V-A14B's two-expert structure at CPU size, built from config and
saved as a diffusers folder that `WanPipeline.from_pretrained` reads, as tiny.py does for Wan2.1.

As Wan-AI/Wan2.2-T2V-A14B-Diffusers: two `WanTransformer3DModel` of one architecture, `transformer`
(high noise) and `transformer_2` (low noise), and `boundary_ratio` in model_index.json (WanPipeline's
own config argument). The first expert, VAE, text encoder and tokenizer are drawn exactly as the
`tiny` preset's; the second expert from its own seed, so the two experts differ.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .presets import PRESETS
from .random_build import build_components, cached_build, save_components, storage_dtype
from .tiny import TINY_TEXT_ENCODER

TINY_A14B = "tiny-a14b"
TINY_A14B_FORMAT_VERSION = 1  # bump when the model changes, so cached folders are rebuilt
TINY_A14B_MARKER = "FGRPO_TINY_A14B_VERSION"
SECOND_EXPERT_SEED_OFFSET = 7_001  # the low-noise expert's draw: the other components stay as seeded


def build_tiny_a14b_components(seed: int = 0, preset_name: str = TINY_A14B) -> dict:
    """WanPipeline's components and config of the tiny two-expert model, seeded, float32.
    `preset_name`: another two-expert preset of the tiny width (`tiny-i2v-a14b`: tiny_i2v_a14b.py)."""
    from diffusers import WanTransformer3DModel

    preset = PRESETS[preset_name]
    components = build_components(preset_name, seed, text=TINY_TEXT_ENCODER, dtype=torch.float32, fast_init=False)
    torch.manual_seed(seed + SECOND_EXPERT_SEED_OFFSET)
    low_noise = WanTransformer3DModel(**preset.transformer_config())
    for name, p in low_noise.named_parameters():
        p.data = p.data.to(storage_dtype(name, torch.float32))
    return {**components, "transformer_2": low_noise, "boundary_ratio": preset.boundary_ratio}


def _marker_text(seed: int) -> str:
    return f"{TINY_A14B_FORMAT_VERSION} seed={seed}\n"


def save_tiny_a14b_model(path: str | Path, seed: int = 0) -> Path:
    """Save the tiny two-expert model as a WanPipeline folder (atomically: random_build.save_components)."""
    return save_components(path, build_tiny_a14b_components(seed), TINY_A14B_MARKER, _marker_text(seed))


def tiny_a14b_cache_name(seed: int = 0) -> str:
    """The cached tiny two-expert model's folder name under $FGRPO_CACHE."""
    return f"tiny-a14b-v{TINY_A14B_FORMAT_VERSION}-seed{seed}"


def tiny_a14b_model_path(seed: int = 0) -> Path:
    """The cached tiny two-expert folder, built on first use ($FGRPO_CACHE, default ~/.cache/fgrpo)."""
    return cached_build(
        tiny_a14b_cache_name(seed), TINY_A14B_MARKER, _marker_text(seed), lambda path: save_tiny_a14b_model(path, seed)
    )
