"""HPSv2 reward (Human Preference Score v2): per-frame preference score.

HPSv2 (github.com/tgxs002/HPSv2) is an open_clip ViT-H-14 fine-tuned on human
preferences; ``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt`` hold its
open_clip state dict (possibly wrapped in ``{"state_dict": ...}``). The score
of a frame, as in HPSv2's ``img_score.py``, is the cosine similarity of the
image and prompt embeddings, without logit scale::

    normalize(encode_image(frame)) . normalize(encode_text(tokenize(prompt)))

open_clip is not used at run time: its package imports torchvision, and the
only torchvision builds available here are CUDA builds that do not load with
CPU torch. Instead the open_clip weights are converted on load, in memory, to
a transformers ``CLIPModel`` (same architecture: pre-LN ViT with a class token,
causal text transformer pooled at the EOT token) and scored by
:class:`fgrpo.rewards.clip.ClipScorer` with open_clip's ViT-H-14 val transform
(bicubic resize of the shortest side to 224, center crop 224, OpenAI
mean/std). The tokenizer is a local CLIP tokenizer folder (e.g. saved from
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``): the same BPE and 77-token context
as open_clip's SimpleTokenizer.

Importing this module registers the per-frame reward ``"hpsv2"``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any

import torch

from fgrpo.rewards.base import register_reward
from fgrpo.rewards.clip import ClipScorer
from fgrpo.rewards.scorers import cached_scorer, resolve_dtype

__all__ = [
    "convert_state_dict",
    "get_scorer",
    "hpsv2",
    "infer_config",
    "load_open_clip_state_dict",
    "open_clip_val_processor",
]

# open_clip's large vision towers (ViT-H/g/bigG/e-14) use 16 heads of these widths;
# the others, and every text tower, use head width 64. Heads cannot be read off weight shapes.
_VISION_HEAD_WIDTH = {1280: 80, 1408: 88, 1664: 104, 1792: 112}
# Keys that do not affect the embeddings: a constant causal-mask buffer, SigLIP-style logit bias.
_IGNORED_KEYS = {"attn_mask", "logit_bias"}


def _take(sd: dict[str, torch.Tensor], key: str, used: set[str] | None = None) -> torch.Tensor:
    """``sd[key]``, recorded in ``used``; a missing key is a ValueError naming it."""
    if key not in sd:
        raise ValueError(f"open_clip state dict has no key {key!r}")
    if used is not None:
        used.add(key)
    return sd[key]


def _num_layers(sd: dict[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"resblocks\.(\d+)\.")
    ids = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    if not ids:
        raise ValueError(f"open_clip state dict has no key {prefix + 'resblocks.0.attn.in_proj_weight'!r}")
    return max(ids) + 1


def infer_config(
    sd: dict[str, torch.Tensor],
    vision_heads: int | None = None,
    text_heads: int | None = None,
    bos_token_id: int = 49406,
    eos_token_id: int = 49407,
    pad_token_id: int = 49407,
) -> Any:
    """``CLIPConfig`` matching an open_clip ViT state dict (GELU, LayerNorm eps 1e-5).

    Heads default to open_clip's head widths (see ``_VISION_HEAD_WIDTH``); pass them
    for other geometries. Token ids default to the real CLIP vocabulary's.
    """
    from transformers import CLIPConfig

    conv = _take(sd, "visual.conv1.weight")  # [width, 3, patch, patch]
    v_width, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(_take(sd, "visual.positional_embedding").shape[0] - 1)
    tok = _take(sd, "token_embedding.weight")  # [vocab, width]
    t_width = tok.shape[1]
    if vision_heads is None:
        vision_heads = v_width // _VISION_HEAD_WIDTH.get(v_width, 64)
    if text_heads is None:
        text_heads = t_width // 64
    common = dict(hidden_act="gelu", layer_norm_eps=1e-5)
    return CLIPConfig(
        vision_config=dict(
            hidden_size=v_width,
            patch_size=patch,
            image_size=grid * patch,
            num_attention_heads=vision_heads,
            num_hidden_layers=_num_layers(sd, "visual.transformer."),
            intermediate_size=_take(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight").shape[0],
            **common,
        ),
        text_config=dict(
            hidden_size=t_width,
            vocab_size=tok.shape[0],
            num_attention_heads=text_heads,
            max_position_embeddings=_take(sd, "positional_embedding").shape[0],
            num_hidden_layers=_num_layers(sd, "transformer."),
            intermediate_size=_take(sd, "transformer.resblocks.0.mlp.c_fc.weight").shape[0],
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **common,
        ),
        projection_dim=_take(sd, "text_projection").shape[1],
    )


def _convert_blocks(sd: dict, src: str, dst: str, layers: int, used: set[str]) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(layers):
        s, d = f"{src}resblocks.{i}.", f"{dst}encoder.layers.{i}."
        # nn.MultiheadAttention packs q, k, v row-wise into in_proj.
        for kind in ("weight", "bias"):
            q, k, v = _take(sd, f"{s}attn.in_proj_{kind}", used).chunk(3, dim=0)
            out.update(
                {f"{d}self_attn.q_proj.{kind}": q, f"{d}self_attn.k_proj.{kind}": k, f"{d}self_attn.v_proj.{kind}": v}
            )
        for a, b in (
            ("attn.out_proj", "self_attn.out_proj"),
            ("ln_1", "layer_norm1"),
            ("ln_2", "layer_norm2"),
            ("mlp.c_fc", "mlp.fc1"),
            ("mlp.c_proj", "mlp.fc2"),
        ):
            for kind in ("weight", "bias"):
                out[f"{d}{b}.{kind}"] = _take(sd, f"{s}{a}.{kind}", used)
    return out


def convert_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip ViT CLIP state dict -> transformers ``CLIPModel`` state dict.

    Raises ValueError naming a missing key, or keys of an unsupported architecture
    (layer scale, attention pooling...) that would otherwise be silently dropped.
    """
    used: set[str] = set()
    v, t = "vision_model.", "text_model."
    out = {
        v + "embeddings.patch_embedding.weight": _take(sd, "visual.conv1.weight", used),
        v + "embeddings.class_embedding": _take(sd, "visual.class_embedding", used),
        v + "embeddings.position_embedding.weight": _take(sd, "visual.positional_embedding", used),
        # open_clip projects with x @ proj; nn.Linear computes x @ weight.T.
        "visual_projection.weight": _take(sd, "visual.proj", used).t(),
        t + "embeddings.token_embedding.weight": _take(sd, "token_embedding.weight", used),
        t + "embeddings.position_embedding.weight": _take(sd, "positional_embedding", used),
        "text_projection.weight": _take(sd, "text_projection", used).t(),
        "logit_scale": _take(sd, "logit_scale", used).reshape(()),
    }
    for a, b in (
        ("visual.ln_pre", v + "pre_layrnorm"),
        ("visual.ln_post", v + "post_layernorm"),
        ("ln_final", t + "final_layer_norm"),
    ):
        for kind in ("weight", "bias"):
            out[f"{b}.{kind}"] = _take(sd, f"{a}.{kind}", used)
    out.update(_convert_blocks(sd, "visual.transformer.", v, _num_layers(sd, "visual.transformer."), used))
    out.update(_convert_blocks(sd, "transformer.", t, _num_layers(sd, "transformer."), used))
    unused = sorted(k for k in sd if k not in used and k not in _IGNORED_KEYS)
    if unused:
        raise ValueError(f"unsupported open_clip state-dict key(s) {unused[:5]}{' ...' if len(unused) > 5 else ''}")
    return {k: x.contiguous() for k, x in out.items()}


