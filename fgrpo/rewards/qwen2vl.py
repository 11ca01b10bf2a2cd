"""Shared machinery for Qwen2-VL reward models (HPSv3, VideoAlign/VideoReward).

Both rewards are a Qwen2-VL backbone plus a small ``rm_head`` applied to the
last hidden state at special reward tokens (``<|Reward|>``, ``<|VQ_reward|>``,
...) that the original code adds to the tokenizer (and the embeddings) before
training. Everything here uses transformers directly:

* ``Qwen2VLRewardModel`` (:func:`reward_model_class`): ``Qwen2VLModel`` +
  ``rm_head`` (no ``lm_head``, which a reward never needs). The backbone runs in
  the requested dtype, the head in float32 on float32 hidden states, as HPSv3 does.
* Loading (:func:`load_reward_model`) from a base Qwen2-VL folder
  (``config.json`` + ``preprocessor_config.json`` + tokenizer files) and either a
  ``checkpoint`` state dict of the whole reward model (``.safetensors`` or a
  ``torch.save`` file, transformers 4.x key layout accepted) or, without one,
  the folder's own weights, which must then include ``rm_head`` (a folder written
  by ``Qwen2VLRewardModel.save_pretrained`` plus the tokenizer).
* Torch-only preprocessing mirroring ``qwen_vl_utils`` + the Qwen2-VL processor:
  ``smart_resize`` to multiples of ``patch * merge`` (28) within a pixel budget,
  antialiased bicubic resize, CLIP mean/std normalisation and patchify into the
  processor's flat ``[tokens, C * temporal_patch * patch * patch]`` layout.
* Prompts in the Qwen2-VL-Instruct chat format with the vision pad token
  repeated once per merged patch, exactly as the processor expands it.

Positions: the originals (on transformers 4.45) call the text model without
``position_ids``, which there means sequential positions ``0..L-1`` on all three
M-RoPE sections (the 3D vision positions were only built for generation). The
checkpoints were trained and evaluated that way, so the same positions are
passed here; transformers 5's default 3D positions would change the scores.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from fgrpo.rewards.scorers import cached_scorer, resolve_dtype

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLPreTrainedModel

__all__ = [
    "Qwen2VLRewardScorer",
    "cached_qwen_scorer",
    "chat_text",
    "load_reward_model",
    "patchify",
    "resize_frames",
    "reward_model_class",
    "smart_resize",
]


# ----------------------------------------------------------------------------- preprocessing


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280
) -> tuple[int, int]:
    """Qwen2-VL's target size: multiples of ``factor``, area within [min, max], aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {height}x{width} frames exceeds Qwen2-VL's limit of 200")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize of ``[N, 3, H, W]`` in [0, 1] (PIL/torchvision's filter)."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    out = F.interpolate(frames.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(0.0, 1.0)  # the originals resize uint8 pictures, which clips overshoot


def patchify(frames: torch.Tensor, patch: int, merge: int, temporal: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Normalised ``[T, C, H, W]`` -> ``([t*h*w, C*temporal*patch*patch], (t, h, w))`` in the processor's order.

    A single image (T = 1) is repeated to ``temporal`` frames and a video is padded
    with its last frame to a multiple of ``temporal``, as the processors do.
    """
    n, c, hh, ww = frames.shape
    if n % temporal:
        frames = torch.cat([frames, frames[-1:].expand(temporal - n % temporal, -1, -1, -1)])
    gt, gh, gw = frames.shape[0] // temporal, hh // patch, ww // patch
    x = frames.reshape(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    # -> (t, h/m, w/m, m, m, C, temporal, patch, patch): merged 2x2 blocks are contiguous tokens.
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * temporal * patch * patch), (gt, gh, gw)


def chat_text(user_text: str, vision_token: str, n_vision_tokens: int) -> str:
    """One user turn ``[vision, text]`` in the Qwen2-VL-Instruct chat template, pads expanded."""
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|>{vision_token * n_vision_tokens}<|vision_end|>{user_text}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# ----------------------------------------------------------------------------- model


@cache
def reward_model_class() -> type:
    """The ``Qwen2VLRewardModel`` class, built on first use so importing this module skips transformers."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel, Qwen2VLPreTrainedModel

    class Qwen2VLRewardModel(Qwen2VLPreTrainedModel):
        """Qwen2-VL backbone + reward head; ``forward`` returns float32 head outputs ``[B, L, N]``.

        ``head="linear"``: ``Linear(hidden, N, bias=False)`` (VideoAlign);
        ``head="ranknet"``: HPSv3's MLP ``hidden -> 1024 -> 16 -> N`` with ReLUs.
        """

        _keep_in_fp32_modules_strict = ["rm_head"]

        def __init__(self, config, head: str = "linear", output_dim: int = 1) -> None:
            super().__init__(config)
            self.model = Qwen2VLModel(config)
            hidden = config.text_config.hidden_size
            if head == "linear":
                self.rm_head = nn.Linear(hidden, output_dim, bias=False)
            elif head == "ranknet":  # module indices match HPSv3's state dict (rm_head.0/.3/.5)
                self.rm_head = nn.Sequential(
                    nn.Linear(hidden, 1024),
                    nn.ReLU(),
                    nn.Dropout(0.05),
                    nn.Linear(1024, 16),
                    nn.ReLU(),
                    nn.Linear(16, output_dim),
                )
            else:
                raise ValueError(f"unknown reward head {head!r}; use 'linear' or 'ranknet'")
            self.post_init()

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            grid_thw: torch.Tensor,
            pixel_values: torch.Tensor | None = None,
            pixel_values_videos: torch.Tensor | None = None,
        ) -> torch.Tensor:
            """One image (``pixel_values``) or one video (``pixel_values_videos``) per row; grid is its ``thw``."""
            if pixel_values_videos is not None:
                vision = {"pixel_values_videos": pixel_values_videos, "video_grid_thw": grid_thw}
            else:
                vision = {"pixel_values": pixel_values, "image_grid_thw": grid_thw}
            b, length = input_ids.shape  # sequential positions, as in training (module docstring)
            position_ids = torch.arange(length, device=input_ids.device).expand(3, b, length)
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **vision
            )
            return self.rm_head(out.last_hidden_state.float())

    return Qwen2VLRewardModel


