"""Wan text-to-video and image-to-video (diffusers): presets, tiny models, loading, LoRA.

Importing the package imports no torch itself: the CLI reads presets and checks model folders before
it launches anything, and would otherwise import torch.distributed's FSDP and DTensor modules (about
a second per command) for nothing. `load_wan` and `WanComponents` are imported on first use."""

from typing import TYPE_CHECKING

from .folder import check_model_folder
from .presets import PRESETS, latent_shape

if TYPE_CHECKING:
    from .loading import WanComponents, load_wan

__all__ = ["PRESETS", "WanComponents", "check_model_folder", "latent_shape", "load_wan"]


def __getattr__(name: str):
    if name in ("WanComponents", "load_wan"):
        from . import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
