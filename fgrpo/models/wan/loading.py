"""Load Wan2.1 T2V components from a local diffusers-format folder, encode prompts, decode videos."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REQUIRED_SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer")


def check_model_folder(path: str | Path) -> list[str]:
    """Problems that make `path` unusable as a Wan diffusers folder (empty list = fine)."""
    path = Path(path)
    if not path.is_dir():
        return [f"{path} is not a directory"]
    return [f"{path / sub} is missing" for sub in REQUIRED_SUBFOLDERS if not (path / sub).is_dir()]


@dataclass
class WanComponents:
    """The pieces of a Wan T2V pipeline that training uses (we run our own sampler)."""

    transformer: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    dtype: torch.dtype
    max_text_tokens: int

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """UMT5 embeddings [B, L, D], zero past each prompt's length (as diffusers' WanPipeline)."""
        device = next(self.text_encoder.parameters()).device
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_text_tokens,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        hidden = self.text_encoder(ids, mask).last_hidden_state
        return (hidden * mask.unsqueeze(-1).to(hidden.dtype)).to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, 16, F', H', W'] (normalised space) -> frames [B, F, 3, H, W] in [0, 1]."""
        vae = self.vae
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents)
        z = (latents * std + mean).to(next(vae.parameters()).dtype)
        video = vae.decode(z, return_dict=False)[0]  # [B, 3, F, H, W] in [-1, 1]
        return (video.float().clamp(-1, 1) * 0.5 + 0.5).permute(0, 2, 1, 3, 4).contiguous()


def model_folder(model) -> Path:
    """The recipe's `model` section -> its diffusers folder (the tiny preset's cached build)."""
    if model.path is not None:
        return Path(model.path)
    from .tiny import tiny_model_path

    return tiny_model_path(model.seed)


def _checked(path: str | Path) -> None:
    problems = check_model_folder(path)
    if problems:
        raise FileNotFoundError("model.path: " + "; ".join(problems))


def load_transformer(path: str | Path, dtype: str = "bfloat16"):
    """Only the Wan transformer, from a local diffusers folder (what export needs)."""
    from diffusers import WanTransformer3DModel

    _checked(path)
    return WanTransformer3DModel.from_pretrained(path, subfolder="transformer", torch_dtype=DTYPES[dtype],
                                                 local_files_only=True)


def load_wan(path: str | Path, dtype: str = "bfloat16", max_text_tokens: int = 512, device: str = "cpu") -> WanComponents:
    """`from_pretrained` each component from a local folder; never touches the network."""
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    _checked(path)
    torch_dtype = DTYPES[dtype]
    kw = dict(local_files_only=True)
    transformer = load_transformer(path, dtype)
    # The Wan VAE is numerically sensitive; diffusers' own examples keep it in float32.
    vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32, **kw)
    text_encoder = UMT5EncoderModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=torch_dtype, **kw)
    tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer", **kw)
    for frozen in (vae, text_encoder):
        frozen.requires_grad_(False).eval()
    transformer.to(device)
    vae.to(device)
    text_encoder.to(device)
    return WanComponents(transformer, vae, text_encoder, tokenizer, torch_dtype, max_text_tokens)
