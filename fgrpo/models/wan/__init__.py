"""Wan2.1 text-to-video (diffusers): presets, tiny model, loading, LoRA."""

from .loading import WanComponents, check_model_folder, load_wan
from .presets import PRESETS, latent_shape

__all__ = ["PRESETS", "WanComponents", "check_model_folder", "latent_shape", "load_wan"]
