"""Load Wan2.1 T2V components from a local diffusers-format folder, encode prompts, decode videos."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from fgrpo.distributed.precision import DTYPES

from .folder import check_model_folder

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan


@dataclass
class WanComponents:
    """The pieces of a Wan T2V pipeline that training uses (we run our own sampler)."""

    transformer: torch.nn.Module | None
    vae: AutoencoderKLWan
    text_encoder: torch.nn.Module | None
    tokenizer: object | None
    dtype: torch.dtype
    max_text_tokens: int

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """UMT5 embeddings [B, L, D], zero past each prompt's length (as diffusers' WanPipeline)."""
        from .text_encoder import encode_with_lengths

        if self.text_encoder is None:  # freed, or loaded with with_text_encoder=False
            raise AttributeError("these components hold no text encoder (freed, or with_text_encoder=False)")
        return encode_with_lengths(self.tokenizer, self.text_encoder, prompts, self.max_text_tokens, self.dtype)[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, F', H', W'] (normalised space) -> frames [B, F, 3, H, W] in [0, 1]."""
        vae = self.vae
        mean = torch.tensor(vae.config["latents_mean"]).view(1, -1, 1, 1, 1).to(latents)
        std = torch.tensor(vae.config["latents_std"]).view(1, -1, 1, 1, 1).to(latents)
        z = (latents * std + mean).to(next(vae.parameters()).dtype)
        video = vae.decode(z, return_dict=False)[0]  # [B, 3, F, H, W] in [-1, 1]
        return (video.float().clamp(-1, 1) * 0.5 + 0.5).permute(0, 2, 1, 3, 4).contiguous()


def _checked(path: str | Path) -> None:
    problems = check_model_folder(path)
    if problems:
        raise FileNotFoundError("model.path: " + "; ".join(problems))


def load_transformer(path: str | Path, dtype: str = "bfloat16", subfolder: str = "transformer"):
    """Only the Wan transformer (or `transformer_2`, Wan2.2 A14B's low-noise expert), from a local
    diffusers folder (what export needs)."""
    from diffusers import WanTransformer3DModel

    _checked(path)
    return WanTransformer3DModel.from_pretrained(
        path, subfolder=subfolder, torch_dtype=DTYPES[dtype], local_files_only=True
    )


def load_wan(
    path: str | Path,
    dtype: str = "bfloat16",
    max_text_tokens: int = 512,
    device: str = "cpu",
    with_transformer: bool = True,
    with_text_encoder: bool = True,
) -> WanComponents:
    """`from_pretrained` each component from a local folder; never touches the network.

    `with_transformer=False` leaves `transformer` None: the trainer builds it on the meta device and
    reads each rank's shards itself (fgrpo.models.wan.sharded_loading). `with_text_encoder=False`
    leaves the encoder and tokenizer None: the trainer encodes its prompts once through a
    `LazyTextEncoder` and the text-embedding cache (fgrpo.models.wan.text_cache)."""
    from diffusers import AutoencoderKLWan

    from .text_encoder import LazyTextEncoder

    _checked(path)
    torch_dtype = DTYPES[dtype]
    transformer = load_transformer(path, dtype) if with_transformer else None
    # The Wan VAE is numerically sensitive; diffusers' own examples keep it in float32.
    vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32, local_files_only=True)
    vae.requires_grad_(False).eval()
    text = LazyTextEncoder(path, torch_dtype, max_text_tokens, device)
    if with_text_encoder:
        text.load()
    # cast: diffusers wraps `to` in functools.wraps(Module.to), which pyright reads as unbound
    if transformer is not None:
        cast(torch.nn.Module, transformer).to(device)
    cast(torch.nn.Module, vae).to(device)
    return WanComponents(transformer, vae, text.text_encoder, text.tokenizer, torch_dtype, max_text_tokens)
