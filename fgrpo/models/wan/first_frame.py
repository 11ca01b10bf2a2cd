"""Wan2.2-TI2V's text+image mode, as diffusers 0.42's `WanImageToVideoPipeline` runs it with
`expand_timesteps=True` (the Wan2.2-TI2V-5B path): the image is the video's first latent frame.

The pipeline (`prepare_latents`, `__call__`):
- encodes the image alone (one pixel frame -> one latent frame), the posterior's argmax,
  normalised with latents_mean/std: `condition` [B, C, 1, H', W'];
- `first_frame_mask` [1, 1, F', H', W']: 0 on latent frame 0, 1 elsewhere;
- before every transformer call: `(1 - mask) * condition + mask * latents`, cast to the
  transformer's dtype, and a timestep per token, `(mask[0][0][:, ::2, ::2] * t).flatten()` (the
  patch grid of Wan2.2-TI2V's 1x2x2 patch): the first frame's tokens at t = 0, the others at t;
- no CLIP features and no extra input channels; at the end the same blend once more.

fgrpo blends the condition into its latents at the start and after every step (ODE and SDE), so
its state always holds the image as frame 0: the pipeline's other frames are the same (its
scheduler step is elementwise, frame 0 never reaches another frame but through the blended
transformer input), and its final blend is fgrpo's state. The first frame is imposed, not
sampled: an SDE transition's log-density counts only the other frames (`sampled_frames`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .image_condition import ImageCondition, encode_condition_latent

if TYPE_CHECKING:
    from diffusers import WanImageToVideoPipeline
    from PIL import Image


def expands_timesteps(folder: str | Path) -> bool:
    """Whether the folder's pipeline config (model_index.json) sets `expand_timesteps` (Wan2.2-TI2V);
    a folder without one (components only) is not TI2V."""
    index = Path(folder) / "model_index.json"
    return index.is_file() and bool(json.loads(index.read_text()).get("expand_timesteps", False))


def first_frame_mask(latent_shape: torch.Size | tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
    """[1, 1, F', H', W']: the pipeline's `first_frame_mask` for latents of `latent_shape`
    ([B, C, F', H', W']): 0 on the first latent frame (given), 1 on the others (sampled)."""
    _, _, frames, height, width = latent_shape
    mask = torch.ones(1, 1, frames, height, width, dtype=dtype, device=device)
    mask[:, :, 0] = 0
    return mask


def sampled_frames(latent_shape: torch.Size | tuple[int, ...], device) -> torch.Tensor:
    """[1, 1, F', 1, 1] bool: the latent frames a transition samples (all but the first); the mask
    of the log-density and the KL (fgrpo.algorithm.sde_log_prob)."""
    frames = torch.ones(1, 1, latent_shape[2], 1, 1, dtype=torch.bool, device=device)
    frames[:, :, 0] = False
    return frames


@dataclass
class FirstFrameCondition:
    """Each video's first latent frame, given (row b: video b's prompt's image)."""

    latent: torch.Tensor  # [B, C, 1, H', W']: the image's normalised VAE latent (the pipeline's `condition`)

    def __getitem__(self, index) -> "FirstFrameCondition":
        return FirstFrameCondition(self.latent[index])

    def for_cfg(self) -> "FirstFrameCondition":
        """Both CFG halves start from the same image (only the text differs), as in the pipeline."""
        return FirstFrameCondition(torch.cat([self.latent, self.latent]))

    def to(self, device=None, dtype: torch.dtype | None = None) -> "FirstFrameCondition":
        return FirstFrameCondition(self.latent.to(device=device, dtype=dtype))

    def impose(self, x: torch.Tensor) -> torch.Tensor:
        """`x` [B, C, F', H', W'] with its first latent frame the image's, in `x`'s dtype: the
        pipeline's `(1 - first_frame_mask) * condition + first_frame_mask * latents` (bitwise: the
        products by 0 and 1 are exact)."""
        mask = first_frame_mask(x.shape, x.dtype, x.device)
        return (1 - mask) * self.latent.to(x.dtype) + mask * x

    def transformer_inputs(
        self, x: torch.Tensor, t: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden_states, timestep) of the transformer call for latents `x` at timesteps `t` [B]:
        the blended latents in `dtype`, and [B, seq] per-token timesteps, the first frame's 0."""
        mask = first_frame_mask(x.shape, t.dtype, t.device)
        per_token = mask[0][0][:, ::2, ::2].flatten()  # the pipeline's token grid (1x2x2 patches)
        return self.impose(x).to(dtype), per_token[None, :] * t[:, None]


VideoCondition = ImageCondition | FirstFrameCondition  # what the sampler and training pass take


def impose_first_frame(x: torch.Tensor, image: VideoCondition | None, rows=None) -> torch.Tensor:
    """`x` with the first latent frame re-imposed for TI2V's text+image mode (`image[rows]`'s, all
    rows when `rows` is None); any other condition leaves `x` as it is."""
    if not isinstance(image, FirstFrameCondition):
        return x
    return (image if rows is None else image[rows]).impose(x)


def log_prob_mask(image: VideoCondition | None, x: torch.Tensor) -> torch.Tensor | None:
    """Which elements of a transition's latents its log-density and KL count: all (None), or, in
    TI2V's text+image mode, all but the first latent frame (imposed, not sampled)."""
    return sampled_frames(x.shape, x.device) if isinstance(image, FirstFrameCondition) else None


@torch.no_grad()
def encode_first_frame_latent(
    pipe: WanImageToVideoPipeline, image: Image.Image, frames: int, height: int, width: int, device
) -> torch.Tensor:
    """[1, C, 1, H', W'] float32: the pipeline's `condition` for one image with
    `expand_timesteps=True` (`video_processor.preprocess` to height x width, then `prepare_latents`:
    the VAE latent of the image alone, argmax of the posterior, normalised)."""
    assert pipe.config["expand_timesteps"], "a pipeline object built with expand_timesteps=True"
    return encode_condition_latent(pipe, image, frames, height, width, device)