def load_open_clip_state_dict(checkpoint: str) -> dict[str, torch.Tensor]:
    """Read an open_clip state dict from ``.safetensors`` or a torch ``.pt``/``.bin`` file."""
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"HPSv2 reward: checkpoint file {checkpoint!r} does not exist")
    try:
        if checkpoint.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd: Any = load_file(checkpoint)
        else:
            sd = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means a bad file
        raise ValueError(f"HPSv2 reward: cannot read checkpoint {checkpoint!r}: {exc}") from exc
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(x, torch.Tensor) for x in sd.values()):
        raise ValueError(f"HPSv2 reward: checkpoint {checkpoint!r} is not a state dict of tensors")
    # Checkpoints saved from DistributedDataParallel prefix every key with "module.".
    return {k.removeprefix("module."): x for k, x in sd.items()}


def _build_model(sd: dict[str, torch.Tensor], config: Any) -> Any:
    from transformers import CLIPModel

    weights = convert_state_dict(sd)
    with torch.device("meta"):  # no random init of ~1B parameters; weights are assigned below
        model = CLIPModel(config)
    model.load_state_dict(weights, strict=True, assign=True)
    # Non-persistent buffers are not in any state dict: rebuild them off the meta device.
    for emb in (model.text_model.embeddings, model.vision_model.embeddings):
        position_ids = torch.arange(emb.position_embedding.num_embeddings).expand(1, -1)
        emb.register_buffer("position_ids", position_ids, persistent=False)
    return model


