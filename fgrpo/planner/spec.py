"""What the planner builds: architecture configs only, never weights.

`ModelSpec.from_preset` gives the transformer, VAE and text-encoder configs of a recipe's preset
(Wan: the preset's transformer, its VAE's config, diffusers' default `AutoencoderKLWan` for
Wan2.1's VAE, and UMT5-XXL; `tiny` and `tiny-i2v`: the tiny model's own small VAE and 2-layer UMT5;
`tiny-ti2v`: its small Wan2.2-structured VAE and the same UMT5). `model.path`
is never read: a plan needs no weights and no model folder. Presets fgrpo cannot train yet are
planned as they would run (`ModelSpec.notes` says how): Wan2.2 A14B's second expert as frozen
weights beside the trained one, or trained as it (lora.experts=both), image-to-video models with
their conditioning inputs.
`ModelSpec.from_folder` reads the three config.json files of a diffusers folder, for architectures
no preset names (the benchmark's CPU-sized models).

Reward models are not run by the planner (their inputs depend on the reward's own preprocessing):
an in-process reward's weights are counted from its architecture config, built on the meta
device (`reward_weights`), and stay resident on every GPU from the first scoring on. Served
rewards (`reward_server.url` or `launch`) cost the training GPUs nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from fgrpo.models.wan.presets import PRESETS, WanPreset
from fgrpo.models.wan.random_build import SMALL_VAE_CONFIG, text_encoder_config
from fgrpo.models.wan.tiny import TINY_TEXT_ENCODER

__all__ = ["CLIP_IMAGE_TOKENS", "ModelSpec", "RewardWeights", "UMT5_XXL", "reward_weights"]

# Tokens of the CLIP ViT-H/14 image features Wan2.1 I2V attends to: (224 / 14)^2 patches + the class
# token, its penultimate hidden states as diffusers' WanImageToVideoPipeline.encode_image takes them.
CLIP_IMAGE_TOKENS = 257

# google/umt5-xxl, as Wan2.1's text_encoder/config.json holds it (5,680,910,336 parameters).
UMT5_XXL = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    tie_word_embeddings=False,
)


@dataclass(frozen=True)
class ModelSpec:
    """Keyword arguments of `WanTransformer3DModel`, `AutoencoderKLWan` and `UMT5Config`."""

    transformer: dict
    vae: dict
    text_encoder: dict
    source: str
    experts: int = 1
    """Transformers of this one architecture (Wan2.2 A14B: 2): lora.experts says which are trained."""
    notes: tuple[str, ...] = ()
    """What the plan models beyond a text-to-video forward of one transformer, in words."""
    image_encoder: dict | None = None
    """`CLIPVisionConfig` keyword arguments of the CLIP image encoder (Wan2.1 I2V), or None."""

    @classmethod
    def from_preset(cls, preset: str) -> "ModelSpec":
        if preset not in PRESETS:
            raise ValueError(f"model.preset: unknown preset {preset!r}; known: {sorted(PRESETS)}")
        p = PRESETS[preset]
        if preset in ("tiny", "tiny-i2v"):
            return cls(
                p.transformer_config(),
                dict(SMALL_VAE_CONFIG),
                text_encoder_config(TINY_TEXT_ENCODER, p.text_dim),
                f"preset {preset}",
                notes=preset_notes(p),
                image_encoder=preset_image_encoder(preset),
            )
        if preset == "tiny-ti2v":
            return cls(
                p.transformer_config(),
                planning_vae(p),
                text_encoder_config(TINY_TEXT_ENCODER, p.text_dim),
                f"preset {preset}",
                notes=preset_notes(p),
            )
        if preset == "miniature":
            from fgrpo.miniature.pretrain import TEXT_ENCODER, VAE_CONFIG

            return cls(
                p.transformer_config(),
                dict(VAE_CONFIG),
                text_encoder_config(TEXT_ENCODER, p.text_dim),
                f"preset {preset}",
            )
        return cls(
            p.transformer_config(),
            planning_vae(p),
            dict(UMT5_XXL),
            f"preset {preset}",
            p.experts,
            preset_notes(p),
            preset_image_encoder(preset),
        )

    @classmethod
    def from_folder(cls, path: str | Path) -> "ModelSpec":
        """The configs of a diffusers Wan folder (config.json files only; no weights are opened)."""
        path = Path(path)

        def read(sub: str) -> dict:
            cfg = json.loads((path / sub / "config.json").read_text())
            return {k: v for k, v in cfg.items() if not k.startswith("_")}

        te = read("text_encoder")
        keys = (
            "vocab_size",
            "d_model",
            "d_kv",
            "d_ff",
            "num_layers",
            "num_heads",
            "feed_forward_proj",
            "relative_attention_num_buckets",
            "relative_attention_max_distance",
            "tie_word_embeddings",
        )
        experts = 2 if (path / "transformer_2").is_dir() else 1  # Wan2.2 A14B's low-noise expert
        clip = read("image_encoder") if (path / "image_encoder" / "config.json").is_file() else None
        return cls(
            read("transformer"),
            read("vae"),
            {k: te[k] for k in keys if k in te},
            f"folder {path}",
            experts,
            image_encoder=None if clip is None else {k: clip[k] for k in CLIP_VISION_KEYS if k in clip},
        )

    @property
    def heads(self) -> int:
        return int(self.transformer["num_attention_heads"])

    @property
    def condition_channels(self) -> int:
        """Channels an image-to-video pipeline appends to the latents (4 mask + the image's latent)."""
        t = self.transformer
        return int(t.get("in_channels", 16)) - int(t.get("out_channels") or t.get("in_channels", 16))

    @property
    def image_dim(self) -> int | None:
        """Width of the CLIP image tokens of image cross-attention (Wan2.1 I2V), or None."""
        return self.transformer.get("image_dim")


# The `CLIPVisionConfig` fields that shape the encoder (its config.json holds more).
CLIP_VISION_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "projection_dim",
    "hidden_act",
)


