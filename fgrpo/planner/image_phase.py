"""Start-up image encoding of image-to-video models, on fake tensors: what
fgrpo.models.wan.image_cache runs once per prompt before the transformer is built (after the
text encoder is freed), for one prompt.

Resident: the VAE (fp32, as `load_wan` keeps it) and, for a model with image cross-attention
(Wan2.1 I2V), the CLIP image encoder (`CLIPVisionModel` in float32, as `load_image_encoder` loads
it). Run: the pipeline's `encode_image` (CLIP at its own image size, every hidden state kept: the
penultimate one is the condition) and the VAE encoding of the condition video (the image followed
by frames - 1 black frames at the video's size, `prepare_latents`). The CLIP encoder is freed
afterwards (`_Encoder.free`).
"""

from __future__ import annotations

import torch

from .phases import Phase
from .world import count_flops, storage_bytes

__all__ = ["image_encoding"]


def _clip_pixels(config) -> torch.Tensor:
    """One image as CLIP's processor gives it: [1, 3, image_size, image_size]."""
    return torch.zeros(1, int(config.num_channels), int(config.image_size), int(config.image_size))


class _VaeEncode(torch.nn.Module):
    """`vae.encode(video)`'s posterior mode as one module's forward: the VAE calls its encoder once
    per chunk of frames, which torch's MemTracker allows only below a root module's forward."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(video).latent_dist.mode()


def image_encoding(spec, recipe, fake) -> Phase | None:
    """The start-up image-encoding phase of `spec`'s model for one prompt, or None for a model that
    takes no image (no condition channels)."""
    from diffusers import AutoencoderKLWan
    from torch.distributed._tools.mem_tracker import MemTracker
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if not spec.condition_channels:
        return None
    ro = recipe.rollout
    with torch.device("meta"):
        vae = AutoencoderKLWan(**spec.vae)
        clip = None if spec.image_encoder is None else CLIPVisionModel(CLIPVisionConfig(**spec.image_encoder))
    modules = [m for m in (vae, clip) if m is not None]
    for m in modules:  # frozen in the trainer; MemTracker hooks every parameter, so left trainable: no_grad below
        m.eval()
    flops = {}
    with fake:
        for m in modules:
            m.to_empty(device="cpu")
        tracker = MemTracker()
        tracker.track_external(*modules)
        with tracker, torch.no_grad():
            if clip is not None:
                with count_flops() as fc:
                    hidden = clip(pixel_values=_clip_pixels(clip.config), output_hidden_states=True).hidden_states
                    condition = hidden[-2]
                flops["clip"] = fc.get_total_flops()
                del hidden, condition
            video = torch.zeros(1, 3, ro.frames, ro.height, ro.width)
            with count_flops() as fc:
                latent = _VaeEncode(vae)(video)
            flops["vae"] = fc.get_total_flops()
            del video, latent
    peak = {
        getattr(k, "value", k): int(v)
        for snap in tracker.get_tracker_snapshot("peak").values()
        for k, v in snap.items()
    }
    vae_bytes = storage_bytes(*vae.parameters(), *vae.buffers())
    clip_bytes = storage_bytes(*clip.parameters(), *clip.buffers()) if clip is not None else 0
    parts = {"VAE": vae_bytes, "image encoder": clip_bytes}
    parts["activations"] = peak.get("Total", 0) - vae_bytes - clip_bytes
    return Phase("image encoding", peak.get("Total", 0), parts, flops)
