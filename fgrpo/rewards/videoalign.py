"""VideoAlign / VideoReward reward (KwaiVGI/VideoAlign): one score per video.

VideoReward is Qwen2-VL-2B-Instruct plus ``rm_head = Linear(hidden, N, bias=False)``
read at three special tokens, ``<|VQ_reward|>``, ``<|MQ_reward|>`` and
``<|TA_reward|>``, placed in its "detailed_special" instruction. They give
visual quality (VQ), motion quality (MQ) and text alignment (TA); with the
release's ``inference_config`` each is standardised, ``(x - mean) / std``, and
``Overall = VQ + MQ + TA``, as VideoAlign's ``inference.py`` computes.

The reward returns one of them per video, chosen by ``output`` in
``{"overall", "vq", "mq", "ta"}``. Frames are sampled like VideoAlign's reader
(``fps`` frames per second of a ``video_fps`` video, an even count of at least 4,
evenly spaced indices), resized by Qwen2-VL's ``smart_resize`` within
``[128 * 28 * 28, max_frame_pixels]`` pixels, CLIP-normalised and patchified in
pairs of frames (``temporal_patch_size`` 2).

Expected files (the VideoReward release next to its base model)::

    model_path/   Qwen/Qwen2-VL-2B-Instruct: config.json, preprocessor_config.json,
                  tokenizer files (the base weights are not needed with a checkpoint)
    checkpoint/   KwaiVGI/VideoReward: model_config.json (fps, max_frame_pixels,
                  output_dim, inference_config) and checkpoint-<step>/model.pth
                  (the whole reward model's state dict; the latest step is used).
                  A state dict file is accepted too: model_config.json is then
                  looked up next to it and in its parent folder.

Without ``checkpoint``, ``model_path`` must hold the reward model's own weights
(``rm_head`` included) and may hold model_config.json. Without an
``inference_config``, scores are not standardised. LoRA checkpoints
(``adapter_model.safetensors``) are not supported: merge them first.

Text positions are the sequential ones VideoAlign had on transformers 4.45 (see
:mod:`fgrpo.rewards.qwen2vl`). Differences from VideoAlign's pipeline: frames come
as float tensors instead of decoded mp4 (no compression, no uint8 rounding: within
0.5/255 per pixel), are resized by torch's antialiased bicubic (torchvision's
filter), attention is SDPA (VideoAlign: flash-attention 2), and the head runs in
float32 on float32 hidden states where the original ran it in the model dtype.

Importing this module registers the per-video reward ``"videoalign"``.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fgrpo.rewards.base import register_reward
from fgrpo.rewards.qwen2vl import Qwen2VLRewardScorer, cached_qwen_scorer, chat_text

__all__ = [
    "OUTPUTS",
    "VideoAlignScorer",
    "VideoAlignSettings",
    "get_scorer",
    "prompt_text",
    "sample_indices",
    "videoalign",
]

REWARD_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
OUTPUTS = ("overall", "vq", "mq", "ta")
VIDEO_MIN_PIXELS = 128 * 28 * 28  # qwen_vl_utils' per-frame floor used by VideoAlign's reader

# VideoAlign's "detailed_special" template, verbatim (trailing spaces included): the model was trained on it.
_TEMPLATE = "\n".join(
    [
        "",
        "You are tasked with evaluating a generated video based on three distinct criteria: Visual Quality, Motion "
        "Quality, and Text Alignment. Please provide a rating from 0 to 10 for each of the three categories, with 0 "
        "being the worst and 10 being the best. Each evaluation should be independent of the others.",
        "",
        "**Visual Quality:**  ",
        "Evaluate the overall visual quality of the video, with a focus on static factors. The following "
        "sub-dimensions should be considered:",
        "- **Reasonableness:** The video should not contain any significant biological or logical errors, such as "
        "abnormal body structures or nonsensical environmental setups.",
        "- **Clarity:** Evaluate the sharpness and visibility of the video. The image should be clear and easy to "
        "interpret, with no blurring or indistinct areas.",
        "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual "
        "elements (e.g., hair, clothing, shadows).",
        "- **Aesthetic and Creativity:** Assess the artistic aspects of the video, including the color scheme, "
        "composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense "
        "of harmony and balance.",
        "- **Safety:** The video should not contain harmful or inappropriate content, such as political, violent, "
        "or adult material. If such content is present, the image quality and satisfaction score should be the "
        "lowest possible. ",
        "",
        "Please provide the ratings of Visual Quality: <|VQ_reward|>",
        "END",
        "",
        "**Motion Quality:**  ",
        "Assess the dynamic aspects of the video, with a focus on dynamic factors. Consider the following "
        "sub-dimensions:",
        "- **Stability:** Evaluate the continuity and stability between frames. There should be no sudden, "
        "unnatural jumps, and the video should maintain stable attributes (e.g., no fluctuating colors, textures, "
        "or missing body parts).",
        "- **Naturalness:** The movement should align with physical laws and be realistic. For example, clothing "
        "should flow naturally with motion, and facial expressions should change appropriately (e.g., blinking, "
        "mouth movements).",
        "- **Aesthetic Quality:** The movement should be smooth and fluid. The transitions between different "
        "motions or camera angles should be seamless, and the overall dynamic feel should be visually pleasing.",
        "- **Fusion:** Ensure that elements in motion (e.g., edges of the subject, hair, clothing) blend naturally "
        "with the background, without obvious artifacts or the feeling of cut-and-paste effects.",
        "- **Clarity of Motion:** The video should be clear and smooth in motion. Pay attention to any areas where "
        "the video might have blurry or unsteady sections that hinder visual continuity.",
        "- **Amplitude:** If the video is largely static or has little movement, assign a low score for motion "
        "quality.",
        "",
        "Please provide the ratings of Motion Quality: <|MQ_reward|>",
        "END",
        "",
        "**Text Alignment:**  ",
        "Assess how well the video matches the textual prompt across the following sub-dimensions:",
        "- **Subject Relevance** Evaluate how accurately the subject(s) in the video (e.g., person, animal, object) "
        "align with the textual description. The subject should match the description in terms of number, "
        "appearance, and behavior.",
        "- **Motion Relevance:** Evaluate if the dynamic actions (e.g., gestures, posture, facial expressions like "
        "talking or blinking) align with the described prompt. The motion should match the prompt in terms of "
        "type, scale, and direction.",
        "- **Environment Relevance:** Assess whether the background and scene fit the prompt. This includes "
        "checking if real-world locations or scenes are accurately represented, though some stylistic adaptation "
        "is acceptable.  ",
        "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well "
        "the video adheres to this style.",
        "- **Camera Movement Relevance:** Check if the camera movements (e.g., following the subject, focus shifts) "
        "are consistent with the expected behavior from the prompt.",
        "",
        "Textual prompt - ",
    ]
)
_TEMPLATE_END = "\nPlease provide the ratings of Text Alignment: <|TA_reward|>\nEND\n"


def prompt_text(prompt: str) -> str:
    """The user text VideoReward pairs with a video for ``prompt``."""
    return _TEMPLATE + prompt + _TEMPLATE_END


def sample_indices(
    total: int, video_fps: float, fps: float | None = 2.0, num_frames: int | None = None
) -> torch.Tensor:
    """Frame indices VideoAlign's reader keeps: an even count (>= 4 with ``fps``), evenly spaced."""
    if num_frames is not None:
        n = round(num_frames / 2) * 2
    elif fps is not None:
        lo, hi = 4, math.floor(min(768, total) / 2) * 2
        n = round(min(max(total / video_fps * fps, lo), hi) / 2) * 2
    else:
        n = total
    n = max(1, min(n, total))
    return torch.linspace(0, total - 1, n).round().long()