def preset_image_encoder(preset: str) -> dict | None:
    """The CLIP image encoder of a preset with image cross-attention: Wan2.1 I2V's ViT-H/14 vision
    tower (its image_encoder/config.json: 32 layers of width 1280, 224 x 224 in 14 x 14 patches),
    `tiny-i2v`'s own tiny one; None for a preset without image cross-attention."""
    if PRESETS[preset].image_dim is None:
        return None
    if preset == "tiny-i2v":
        from fgrpo.models.wan.tiny_i2v import tiny_clip_vision_config

        return tiny_clip_vision_config()
    return {**_CLIP_VIT_H_14["vision_config"], "hidden_act": "gelu"}


def planning_vae(preset: WanPreset) -> dict:
    """The preset's VAE config with latents_mean/std of its channel count where diffusers' defaults
    (16 values, Wan2.1's) do not fit: a plan never reads their values, decoding needs their length."""
    config = preset.vae_config()
    z = int(config.get("z_dim", 16))
    if z != 16:
        config = {**config, "latents_mean": [0.0] * z, "latents_std": [1.0] * z}
    return config


def preset_notes(preset: WanPreset) -> tuple[str, ...]:
    """How the plan models what a text-to-video forward of one transformer does not have."""
    notes = []
    if preset.experts > 1:
        notes.append(
            f"experts: {preset.experts} of one architecture, switched at boundary_ratio {preset.boundary_ratio}; "
            "lora.experts high or low: one is planned as trained (LoRA or full, AdamW, EMA), the other's frozen "
            "weights are resident in the compute dtype, sharded as the first ('other expert'); both: each is "
            "planned as trained, its weights, gradients, AdamW state and EMA resident in every phase, one "
            "expert gathered and running at a time (its activations); a forward costs one expert's FLOPs "
            "whichever runs (on several ranks a training micro-batch may also run the other expert on one "
            "dummy row, fgrpo.models.wan.experts: not modelled)"
        )
    if preset.image_to_video:
        clip = (
            f" and {CLIP_IMAGE_TOKENS} CLIP image tokens of width {preset.image_dim} (the cross-attention cache "
            "is off: diffusers' image attention splits its context anew at every call)"
            if preset.image_dim
            else ""
        )
        encoders = "the VAE" + (" and the CLIP image encoder (float32)" if preset.image_dim else "")
        notes.append(
            f"image-to-video: the transformer's input carries {preset.condition_channels} condition channels "
            f"(mask + the image's latent){clip}, one video's repeated over the batch; the start-up phase "
            f"'image encoding' holds {encoders} and encodes one prompt's image (run once per prompt before "
            "the transformer is built, the results cached: fgrpo.models.wan.image_cache)"
        )
    if preset.expand_timesteps:
        notes.append(
            "timesteps: one per video, as fgrpo samples text-to-video (TI2V's per-token timesteps are all "
            "equal without an image)"
        )
    return tuple(notes)


