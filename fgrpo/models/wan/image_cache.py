"""Image conditions computed once per prompt, cached on disk, the CLIP encoder freed: the text
cache's design (text_cache.py) for the image side of image-to-video models.

A run's prompts are fixed, and so are their images, so each prompt's condition latent (VAE) and
CLIP embedding (image_condition.py) is computed once, by 1/world of the ranks each, and read back
memory-mapped at every step. The storage is text_cache's `TextEmbeddingCache` (its collective build,
atomic folder, lookup of a batch) keyed by prompt text, one folder per kind:

    <runs_dir>/.cache/image-conditions/<key>/   kind "latent": [4 + C, F'·H'·W'] per prompt
    <runs_dir>/.cache/image-conditions/<key>/   kind "clip":   [T, D] per prompt (Wan2.1 I2V)
    <runs_dir>/.cache/image-conditions/<key>/   kind "first-frame": [C, H'·W'] per prompt, float32
                                                (Wan2.2-TI2V's text+image mode: first_frame.py)

(the negative prompt the text cache always adds is stored empty: the unconditional half takes the
prompt's image). Keys hash the components that compute them (vae/, or image_encoder/ and
image_processor/, as text_cache fingerprints the encoder), each prompt's text and image bytes, the
video size for the latent, the dtype and the diffusers and transformers versions: an edited image
is a new key, never a stale condition.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .first_frame import FirstFrameCondition, encode_first_frame_latent
from .image_condition import (
    ImageCondition,
    condition_pipeline,
    encode_clip_image,
    encode_condition_latent,
    load_image_encoder,
)
from .text_cache import NEGATIVE_PROMPT, TextEmbeddingCache, encoder_identity
from .text_encoder import free_module

FORMAT_VERSION = 1


def image_cache_key(kind: str, components: Sequence[Path], images: Mapping[str, Path], shape: str, dtype) -> str:
    """The cache folder's name (see the module docstring)."""
    import diffusers
    import transformers

    h = hashlib.sha256()
    h.update(f"fgrpo-image-cache v{FORMAT_VERSION}\n{kind}\n{shape}\n{str(dtype).removeprefix('torch.')}\n".encode())
    h.update(f"diffusers {diffusers.__version__}\ntransformers {transformers.__version__}\n".encode())
    for folder in components:
        h.update(f"{encoder_identity(folder)}\n".encode())
    for prompt in sorted(images):
        text = prompt.encode("utf-8")
        h.update(f"{len(text)}:".encode() + text + hashlib.sha256(Path(images[prompt]).read_bytes()).digest())
    return h.hexdigest()[:32]


def image_cache_folder(runs_dir: str | Path, key: str) -> Path:
    """``<runs_dir>/.cache/image-conditions/<key>``: shared by every run and sweep point there."""
    return Path(runs_dir) / ".cache" / "image-conditions" / key