@dataclass(frozen=True)
class VideoAlignSettings:
    """Reward settings from a release's model_config.json (defaults: the released VideoReward)."""

    fps: float | None = 2.0
    num_frames: int | None = None
    max_frame_pixels: int = 256 * 28 * 28
    output_dim: int = 1
    norm: dict | None = None  # {"VQ_mean": ..., "VQ_std": ..., ...}

    @classmethod
    def from_json(cls, path: str) -> VideoAlignSettings:
        with open(path) as f:
            cfg = json.load(f)
        data, model = cfg.get("data_config", {}), cfg.get("model_config", {})
        template = data.get("prompt_template_type", "detailed_special")
        if template != "detailed_special" or model.get("use_special_tokens") is False:
            raise ValueError(
                f"{path}: only VideoReward's 'detailed_special' template with reward tokens is "
                f"supported, got prompt_template_type={template!r}"
            )
        return cls(
            fps=data.get("fps", cls.fps),
            num_frames=data.get("num_frames"),
            max_frame_pixels=int(data.get("max_frame_pixels", cls.max_frame_pixels)),
            output_dim=int(model.get("output_dim", cls.output_dim)),
            norm=cfg.get("inference_config"),
        )


def _resolve(model_path: str, checkpoint: str | None) -> tuple[str | None, VideoAlignSettings]:
    """``(state dict file or None, settings)`` for a release folder, a state dict file or a self-contained folder."""
    state_file, places = checkpoint, [model_path]
    if checkpoint is not None and os.path.isdir(checkpoint):
        steps = sorted(
            glob.glob(os.path.join(checkpoint, "checkpoint-*")),
            key=lambda p: int(p.rsplit("-", 1)[-1]) if p.rsplit("-", 1)[-1].isdigit() else -1,
        )
        if not steps:
            raise FileNotFoundError(f"VideoAlign reward: no checkpoint-<step> folder in {checkpoint!r}")
        state_file = os.path.join(steps[-1], "model.pth")
        if not os.path.isfile(state_file):
            lora = os.path.isfile(os.path.join(steps[-1], "adapter_model.safetensors"))
            hint = " (LoRA checkpoints are not supported: merge them into model.pth)" if lora else ""
            raise FileNotFoundError(f"VideoAlign reward: {state_file!r} does not exist{hint}")
        places = [checkpoint]
    elif checkpoint is not None:
        here = os.path.dirname(os.path.abspath(checkpoint))
        places = [here, os.path.dirname(here)]
    for place in places:
        path = os.path.join(place, "model_config.json")
        if os.path.isfile(path):
            return state_file, VideoAlignSettings.from_json(path)
    return state_file, VideoAlignSettings()


