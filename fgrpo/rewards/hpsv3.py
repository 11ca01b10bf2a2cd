"""HPSv3 reward (MizzenAI/HPSv3, the Flash-GRPO paper's reward): per-frame human preference.

HPSv3 is Qwen2-VL-7B-Instruct plus an MLP head (``hidden -> 1024 -> 16 -> 2``)
read at a ``<|Reward|>`` token appended to an evaluation instruction. The head
predicts a preference distribution ``(mu, sigma)``; the score of a frame is
``mu`` (``logits[..., 0]``), as HPSv3's own inference uses.

The ``hpsv3`` PyPI package pins transformers 4.45 and deepspeed, so this is an
independent implementation on transformers directly (see
:mod:`fgrpo.rewards.qwen2vl`). Each frame is scored as one image: resized by
Qwen2-VL's ``smart_resize`` to ~``256 * 28 * 28`` pixels (HPSv3's min = max
budget), CLIP-normalised, patchified and paired with HPSv3's instruction.

Expected files::

    model_path/   Qwen/Qwen2-VL-7B-Instruct: config.json, preprocessor_config.json,
                  tokenizer files (the base weights are not needed with a checkpoint)
    checkpoint    HPSv3.safetensors: the state dict of the whole reward model

``<|Reward|>`` is added to the tokenizer as HPSv3's training did, and the text
positions are the sequential ones HPSv3 had on transformers 4.45. Differences from
HPSv3's pipeline: frames are resized in torch (antialiased bicubic, the same
filter as PIL's) from float frames instead of PIL on uint8 pictures (within about
1/255 per pixel), and attention is transformers 5's SDPA (HPSv3: flash-attention 2).

Importing this module registers the per-frame reward ``"hpsv3"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fgrpo.rewards.base import register_reward
from fgrpo.rewards.qwen2vl import Qwen2VLRewardScorer, cached_qwen_scorer, chat_text

__all__ = ["HPSv3Scorer", "PIXELS", "get_scorer", "hpsv3", "instruction"]

PIXELS = 256 * 28 * 28  # HPSv3 resizes every image to this many pixels (min = max)
REWARD_TOKEN = "<|Reward|>"

# HPSv3's instruction, verbatim (trailing spaces included): the model was trained on this exact text.
_INSTRUCTION = "\n".join(
    [
        "",
        "You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a "
        "overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the "
        "worst and 10 being the best. ",
        "",
        "**Visual Quality:**  ",
        "Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:",
        "- **Reasonableness:** The image should not contain any significant biological or logical errors, such as "
        "abnormal body structures or nonsensical environmental setups.",
        "- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to "
        "interpret, with no blurring or indistinct areas.",
        "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual "
        "elements (e.g., hair, clothing, shadows).",
        "- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, "
        "composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense "
        "of harmony and balance.",
        "- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, "
        "or adult material. If such content is present, the image quality and satisfaction score should be the "
        "lowest possible. ",
        "",
        "**Text Alignment:**  ",
        "Assess how well the image matches the textual prompt across the following sub-dimensions:",
        "- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) "
        "align with the textual description. The subject should match the description in terms of number, "
        "appearance, and behavior.",
        "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well "
        "the image adheres to this style.",
        "- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the "
        "image logically fit the scenario described in the prompt. The environment should support and enhance the "
        "subject without contradictions.",
        "- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, "
        "accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be "
        "acceptable, but critical attributes should be preserved.",
        "- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in "
        "the image. The generated content should not introduce elements that conflict with or distort the original "
        "description.",
        "Textual prompt - ",
    ]
)
_SUFFIX = f"\n\n\n\nPlease provide the overall ratings of this image: {REWARD_TOKEN}\n\nEND\n"


def instruction(prompt: str) -> str:
    """The user text HPSv3 pairs with an image for ``prompt``."""
    return _INSTRUCTION + prompt + _SUFFIX


class HPSv3Scorer(Qwen2VLRewardScorer):
    """Scores frames with an HPSv3 checkpoint; ``score_frames`` returns ``mu`` per frame."""

    def __init__(
        self, model_path: str, checkpoint: str | None, dtype: str | torch.dtype = "auto", device: str = "cpu"
    ) -> None:
        super().__init__(
            model_path, checkpoint, [REWARD_TOKEN], head="ranknet", output_dim=2, dtype=dtype, device=device
        )

    @torch.no_grad()
    def score_frames(
        self,
        frames: torch.Tensor,
        prompts: Sequence[str],
        batch_size: int = 8,
        min_pixels: int = PIXELS,
        max_pixels: int = PIXELS,
    ) -> torch.Tensor:
        """``[B, F, 3, H, W]`` in [0, 1] + B prompts -> ``mu`` per frame ``[B, F]`` (float32)."""
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be [B, F, 3, H, W], got {tuple(frames.shape)}")
        b, f = frames.shape[:2]
        if len(prompts) != b:
            raise ValueError(f"got {len(prompts)} prompts for {b} videos")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        flat = frames.reshape(b * f, 1, *frames.shape[2:])
        texts = [instruction(p) for p in prompts for _ in range(f)]
        out = []
        for s in range(0, b * f, batch_size):
            vis = [self.visual_inputs(x, min_pixels, max_pixels) for x in flat[s : s + batch_size]]
            chats = [
                chat_text(t, "<|image_pad|>", self.n_vision_tokens(g))
                for t, (_, g) in zip(texts[s : s + batch_size], vis)
            ]
            logits = self.reward_logits(chats, [p for p, _ in vis], [g for _, g in vis], video=False)
            out.append(logits[:, 0, 0])  # mu of the (mu, sigma) head at <|Reward|>
        return torch.cat(out).view(b, f).to(frames.device)


def get_scorer(model_path: str, checkpoint: str | None = None, dtype: str = "auto", device: str = "cpu") -> HPSv3Scorer:
    """Cached :class:`HPSv3Scorer` per ``(path, checkpoint, dtype, device)``."""
    return cached_qwen_scorer(HPSv3Scorer, model_path, checkpoint, dtype, device)


@register_reward(
    "hpsv3",
    per_frame=True,
    required_args={
        "model_path": "a local Qwen2-VL-7B-Instruct folder",
        "checkpoint": "the HPSv3.safetensors file",
    },
)
def hpsv3(
    frames: torch.Tensor,
    prompts: Sequence[str],
    model_path: str | None = None,
    checkpoint: str | None = None,
    dtype: str = "auto",
    batch_size: int = 8,
    min_pixels: int = PIXELS,
    max_pixels: int = PIXELS,
) -> torch.Tensor:
    """Per-frame HPSv3 ``mu`` ``[B, F]``; runs on the frames' device."""
    if not model_path:
        raise ValueError(
            "reward 'hpsv3' needs args.model_path (the Qwen2-VL-7B-Instruct folder) and "
            "args.checkpoint (HPSv3.safetensors)"
        )
    scorer = get_scorer(model_path, checkpoint, dtype=dtype, device=str(frames.device))
    return scorer.score_frames(frames, prompts, batch_size=batch_size, min_pixels=min_pixels, max_pixels=max_pixels)