class _Encoder:
    """`encode_fn`s for TextEmbeddingCache.build: each prompt's image through the pipeline's methods,
    one image at a time; the CLIP encoder is loaded on first use (never when its cache exists)."""

    def __init__(self, folder: Path, vae, images: Mapping[str, Path], size: tuple[int, int, int], device, dtype):
        self.folder, self.vae, self.images, self.size = folder, vae, images, size
        self.device, self.dtype = device, dtype
        self.clip_pipe = None

    def _rows(self, prompts: list[str], encode) -> tuple[torch.Tensor, torch.Tensor]:
        from fgrpo.data.image_prompts import load_image

        rows = {p: encode(load_image(self.images[p]))[0] for p in prompts if p != NEGATIVE_PROMPT}
        like = next(iter(rows.values()))
        out = torch.stack([rows.get(p, torch.zeros_like(like)) for p in prompts]).to(self.dtype)
        lengths = torch.tensor([0 if p == NEGATIVE_PROMPT else like.shape[0] for p in prompts])
        return out, lengths

    def latents(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 4 + C, F'·H'·W'] (the latent's channels as rows; the negative prompt's none)."""
        pipe = condition_pipeline(self.vae)
        frames, height, width = self.size
        return self._rows(
            prompts, lambda im: encode_condition_latent(pipe, im, frames, height, width, self.device).flatten(2)
        )

    def first_frames(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, C, H'·W'] (Wan2.2-TI2V: the image's one latent frame; the negative prompt's none)."""
        pipe = condition_pipeline(self.vae, expand_timesteps=True)
        frames, height, width = self.size
        return self._rows(
            prompts, lambda im: encode_first_frame_latent(pipe, im, frames, height, width, self.device).flatten(2)
        )

    def clip(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.clip_pipe is None:
            self.clip_pipe = condition_pipeline(self.vae, *load_image_encoder(self.folder, self.device))
        pipe = self.clip_pipe
        return self._rows(prompts, lambda im: encode_clip_image(pipe, im, self.device))

    def free(self) -> None:
        if self.clip_pipe is not None and self.clip_pipe.image_encoder is not None:
            free_module(self.clip_pipe.image_encoder)
        self.clip_pipe = None


class ImageConditionCache:
    """Every prompt's image condition (ImageCondition, or FirstFrameCondition for Wan2.2-TI2V's
    text+image mode), built once (collective) and looked up per batch."""

    def __init__(
        self,
        latent: TextEmbeddingCache,
        clip: TextEmbeddingCache | None,
        latent_shape: Sequence[int],
        files: Mapping[str, Path] | None = None,
        first_frame: bool = False,
    ):
        self.latent, self.clip, self.latent_shape = latent, clip, tuple(latent_shape)
        self.files = dict(files or {})  # prompt -> the image file its condition was computed from
        self.first_frame = first_frame  # `latent` holds the first latent frame only (TI2V)

    @classmethod
    def build(
        cls,
        folder: str | Path,
        vae,
        images: Mapping[str, Path],
        video: tuple[int, int, int],
        latent_shape: Sequence[int],
        with_clip: bool,
        runs_dir: str | Path,
        device,
        dtype: torch.dtype,
        first_frame: bool = False,
    ) -> "ImageConditionCache":
        """Collective (every rank calls it). `images`: prompt -> image file; `video`: (frames, height,
        width); `latent_shape`: the video latent's [C, F', H', W']; `with_clip`: the model has image
        cross-attention (Wan2.1 I2V). Stored in `dtype` (the compute dtype: the pipeline casts both to
        the transformer's dtype before use, after concatenating the latent). `first_frame`: Wan2.2-TI2V's
        text+image mode, the image's latent frame stored in float32 (the pipeline blends it into its
        float32 latents, whose first frame it then stays, and casts only the transformer's input)."""
        folder = Path(folder)
        dtype = torch.float32 if first_frame else dtype
        encoder = _Encoder(folder, vae, images, video, device, dtype)
        try:
            kind, encode = ("first-frame", encoder.first_frames) if first_frame else ("latent", encoder.latents)
            key = image_cache_key(kind, [folder / "vae"], images, "x".join(map(str, video)), dtype)
            latent = TextEmbeddingCache.build(encode, images, image_cache_folder(runs_dir, key), key=key)
            clip = None
            if with_clip:
                parts = [folder / "image_encoder", folder / "image_processor"]
                key = image_cache_key("clip", parts, images, "", dtype)
                clip = TextEmbeddingCache.build(encoder.clip, images, image_cache_folder(runs_dir, key), key=key)
        finally:
            encoder.free()
        return cls(latent, clip, latent_shape, images, first_frame)

    def lookup(self, prompts: Sequence[str], device=None) -> ImageCondition | FirstFrameCondition:
        """The prompts' conditions, row b for prompt b (KeyError naming a prompt without one)."""
        _, f, h, w = self.latent_shape
        latent = self.latent.lookup(prompts, device)
        if self.first_frame:
            return FirstFrameCondition(latent.view(len(prompts), latent.shape[1], 1, h, w))
        latent = latent.view(len(prompts), latent.shape[1], f, h, w)
        return ImageCondition(latent, None if self.clip is None else self.clip.lookup(prompts, device))
