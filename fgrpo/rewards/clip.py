"""CLIP-family reward (CLIP score, PickScore): per-frame text-image similarity.

Any checkpoint loadable with transformers' ``CLIPModel`` + ``CLIPProcessor``
works. The score of a frame is PickScore's formula::

    logit_scale.exp() * cosine(image_embedding, text_embedding)

Image preprocessing is done in torch and mirrors the checkpoint's own
``CLIPImageProcessor`` (bicubic antialiased resize of the shortest side,
center crop, mean/std normalisation), so frames never go through PIL.

:meth:`ClipScorer.from_model` wraps a model built in memory; the HPSv2 reward
(:mod:`fgrpo.rewards.hpsv2`) uses it with converted open_clip weights and
scores plain cosine similarity (no logit scale).

Importing this module registers the per-frame reward ``"clip"``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from fgrpo.rewards.base import register_reward
from fgrpo.rewards.scorers import cached_scorer, resolve_dtype

__all__ = ["ClipScorer", "clip", "get_scorer"]


def _get(cfg: Any, key: str) -> Any:
    """Read ``key`` from a size dict or a SizeDict-like object (None if absent)."""
    if cfg is None:
        return None
    if isinstance(cfg, dict):
        return cfg.get(key)
    return getattr(cfg, key, None)


class ClipScorer:
    """Scores frames against prompts with a CLIPModel checkpoint.

    ``ClipScorer(path)`` loads a saved checkpoint; :meth:`from_model` wraps an
    already-built model (e.g. weights converted from another format).
    """

    def __init__(self, model_path: str, dtype: str | torch.dtype = "auto", device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        if not os.path.isdir(model_path):
            raise FileNotFoundError(f"CLIP reward: model folder {model_path!r} does not exist")
        try:
            model = CLIPModel.from_pretrained(model_path, local_files_only=True, dtype=resolve_dtype(dtype, device))
            processor = CLIPProcessor.from_pretrained(model_path, local_files_only=True)
        except OSError as exc:
            raise FileNotFoundError(
                f"CLIP reward: cannot load CLIPModel/CLIPProcessor from {model_path!r}: {exc}"
            ) from exc
        self._setup(model, processor, dtype, device, use_logit_scale=True)

    @classmethod
    def from_model(
        cls,
        model: Any,
        processor: Any,
        dtype: str | torch.dtype = "auto",
        device: str = "cpu",
        use_logit_scale: bool = True,
    ) -> ClipScorer:
        """Scorer around a built ``CLIPModel`` + ``CLIPProcessor``; casts the model to ``dtype``.

        ``use_logit_scale=False`` scores plain cosine similarity (HPSv2's formula).
        """
        scorer = cls.__new__(cls)
        scorer._setup(model, processor, dtype, device, use_logit_scale)
        return scorer

    def _setup(self, model: Any, processor: Any, dtype: str | torch.dtype, device: str, use_logit_scale: bool) -> None:
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, device)
        self.use_logit_scale = use_logit_scale
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        ip = processor.image_processor
        self.shortest_edge = _get(ip.size, "shortest_edge")
        self.resize_hw = (_get(ip.size, "height"), _get(ip.size, "width"))
        self.do_resize = getattr(ip, "do_resize", True)
        self.do_center_crop = getattr(ip, "do_center_crop", True)
        self.crop_hw = (_get(ip.crop_size, "height"), _get(ip.crop_size, "width"))
        self.do_normalize = getattr(ip, "do_normalize", True)
        self.mean = torch.tensor(ip.image_mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` in [0, 1] -> normalised float32 pixel_values ``[N, 3, h, w]``."""
        x = images.to(device=self.device, dtype=torch.float32)
        h, w = x.shape[-2:]
        if self.do_resize:
            if self.shortest_edge is not None:
                s = int(self.shortest_edge)
                # Same rounding as transformers' get_resize_output_image_size.
                out = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
            elif None not in self.resize_hw:
                out = (int(self.resize_hw[0]), int(self.resize_hw[1]))
            else:
                out = (h, w)
            if out != (h, w):
                x = F.interpolate(x, size=out, mode="bicubic", antialias=True, align_corners=False)
                x = x.clamp(0.0, 1.0)  # the processor works on uint8, which clips overshoot
        if self.do_center_crop and None not in self.crop_hw:
            ch, cw = int(self.crop_hw[0]), int(self.crop_hw[1])
            h, w = x.shape[-2:]
            if h < ch or w < cw:  # zero-pad like the processor's center_crop
                ph, pw = max(ch - h, 0), max(cw - w, 0)
                x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
                h, w = x.shape[-2:]
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top : top + ch, left : left + cw]
        if self.do_normalize:
            x = (x - self.mean) / self.std
        return x

    @torch.no_grad()
    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``[B, D]`` (float32)."""
        tok = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        emb = self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        emb = getattr(emb, "pooler_output", emb)  # transformers may return a model output
        return F.normalize(emb.float(), dim=-1)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Unit-norm image embeddings ``[N, D]`` (float32) of ``[N, 3, H, W]`` in [0, 1]."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = []
        for chunk in images.split(batch_size):
            pix = self.preprocess(chunk).to(self.dtype)
            emb = self.model.get_image_features(pixel_values=pix)
            emb = getattr(emb, "pooler_output", emb)
            out.append(F.normalize(emb.float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def score_frames(self, frames: torch.Tensor, prompts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """``[B, F, 3, H, W]`` in [0, 1] + B prompts -> per-frame scores ``[B, F]`` (float32)."""
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be [B, F, 3, H, W], got {tuple(frames.shape)}")
        b, f = frames.shape[:2]
        if len(prompts) != b:
            raise ValueError(f"got {len(prompts)} prompts for {b} videos")
        text = self.embed_text(prompts)  # [B, D]
        img = self.embed_images(frames.reshape(b * f, *frames.shape[2:]), batch_size).view(b, f, -1)
        cos = torch.einsum("bfd,bd->bf", img, text)
        if self.use_logit_scale:
            cos = self.model.logit_scale.float().exp() * cos
        return cos.to(frames.device)


def get_scorer(model_path: str, dtype: str = "auto", device: str = "cpu") -> ClipScorer:
    """Cached :class:`ClipScorer` per ``(path, dtype, device)``."""
    path, dt = os.path.abspath(os.fspath(model_path)), resolve_dtype(dtype, device)
    return cached_scorer(
        "clip", (path, str(dt), str(torch.device(device))), lambda: ClipScorer(path, dtype=dt, device=device)
    )


@register_reward(
    "clip",
    per_frame=True,
    required_args={
        "model_path": "a local CLIPModel folder, e.g. PickScore",
    },
)
def clip(
    frames: torch.Tensor,
    prompts: Sequence[str],
    model_path: str | None = None,
    dtype: str = "auto",
    batch_size: int = 32,
) -> torch.Tensor:
    """Per-frame CLIP/PickScore reward ``[B, F]``; runs on the frames' device (bf16 on GPU by default)."""
    if not model_path:
        raise ValueError("reward 'clip' needs args.model_path (a local CLIPModel checkpoint folder)")
    scorer = get_scorer(model_path, dtype=dtype, device=str(frames.device))
    return scorer.score_frames(frames, prompts, batch_size=batch_size)
