"""The `tiny-i2v` preset: Wan2.1-I2V-14B's architecture at CPU size, built from config and saved as a
diffusers folder that `WanImageToVideoPipeline.from_pretrained` reads, as tiny.py does for Wan2.1 T2V.

The same classes as the real Wan2.1 I2V: `WanTransformer3DModel` with 36 input channels (16 noise + 4
first-frame mask + 16 image latent), image cross-attention (`image_dim`, `added_kv_proj_dim`), a
`CLIPVisionModel` in image_encoder/ (the pipeline takes its penultimate hidden state) and a
`CLIPImageProcessor` in image_processor/. The VAE, text encoder and tokenizer are the tiny preset's
(Wan2.1's VAE structure, identity-plus-noise convs, diffusers' default latents_mean/std).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .presets import PRESETS
from .random_build import build_components, cached_build, save_components
from .tiny import TINY_TEXT_ENCODER

TINY_I2V = "tiny-i2v"
TINY_I2V_FORMAT_VERSION = 1  # bump when the model changes, so cached folders are rebuilt
TINY_I2V_MARKER = "FGRPO_TINY_I2V_VERSION"
# A 2-layer ViT on 32 x 32 crops in 8 x 8 patches: 16 patch tokens + CLS = 17 image tokens (ViT-H/14
# on 224 x 224: 257), of the preset's image_dim.
CLIP_IMAGE_SIZE, CLIP_PATCH = 32, 8


def tiny_clip_vision_config() -> dict:
    """`CLIPVisionConfig` keyword arguments of the tiny image encoder (hidden size = the preset's image_dim)."""
    width = PRESETS[TINY_I2V].image_dim
    assert width is not None
    return dict(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=CLIP_PATCH,
    )


def tiny_clip_image_processor():
    """CLIP's preprocessing (resize the short side, centre crop, CLIP's mean/std) at the tiny encoder's size."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": CLIP_IMAGE_SIZE}, crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE}
    )


def build_tiny_i2v_components(seed: int = 0) -> dict:
    """WanImageToVideoPipeline's components of the tiny I2V model, seeded, float32."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    components = build_components(TINY_I2V, seed, text=TINY_TEXT_ENCODER, dtype=torch.float32, fast_init=False)
    torch.manual_seed(seed + 1)  # the image encoder's own draw: the other components stay as seeded
    image_encoder = CLIPVisionModel(CLIPVisionConfig(**tiny_clip_vision_config())).eval()
    return {**components, "image_encoder": image_encoder, "image_processor": tiny_clip_image_processor()}


def _marker_text(seed: int) -> str:
    return f"{TINY_I2V_FORMAT_VERSION} seed={seed}\n"


def save_tiny_i2v_model(path: str | Path, seed: int = 0) -> Path:
    """Save the tiny I2V model as a WanImageToVideoPipeline folder (atomically: random_build.save_components)."""
    return save_components(
        path, build_tiny_i2v_components(seed), TINY_I2V_MARKER, _marker_text(seed), pipeline="WanImageToVideoPipeline"
    )


def tiny_i2v_cache_name(seed: int = 0) -> str:
    """The cached tiny I2V model's folder name under $FGRPO_CACHE."""
    return f"tiny-i2v-v{TINY_I2V_FORMAT_VERSION}-seed{seed}"


def tiny_i2v_model_path(seed: int = 0) -> Path:
    """The cached tiny I2V folder, built on first use ($FGRPO_CACHE, default ~/.cache/fgrpo)."""
    return cached_build(
        tiny_i2v_cache_name(seed), TINY_I2V_MARKER, _marker_text(seed), lambda path: save_tiny_i2v_model(path, seed)
    )
