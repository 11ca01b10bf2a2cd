"""The `tiny-ti2v` preset: Wan2.2-TI2V-5B's architecture at CPU size, built from config and saved as a
diffusers folder (what `WanPipeline.from_pretrained` reads), as tiny.py does for Wan2.1.

The same classes as the real TI2V-5B: `WanTransformer3DModel` with in/out channels equal to the
VAE's latent channels, and `AutoencoderKLWan` with Wan2.2's structure (`is_residual=True`, a 2x2
patchify of 12 channels, 16x spatial and 4x temporal compression; `VAE_CONFIGS["tiny-wan2.2"]`),
latents_mean/std of its z_dim, and a pipeline config with `expand_timesteps=True`, as
Wan-AI/Wan2.2-TI2V-5B-Diffusers' model_index.json has. The text encoder and tokenizer are the
tiny preset's. Its convs are identity-plus-noise (random_build.identity_plus_noise_), so decoded
colour follows the latent and a reward can tell rollouts apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .presets import PRESETS
from .random_build import build_components, cached_build, save_components
from .tiny import TINY_TEXT_ENCODER

TINY_TI2V = "tiny-ti2v"
TINY_TI2V_FORMAT_VERSION = 1  # bump when the model changes, so cached folders are rebuilt
TINY_TI2V_MARKER = "FGRPO_TINY_TI2V_VERSION"


def tiny_ti2v_vae_config(seed: int = 0) -> dict[str, Any]:
    """`AutoencoderKLWan` keyword arguments: the preset's VAE plus seeded latents_mean/std of z_dim
    values each (not 0 and 1: decoding must apply the folder's own normalisation to pass tests)."""
    config = PRESETS[TINY_TI2V].vae_config()
    z = int(config["z_dim"])
    gen = torch.Generator().manual_seed(seed)
    mean = (torch.randn(z, generator=gen) * 0.2).tolist()
    std = (0.5 + torch.rand(z, generator=gen)).tolist()
    return {**config, "latents_mean": [round(m, 4) for m in mean], "latents_std": [round(s, 4) for s in std]}


def build_tiny_ti2v_components(seed: int = 0) -> dict:
    """WanPipeline's components and config of the tiny TI2V model, seeded, float32."""
    components = build_components(
        TINY_TI2V,
        seed,
        text=TINY_TEXT_ENCODER,
        dtype=torch.float32,
        fast_init=False,
        vae_config=tiny_ti2v_vae_config(seed),
    )
    return {**components, "expand_timesteps": PRESETS[TINY_TI2V].expand_timesteps}


def _marker_text(seed: int) -> str:
    return f"{TINY_TI2V_FORMAT_VERSION} seed={seed}\n"


def save_tiny_ti2v_model(path: str | Path, seed: int = 0) -> Path:
    """Save the tiny TI2V model as a diffusers-format folder (atomically: random_build.save_components)."""
    return save_components(path, build_tiny_ti2v_components(seed), TINY_TI2V_MARKER, _marker_text(seed))


def tiny_ti2v_cache_name(seed: int = 0) -> str:
    """The cached tiny TI2V model's folder name under $FGRPO_CACHE."""
    return f"tiny-ti2v-v{TINY_TI2V_FORMAT_VERSION}-seed{seed}"


def tiny_ti2v_model_path(seed: int = 0) -> Path:
    """The cached tiny TI2V folder, built on first use ($FGRPO_CACHE, default ~/.cache/fgrpo)."""
    return cached_build(
        tiny_ti2v_cache_name(seed), TINY_TI2V_MARKER, _marker_text(seed), lambda path: save_tiny_ti2v_model(path, seed)
    )
