"""Image-to-video conditioning, computed as diffusers' `WanImageToVideoPipeline` computes it.

For each prompt's image the pipeline makes two inputs of every transformer call, conditional and
unconditional (CFG) alike:

- `encoder_hidden_states_image`: the CLIP image encoder's penultimate hidden state
  (`WanImageToVideoPipeline.encode_image`), Wan2.1 I2V only (the models with `image_dim`);
- the condition latent appended to the noisy latents along channels: the first-frame mask (4
  channels: the VAE's temporal factor of frames folded into the first latent frame) and the VAE
  latent of [image, zeros...] normalised with latents_mean/std (`prepare_latents`): 16 + 4 + 16 = 36
  input channels.

Both are made here by the pipeline's own methods (`video_processor.preprocess`, `prepare_latents`,
`encode_image`) on a pipeline object that holds only the VAE and the image encoder, one image at a
time, as the pipeline encodes one. `ImageCondition` carries them per video through fgrpo's sampler
and training pass (fgrpo.trainer.rollout); image_cache.py computes them once per prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import WanImageToVideoPipeline
    from PIL import Image


@dataclass(frozen=True)
class ImageConditioning:
    """What a model folder's transformer takes beyond text (from its config)."""

    condition_channels: int  # mask + image latent channels appended to the latents (Wan2.1 I2V: 20)
    image_dim: int | None  # CLIP feature width of its image cross-attention; None: none

    @property
    def needed(self) -> bool:
        return self.condition_channels > 0 or self.image_dim is not None

    @classmethod
    def of_folder(cls, folder: str | Path) -> "ImageConditioning":
        config = json.loads((Path(folder) / "transformer" / "config.json").read_text())
        extra = int(config.get("in_channels", 16)) - int(config.get("out_channels") or config.get("in_channels", 16))
        return cls(max(0, extra), config.get("image_dim"))


@dataclass
class ImageCondition:
    """The image inputs of a batch of videos' transformer calls (row b: video b's prompt's image)."""

    latent: torch.Tensor  # [B, 4 + C, F', H', W']: first-frame mask, then the normalised image latent
    embeds: torch.Tensor | None  # [B, T, D]: CLIP's penultimate hidden state; None without image attention

    def __getitem__(self, index) -> "ImageCondition":
        return ImageCondition(self.latent[index], None if self.embeds is None else self.embeds[index])

    def for_cfg(self) -> "ImageCondition":
        """For the conditional and unconditional halves of a CFG batch: the pipeline conditions both
        on the same image (only the text differs)."""
        embeds = None if self.embeds is None else torch.cat([self.embeds, self.embeds])
        return ImageCondition(torch.cat([self.latent, self.latent]), embeds)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "ImageCondition":
        embeds = None if self.embeds is None else self.embeds.to(device=device, dtype=dtype)
        return ImageCondition(self.latent.to(device=device, dtype=dtype), embeds)

    def transformer_inputs(self, x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, Any]]:
        """(hidden_states, keyword arguments) of the transformer call for latents `x`, as the pipeline's
        `torch.cat([latents, condition], dim=1).to(transformer_dtype)` and `encoder_hidden_states_image`."""
        hidden = torch.cat([x, self.latent.to(x.dtype)], dim=1).to(dtype)
        extra = {} if self.embeds is None else {"encoder_hidden_states_image": self.embeds.to(dtype)}
        return hidden, extra


def condition_pipeline(
    vae, image_encoder=None, image_processor=None, expand_timesteps: bool = False
) -> WanImageToVideoPipeline:
    """A `WanImageToVideoPipeline` holding only what its conditioning methods read (the VAE, the
    CLIP encoder and processor), so those methods run as diffusers wrote them; `expand_timesteps`:
    Wan2.2-TI2V's path (fgrpo.models.wan.first_frame)."""
    from diffusers import WanImageToVideoPipeline

    absent: Any = None  # diffusers takes absent components (its optional ones); its type hints do not say so
    return WanImageToVideoPipeline(
        tokenizer=absent,
        text_encoder=absent,
        vae=vae,
        scheduler=absent,
        image_processor=absent if image_processor is None else image_processor,
        image_encoder=absent if image_encoder is None else image_encoder,
        expand_timesteps=expand_timesteps,
    )


@torch.no_grad()
def encode_condition_latent(
    pipe: WanImageToVideoPipeline, image: Image.Image, frames: int, height: int, width: int, device
) -> torch.Tensor:
    """[1, 4 + C, F', H', W'] float32: the pipeline's `condition` for one image (its
    `video_processor.preprocess` to height x width, then `prepare_latents`: the VAE latent of the
    image followed by frames - 1 black frames, argmax of the posterior, normalised, behind the mask).
    With `expand_timesteps` (Wan2.2 TI2V) the pipeline's condition is the image's latent alone,
    [1, C, 1, H', W'] (fgrpo.models.wan.first_frame)."""
    vae = pipe.vae
    pixels = pipe.video_processor.preprocess(image, height=height, width=width).to(device, dtype=torch.float32)
    z = int(vae.config["z_dim"])
    latent_frames = (frames - 1) // pipe.vae_scale_factor_temporal + 1
    shape = (1, z, latent_frames, height // pipe.vae_scale_factor_spatial, width // pipe.vae_scale_factor_spatial)
    # `latents` given: prepare_latents draws no noise (fgrpo's sampler draws its own, per video).
    placeholder = torch.empty(shape, dtype=torch.float32, device=device)
    # (latents, condition), or with expand_timesteps (latents, condition, first_frame_mask).
    outputs = pipe.prepare_latents(
        pixels, 1, z, height, width, frames, torch.float32, torch.device(device), None, placeholder
    )
    return outputs[1]


@torch.no_grad()
def encode_clip_image(pipe: WanImageToVideoPipeline, image: Image.Image, device) -> torch.Tensor:
    """[1, T, D]: the pipeline's `encode_image` (CLIP's preprocessing, the penultimate hidden state)."""
    return pipe.encode_image(image, torch.device(device))


def load_image_encoder(folder: str | Path, device) -> tuple[torch.nn.Module, Any]:
    """The folder's CLIP image encoder (float32, frozen, eval) and image processor, as diffusers'
    Wan I2V example loads them (`CLIPVisionModel`, float32)."""
    from typing import cast

    from transformers import CLIPImageProcessor, CLIPVisionModel

    folder = Path(folder)
    for sub in ("image_encoder", "image_processor"):
        if not (folder / sub).is_dir():
            raise FileNotFoundError(
                f"model.path: {folder / sub} is missing (a Wan2.1 image-to-video folder has image_encoder/ "
                "and image_processor/)"
            )
    encoder = CLIPVisionModel.from_pretrained(
        folder, subfolder="image_encoder", torch_dtype=torch.float32, local_files_only=True
    )
    processor = CLIPImageProcessor.from_pretrained(folder, subfolder="image_processor", local_files_only=True)
    # cast: transformers wraps `to` in functools.wraps(Module.to), which pyright reads as unbound
    return cast(torch.nn.Module, encoder.requires_grad_(False).eval()).to(device), processor