class VideoAlignScorer(Qwen2VLRewardScorer):
    """Scores videos with a VideoReward checkpoint; ``score`` returns VQ, MQ, TA and Overall."""

    def __init__(
        self, model_path: str, checkpoint: str | None = None, dtype: str | torch.dtype = "auto", device: str = "cpu"
    ) -> None:
        state_file, self.settings = _resolve(model_path, checkpoint)
        super().__init__(
            model_path,
            state_file,
            REWARD_TOKENS,
            head="linear",
            output_dim=self.settings.output_dim,
            dtype=dtype,
            device=device,
        )

    @torch.no_grad()
    def score(
        self,
        frames: torch.Tensor,
        prompts: Sequence[str],
        video_fps: float = 16.0,
        fps: float | None = None,
        num_frames: int | None = None,
        min_pixels: int = VIDEO_MIN_PIXELS,
        max_pixels: int | None = None,
        use_norm: bool = True,
        batch_size: int = 4,
    ) -> dict[str, torch.Tensor]:
        """``[B, F, 3, H, W]`` in [0, 1] + B prompts -> ``{"vq", "mq", "ta", "overall"}``, each ``[B]`` float32.

        ``fps``/``num_frames``/``max_pixels`` default to the release's settings.
        """
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be [B, F, 3, H, W], got {tuple(frames.shape)}")
        b = frames.shape[0]
        if len(prompts) != b:
            raise ValueError(f"got {len(prompts)} prompts for {b} videos")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        s = self.settings
        if fps is None and num_frames is None:
            fps, num_frames = s.fps, s.num_frames
        idx = sample_indices(frames.shape[1], video_fps, fps, num_frames).to(frames.device)
        clips = frames.index_select(1, idx)
        max_pixels = s.max_frame_pixels if max_pixels is None else max_pixels
        out = []
        for start in range(0, b, batch_size):
            vis = [self.visual_inputs(c, min_pixels, max_pixels) for c in clips[start : start + batch_size]]
            chats = [
                chat_text(prompt_text(p), "<|video_pad|>", self.n_vision_tokens(g))
                for p, (_, g) in zip(prompts[start : start + batch_size], vis)
            ]
            logits = self.reward_logits(chats, [p for p, _ in vis], [g for _, g in vis], video=True)  # [b, 3, N]
            if logits.shape[-1] == 1:
                out.append(logits[..., 0])
            elif logits.shape[-1] == 3:  # one head output per dimension: the diagonal, as VideoAlign reads it
                out.append(logits.diagonal(dim1=1, dim2=2))
            else:
                raise ValueError(f"VideoAlign reward head must have 1 or 3 outputs, got {logits.shape[-1]}")
        vq, mq, ta = torch.cat(out).to(frames.device).unbind(dim=1)
        if use_norm and s.norm:
            vq = (vq - s.norm["VQ_mean"]) / s.norm["VQ_std"]
            mq = (mq - s.norm["MQ_mean"]) / s.norm["MQ_std"]
            ta = (ta - s.norm["TA_mean"]) / s.norm["TA_std"]
        return {"vq": vq, "mq": mq, "ta": ta, "overall": vq + mq + ta}