# ----------------------------------------------------------------------------- reward models

# Hugging Face config.json values of the reward models' backbones (used when no local config).
_QWEN2_VL_VISION = dict(
    depth=32,
    embed_dim=1280,
    mlp_ratio=4,
    num_heads=16,
    in_chans=3,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
)
_QWEN2_VL = {
    "7B": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
    "2B": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
}
_CLIP_VIT_H_14: dict[str, Any] = dict(
    text_config=dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        vocab_size=49408,
        max_position_embeddings=77,
    ),
    vision_config=dict(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=16,
        patch_size=14,
        image_size=224,
    ),
    projection_dim=1024,
)


@dataclass(frozen=True)
class RewardWeights:
    name: str
    model: str  # what was counted, in words
    params: int
    bytes: int


def _qwen_reward_params(size: str, model_path: str | None, head: str, output_dim: int) -> tuple[int, str]:
    from transformers import AutoConfig, Qwen2VLConfig

    from fgrpo.rewards.qwen2vl import reward_model_class

    if model_path and (Path(model_path) / "config.json").is_file():
        config, what = AutoConfig.from_pretrained(model_path, local_files_only=True), f"{model_path}/config.json"
    else:
        config = Qwen2VLConfig(
            **_QWEN2_VL[size],
            # transformers 5's strict config dataclasses take config.json's legacy keys through
            # **kwargs, which their typed __init__ does not show.
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},  # pyright: ignore[reportCallIssue]
            vision_config={**_QWEN2_VL_VISION, "hidden_size": _QWEN2_VL[size]["hidden_size"]},
        )
        what = f"Qwen2-VL-{size}-Instruct config"
    with torch.device("meta"):
        model = reward_model_class()(config, head=head, output_dim=output_dim)
    return sum(p.numel() for p in model.parameters()), what


def _clip_params(model_path: str | None) -> tuple[int, str]:
    from transformers import AutoConfig, CLIPConfig, CLIPModel

    if model_path and (Path(model_path) / "config.json").is_file():
        config = cast(CLIPConfig, AutoConfig.from_pretrained(model_path, local_files_only=True))
        what = f"{model_path}/config.json"
    else:
        config, what = CLIPConfig(**_CLIP_VIT_H_14), "CLIP ViT-H-14 config (PickScore, HPSv2)"
    with torch.device("meta"):
        model = CLIPModel(config)
    return sum(p.numel() for p in model.parameters()), what


def reward_weights(recipe, on_gpu: bool = True) -> list[RewardWeights]:
    """Weights each training GPU holds for the recipe's in-process rewards (none when a reward
    server scores them). Counted from configs on the meta device, in the dtype the reward runs in
    (`args.dtype`, "auto": bf16 on GPU)."""
    rs = recipe.reward_server
    if rs.url or rs.launch:
        return []
    out = []
    for spec in recipe.rewards:
        args, name = dict(spec.args), spec.name
        if name == "hpsv3":
            params, what = _qwen_reward_params("7B", args.get("model_path"), "ranknet", 2)
        elif name == "videoalign":
            params, what = _qwen_reward_params("2B", args.get("model_path"), "linear", 3)
        elif name in ("hpsv2", "clip"):
            params, what = _clip_params(args.get("model_path") if name == "clip" else None)
        else:  # programmatic rewards hold no weights; a custom callable's are unknown to the planner
            params, what = 0, "no weights" if name in ("colour", "brightness", "contrast") else "unknown: not counted"
        dtype = str(args.get("dtype", "auto"))
        width = 4 if dtype == "float32" or (dtype == "auto" and not on_gpu) else 2
        out.append(RewardWeights(name, what, params, params * width))
    return out