def open_clip_val_processor(tokenizer: Any, image_size: int) -> Any:
    """``CLIPProcessor`` with open_clip's val transform for ``image_size``.

    That is Resize(image_size, bicubic) of the shortest side, CenterCrop(image_size)
    and OpenAI mean/std, which :class:`ClipScorer` reproduces in torch.
    """
    from transformers import CLIPImageProcessor, CLIPProcessor
    from transformers.image_utils import PILImageResampling
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BICUBIC,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _build_scorer(
    checkpoint: str,
    tokenizer_path: str,
    dtype: torch.dtype,
    device: str,
    vision_heads: int | None,
    text_heads: int | None,
) -> ClipScorer:
    from transformers import AutoTokenizer

    if not os.path.isdir(tokenizer_path):
        raise FileNotFoundError(f"HPSv2 reward: tokenizer folder {tokenizer_path!r} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"HPSv2 reward: cannot load a CLIP tokenizer from {tokenizer_path!r}: {exc}") from exc
    sd = load_open_clip_state_dict(checkpoint)
    try:
        config = infer_config(
            sd,
            vision_heads,
            text_heads,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = _build_model(sd, config)
    except (ValueError, RuntimeError) as exc:  # load_state_dict reports shape mismatches as RuntimeError
        raise ValueError(f"HPSv2 reward: checkpoint {checkpoint!r}: {exc}") from exc
    processor = open_clip_val_processor(tokenizer, config.vision_config.image_size)
    return ClipScorer.from_model(model, processor, dtype=dtype, device=device, use_logit_scale=False)


def get_scorer(
    checkpoint: str,
    tokenizer_path: str,
    dtype: str = "auto",
    device: str = "cpu",
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> ClipScorer:
    """Cached HPSv2 :class:`ClipScorer` per ``(checkpoint, tokenizer, dtype, device, heads)``."""
    dt = resolve_dtype(dtype, device)  # an unknown dtype fails before gigabytes of weights are read
    ckpt, tok = os.path.abspath(checkpoint), os.path.abspath(tokenizer_path)
    return cached_scorer(
        "hpsv2",
        (ckpt, tok, str(dt), str(torch.device(device)), vision_heads, text_heads),
        lambda: _build_scorer(ckpt, tok, dt, device, vision_heads, text_heads),
    )


@register_reward(
    "hpsv2",
    per_frame=True,
    required_args={
        "checkpoint": "the open_clip HPS_v2*.pt state dict",
        "tokenizer_path": "a local CLIP tokenizer folder",
    },
)
def hpsv2(
    frames: torch.Tensor,
    prompts: Sequence[str],
    checkpoint: str | None = None,
    tokenizer_path: str | None = None,
    dtype: str = "auto",
    batch_size: int = 32,
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> torch.Tensor:
    """Per-frame HPSv2 reward ``[B, F]`` (cosine, about 0.2-0.3 for real models); runs on the frames' device."""
    if not checkpoint or not tokenizer_path:
        raise ValueError(
            "reward 'hpsv2' needs args.checkpoint (the open_clip HPS_v2*.pt state dict) "
            "and args.tokenizer_path (a local CLIP tokenizer folder)"
        )
    scorer = get_scorer(
        checkpoint,
        tokenizer_path,
        dtype=dtype,
        device=str(frames.device),
        vision_heads=vision_heads,
        text_heads=text_heads,
    )
    return scorer.score_frames(frames, prompts, batch_size=batch_size)