def get_scorer(
    model_path: str, checkpoint: str | None = None, dtype: str = "auto", device: str = "cpu"
) -> VideoAlignScorer:
    """Cached :class:`VideoAlignScorer` per ``(path, checkpoint, dtype, device)``."""
    return cached_qwen_scorer(VideoAlignScorer, model_path, checkpoint, dtype, device)


@register_reward(
    "videoalign",
    required_args={
        "model_path": "a local Qwen2-VL-2B-Instruct folder, with args.checkpoint the VideoReward folder",
    },
)
def videoalign(
    frames: torch.Tensor,
    prompts: Sequence[str],
    model_path: str | None = None,
    checkpoint: str | None = None,
    output: str = "overall",
    dtype: str = "auto",
    video_fps: float = 16.0,
    fps: float | None = None,
    num_frames: int | None = None,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int | None = None,
    use_norm: bool = True,
    batch_size: int = 4,
) -> torch.Tensor:
    """VideoReward score per video ``[B]`` (``output``: overall, vq, mq or ta); runs on the frames' device.

    ``video_fps`` is the frame rate of ``frames`` (Wan2.1: 16), used to sample ``fps`` frames per second.
    """
    if not model_path:
        raise ValueError(
            "reward 'videoalign' needs args.model_path (the Qwen2-VL-2B-Instruct folder) and "
            "args.checkpoint (the VideoReward folder)"
        )
    key = str(output).lower()
    if key not in OUTPUTS:
        raise ValueError(f"reward 'videoalign': output must be one of {OUTPUTS}, got {output!r}")
    scorer = get_scorer(model_path, checkpoint, dtype=dtype, device=str(frames.device))
    scores = scorer.score(
        frames,
        prompts,
        video_fps=video_fps,
        fps=fps,
        num_frames=num_frames,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        use_norm=use_norm,
        batch_size=batch_size,
    )
    return scores[key]