# transformers 4.x names (and what 5.x writes for Qwen2-VL) -> this module's: visual.* / model.* -> model.visual.* /
# model.language_model.*.
LEGACY_KEYS = {r"^visual\.": "model.visual.", r"^model\.(?!language_model\.|visual\.)": "model.language_model."}


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A whole-model state dict, renamed from transformers 4.x keys and without ``lm_head``."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    nested = state.get("model")
    if isinstance(nested, dict):  # {"model": state_dict} as HPSv3's loader accepts
        state = nested
    out = {}
    for key, value in state.items():
        if not key.startswith("lm_head."):
            for pattern, repl in LEGACY_KEYS.items():
                key = re.sub(pattern, repl, key)
            out[key] = value
    return out


def load_reward_model(
    model_path: str,
    checkpoint: str | None,
    reward_tokens: Sequence[str],
    head: str,
    output_dim: int,
    dtype: str | torch.dtype = "auto",
    device: str = "cpu",
) -> tuple[Qwen2VLPreTrainedModel, PreTrainedTokenizerBase, list[int]]:
    """Load ``(model, tokenizer, reward_token_ids)``; the reward tokens are added to the tokenizer if absent."""
    from transformers import AutoConfig, AutoTokenizer

    if not os.path.isdir(model_path):
        raise FileNotFoundError(f"Qwen2-VL reward: model folder {model_path!r} does not exist")
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"Qwen2-VL reward: checkpoint file {checkpoint!r} does not exist")
    try:
        config = AutoConfig.from_pretrained(model_path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    except OSError as exc:
        raise FileNotFoundError(f"Qwen2-VL reward: cannot load config/tokenizer from {model_path!r}: {exc}") from exc
    missing = [t for t in reward_tokens if t not in tokenizer.get_vocab()]
    if missing:  # as the original training scripts did, before resizing the embeddings
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids(list(reward_tokens))
    if checkpoint is not None:
        state = _read_state_dict(checkpoint)
        embed = state.get("model.language_model.embed_tokens.weight")
        if embed is None:
            raise ValueError(f"Qwen2-VL reward: {checkpoint!r} is not a whole Qwen2-VL reward model state dict")
        config.text_config.vocab_size = embed.shape[0]  # the checkpoints resized embeddings to len(tokenizer)
        source = {"pretrained_model_name_or_path": None, "state_dict": state}
    else:
        source = {"pretrained_model_name_or_path": model_path, "local_files_only": True, "key_mapping": LEGACY_KEYS}
    model, info = reward_model_class().from_pretrained(
        **source,
        config=config,
        dtype=resolve_dtype(dtype, device),
        head=head,
        output_dim=output_dim,
        output_loading_info=True,
    )
    if info["missing_keys"]:  # from_pretrained would leave them randomly initialised
        hint = "" if checkpoint else "; pass checkpoint=<reward model state dict> on top of this base folder"
        raise ValueError(
            f"Qwen2-VL reward: {checkpoint or model_path!r} lacks weights {sorted(info['missing_keys'])[:4]}{hint}"
        )
    rows = model.model.get_input_embeddings().weight.shape[0]
    if max(ids) >= rows:
        raise ValueError(
            f"reward tokens {list(reward_tokens)} got ids {ids} but the embeddings have {rows} rows: "
            f"is {model_path!r} the base model this checkpoint was trained from?"
        )
    model.to(device).eval().requires_grad_(False)
    return model, tokenizer, ids


# ----------------------------------------------------------------------------- scorer


class Qwen2VLRewardScorer:
    """Loads a reward model once and turns frames + texts into head outputs at the reward tokens."""

    def __init__(
        self,
        model_path: str,
        checkpoint: str | None,
        reward_tokens: Sequence[str],
        head: str,
        output_dim: int,
        dtype: str | torch.dtype = "auto",
        device: str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model, self.tokenizer, self.reward_ids = load_reward_model(
            model_path, checkpoint, reward_tokens, head, output_dim, dtype, str(self.device)
        )
        # cast: a Qwen2VLVisionConfig, whose annotations also allow a dict (before init) and list sizes
        vc = cast(Any, self.model.config.vision_config)
        self.patch, self.merge, self.temporal = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
        from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # Qwen2-VL's defaults when the folder has none
        pre = os.path.join(model_path, "preprocessor_config.json")
        if os.path.isfile(pre):
            with open(pre) as f:
                cfg = json.load(f)
            mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.pad_id = cast(int, pad_id)  # one token's id

    def visual_inputs(
        self, frames: torch.Tensor, min_pixels: int, max_pixels: int
    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """``[T, 3, H, W]`` in [0, 1] (T = 1 for an image) -> float32 patches and ``(t, h, w)`` grid."""
        size = smart_resize(frames.shape[-2], frames.shape[-1], self.patch * self.merge, min_pixels, max_pixels)
        x = resize_frames(frames.to(self.device, torch.float32), size)
        return patchify((x - self.mean) / self.std, self.patch, self.merge, self.temporal)

    def n_vision_tokens(self, grid: tuple[int, int, int]) -> int:
        return grid[0] * grid[1] * grid[2] // self.merge**2

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise chat texts into right-padded ``input_ids`` and ``attention_mask``."""
        rows = self.tokenizer(list(texts))["input_ids"]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):  # right padding: the reward tokens never see a pad
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def reward_logits(
        self, texts: Sequence[str], patches: Sequence[torch.Tensor], grids: Sequence[tuple[int, int, int]], video: bool
    ) -> torch.Tensor:
        """Head outputs at the reward tokens, ``[B, len(reward_tokens), N]`` float32.

        ``texts`` are full chat texts (see :func:`chat_text`) with one vision block each.
        """
        ids, mask = self.encode(texts)
        grid = torch.tensor(grids, dtype=torch.long, device=self.device)
        pix = torch.cat(list(patches)).to(self.device)
        out = self.model(ids, mask, grid, **({"pixel_values_videos": pix} if video else {"pixel_values": pix}))
        hit = torch.isin(ids, torch.tensor(self.reward_ids, device=self.device))
        k = len(self.reward_ids)
        if not bool((hit.sum(dim=1) == k).all()):
            raise ValueError(
                f"each prompt must hold the {k} reward token(s) exactly once; got counts "
                f"{hit.sum(dim=1).tolist()} (does a prompt contain a reward token?)"
            )
        return out[hit].view(len(texts), k, -1)


def cached_qwen_scorer(cls: type, model_path: str, checkpoint: str | None, dtype: str, device: str):
    """One ``cls`` scorer per (path, checkpoint, dtype, device) in this process."""
    path, ckpt = os.path.abspath(os.fspath(model_path)), os.path.abspath(checkpoint) if checkpoint else None
    dt = resolve_dtype(dtype, device)
    return cached_scorer(
        cls.__name__, (path, ckpt, str(dt), str(torch.device(device))), lambda: cls(path, ckpt, dtype=dt, device=device)
    )
