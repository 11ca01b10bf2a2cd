"""Wan architecture presets (diffusers `WanTransformer3DModel` and `AutoencoderKLWan` configs).

The large presets are used to validate and plan recipes (head counts for tensor parallel, latent
shapes, the planner's meta-device models) before anything is loaded; their weights always come
from a local diffusers-format folder. Each preset's numbers say where they come from beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

VAE_TEMPORAL_FACTOR = 4  # Wan2.1's VAE; a model folder's own VAE says its factors in its config
VAE_SPATIAL_FACTOR = 8
PATCH = (1, 2, 2)

# The VAEs' `AutoencoderKLWan` configs, by name. Wan2.1's is diffusers' default config. Wan2.2's
# (TI2V-5B only; the A14B models use Wan2.1's VAE): `vae22_diffusers_config` of diffusers'
# convert_wan_to_diffusers.py (huggingface/diffusers@58eb52c, in its scripts folder) and Wan2.2's
# wan/configs/wan_ti2v_5B.py `vae_stride = (4, 16, 16)` (Wan-Video/Wan2.2@42bf4cf): a 2x2 pixel
# patchify (12 channels in and out) ahead of the 8x VAE, 48 latent channels. Its latents_mean and
# latents_std (48 values each) are the model folder's to give; a plan reads only their length.
VAE_CONFIGS: dict[str, dict[str, Any]] = {
    "wan2.1": {},
    "wan2.2": dict(
        base_dim=160,
        decoder_base_dim=256,
        z_dim=48,
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_temporal=4,
        scale_factor_spatial=16,
    ),
    # The `tiny-ti2v` preset's VAE (fgrpo/models/wan/tiny_ti2v.py): Wan2.2's structure (residual
    # blocks, 2x2 patchify of 12 channels, 3 downsamplings: 16x spatial, 4x temporal) at CPU widths,
    # 24 latent channels (neither Wan2.1's 16 nor 5B's 48, so nothing can assume either).
    "tiny-wan2.2": dict(
        base_dim=8,
        decoder_base_dim=12,
        z_dim=24,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_temporal=4,
        scale_factor_spatial=16,
    ),
}


@dataclass(frozen=True)
class Sampling:
    """How the model is released to sample (its official generate defaults); the recipes start from
    these. Height and width in pixels (Wan's `--size W*H` is width first)."""

    frames: int
    height: int
    width: int
    fps: int
    flow_shift: float
    steps: int
    guidance: float | tuple[float, float]  # two experts: (low-noise, high-noise), as Wan2.2 orders them


@dataclass(frozen=True)
class WanPreset:
    num_layers: int
    num_heads: int
    head_dim: int
    ffn_dim: int
    text_dim: int
    freq_dim: int
    latent_channels: int = 16
    patch: tuple[int, int, int] = PATCH
    vae_spatial_factor: int = VAE_SPATIAL_FACTOR  # the VAE's compression, as its config's scale_factor_*
    vae_temporal_factor: int = VAE_TEMPORAL_FACTOR
    vae: str = "wan2.1"  # its VAE_CONFIGS entry (the planner's VAE)
    in_channels: int | None = None  # the transformer's input when above latent_channels (I2V: + mask + image latent)
    image_dim: int | None = None  # CLIP image-feature width of image cross-attention (Wan2.1 I2V)
    added_kv_proj_dim: int | None = None  # that image attention's key/value input width
    experts: int = 1  # Wan2.2 A14B: two transformers, high noise then low noise
    boundary_ratio: float | None = None  # the expert switch: high-noise expert while t >= ratio x 1000
    expand_timesteps: bool = False  # TI2V: a timestep per token (the image's first-frame tokens at t=0)
    sampling: Sampling | None = None  # the official sampling defaults (None: not stated here)

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def pixel_multiple(self) -> int:
        """What video height and width must be multiples of: the VAE's spatial factor x the patch."""
        return self.vae_spatial_factor * max(self.patch[1:])

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return latent_shape(
            frames, height, width, self.latent_channels, self.vae_temporal_factor, self.vae_spatial_factor
        )

    def tokens(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The patch grid of one video: (latent frames, rows, columns) / the patch."""
        _, f, h, w = self.latent_shape(frames, height, width)
        return f // self.patch[0], h // self.patch[1], w // self.patch[2]

    @property
    def condition_channels(self) -> int:
        """Channels appended to the latents at the transformer's input (I2V: 4 mask + the image's latent)."""
        return (self.in_channels or self.latent_channels) - self.latent_channels

    @property
    def image_to_video(self) -> bool:
        """Needs an image per prompt: condition channels or image cross-attention."""
        return self.condition_channels > 0 or self.image_dim is not None

    def vae_config(self) -> dict[str, Any]:
        """`AutoencoderKLWan` keyword arguments of the preset's VAE (no latents_mean/std)."""
        return dict(VAE_CONFIGS[self.vae])

    def transformer_config(self) -> dict:
        image = {} if self.image_dim is None else dict(image_dim=self.image_dim)
        if self.added_kv_proj_dim is not None:
            image["added_kv_proj_dim"] = self.added_kv_proj_dim
        return dict(
            patch_size=self.patch,
            num_attention_heads=self.num_heads,
            attention_head_dim=self.head_dim,
            in_channels=self.in_channels or self.latent_channels,
            out_channels=self.latent_channels,
            text_dim=self.text_dim,
            freq_dim=self.freq_dim,
            ffn_dim=self.ffn_dim,
            num_layers=self.num_layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=1024,
            **image,
        )


# 4 heads so that tensor parallel degrees 2 and 4 can be tested on it; the tiny variants below are
# this architecture with another model's structure (channels, image attention, experts, VAE).
_TINY = WanPreset(num_layers=2, num_heads=4, head_dim=16, ffn_dim=128, text_dim=32, freq_dim=32)
# Wan2.1-T2V-14B's transformer: dim 5120 = 40 heads x 128, 40 layers, ffn 13824 (wan/configs/wan_t2v_14B.py);
# Wan2.1 I2V-14B and both Wan2.2 A14B experts are this architecture (sources at each preset).
_WAN_14B = WanPreset(num_layers=40, num_heads=40, head_dim=128, ffn_dim=13824, text_dim=4096, freq_dim=256)

PRESETS: dict[str, WanPreset] = {
    "tiny": _TINY,
    # Wan2.2-TI2V-5B's architecture at the tiny width (tests on CPU): its VAE's structure and factors
    # (VAE_CONFIGS["tiny-wan2.2"]) and its pipeline's per-token timesteps.
    "tiny-ti2v": replace(
        _TINY,
        latent_channels=24,
        vae_spatial_factor=16,
        vae="tiny-wan2.2",
        expand_timesteps=True,
    ),
    # Wan2.1-I2V-14B's architecture at the tiny width (tests on CPU, fgrpo/models/wan/tiny_i2v.py): in 36
    # channels (16 noise + 4 mask + 16 image latent), image cross-attention whose key/value input is the
    # width (added_kv_proj_dim = 4 x 16, as 5120 = 40 x 128 for 14B) fed by a tiny CLIP of width 48.
    "tiny-i2v": replace(
        _TINY,
        in_channels=36,
        image_dim=48,
        added_kv_proj_dim=64,
    ),
    # Wan2.2-T2V-A14B's structure at the tiny width (tests on CPU, fgrpo/models/wan/tiny_a14b.py): two
    # experts of the tiny architecture, `transformer` for high noise and `transformer_2` for low noise.
    # Boundary 0.7, not A14B's 0.875: on the tiny recipe's grid (8 steps, shift 1: sigma 0.999, 0.874,
    # 0.749, 0.624, ...) steps 0-2 are the high-noise expert's and 3-7 the low-noise one's, so its
    # window (1, 6) trains both and a 2-step evaluation samples with both.
    "tiny-a14b": replace(_TINY, experts=2, boundary_ratio=0.7),
    # Wan2.2-I2V-A14B's structure at the tiny width (tests on CPU, fgrpo/models/wan/tiny_i2v_a14b.py): two
    # experts of the tiny architecture taking 36 input channels (16 noise + 4 mask + 16 image latent), no
    # image cross-attention and no CLIP encoder, as I2V-A14B. Boundary 0.7 as `tiny-a14b`'s, not
    # I2V-A14B's 0.9: on the tiny recipe's grid 0.9 would give the high-noise expert step 0 alone.
    "tiny-i2v-a14b": replace(
        _TINY,
        in_channels=36,
        experts=2,
        boundary_ratio=0.7,
    ),
    # The miniature world's pre-trained model (fgrpo.miniature.pretrain): 1.1M parameters, trainable on a CPU.
    "miniature": WanPreset(num_layers=4, num_heads=4, head_dim=32, ffn_dim=384, text_dim=64, freq_dim=64),
    "wan2.1-t2v-1.3b": WanPreset(num_layers=30, num_heads=12, head_dim=128, ffn_dim=8960, text_dim=4096, freq_dim=256),
    "wan2.1-t2v-14b": _WAN_14B,
    **{
        # Wan2.1-I2V-14B-480P and -720P: one architecture, two checkpoints sampled at different sizes.
        # Transformer: diffusers' convert_wan_to_diffusers.py (scripts folder) "Wan-I2V-14B-480p"/"-720p"
        # (huggingface/diffusers@58eb52c): in_channels 36 (16 noise + 4 mask + 16 image latent),
        # out_channels 16, image_dim 1280 (CLIP ViT-H/14 features), added_kv_proj_dim 5120; the same
        # dim 5120, 40 heads, 40 layers, ffn 13824 as Wan2.1's wan/configs/wan_i2v_14B.py
        # (Wan-Video/Wan2.1@9737cba). VAE: Wan2.1's (vae_stride (4, 8, 8)). Sampling: shared_config
        # (81 frames is generate.py's default, sample_fps 16), generate.py: 40 steps for i2v, shift
        # 3.0 at 832*480 and 5.0 otherwise, guide scale 5.0; sizes (Wan's W*H) 832*480 and 1280*720.
        f"wan2.1-i2v-14b-{res}p": replace(
            _WAN_14B,
            in_channels=36,
            image_dim=1280,
            added_kv_proj_dim=5120,
            sampling=Sampling(frames=81, height=h, width=w, fps=16, flow_shift=shift, steps=40, guidance=5.0),
        )
        for res, h, w, shift in ((480, 480, 832, 3.0), (720, 720, 1280, 5.0))
    },
    # Wan2.2-TI2V-5B. Transformer: convert_wan_to_diffusers.py "Wan2.2-TI2V-5B" (diffusers@58eb52c):
    # in/out_channels 48, 24 heads x 128, 30 layers, ffn 14336, and its pipeline expand_timesteps=True;
    # wan/configs/wan_ti2v_5B.py (Wan-Video/Wan2.2@42bf4cf): dim 3072, 24 heads, 30 layers, ffn 14336,
    # freq_dim 256, vae_stride (4, 16, 16) with Wan2.2_VAE, sample_fps 24, sample_shift 5.0,
    # sample_steps 50, sample_guide_scale 5.0, frame_num 121; SUPPORTED_SIZES 1280*704 (Wan's W*H).
    "wan2.2-ti2v-5b": WanPreset(
        num_layers=30,
        num_heads=24,
        head_dim=128,
        ffn_dim=14336,
        text_dim=4096,
        freq_dim=256,
        latent_channels=48,
        vae_spatial_factor=16,
        vae="wan2.2",
        expand_timesteps=True,
        sampling=Sampling(frames=121, height=704, width=1280, fps=24, flow_shift=5.0, steps=50, guidance=5.0),
    ),
    # Wan2.2-T2V-A14B: two experts of one architecture. convert_wan_to_diffusers.py "Wan2.2-T2V-A14B"
    # (diffusers@58eb52c): in/out_channels 16, 40 heads x 128, 40 layers, ffn 13824, transformer
    # (high_noise_model) and transformer_2 (low_noise_model), boundary_ratio 0.875;
    # wan/configs/wan_t2v_A14B.py (Wan2.2@42bf4cf): dim 5120, Wan2.1_VAE (4, 8, 8), boundary 0.875,
    # sample_shift 12.0, sample_steps 40, sample_guide_scale (3.0, 4.0); shared_config: frame_num 81,
    # sample_fps 16; generate.py's default size 1280*720 (W*H: 720 x 1280).
    "wan2.2-t2v-a14b": replace(
        _WAN_14B,
        experts=2,
        boundary_ratio=0.875,
        sampling=Sampling(frames=81, height=720, width=1280, fps=16, flow_shift=12.0, steps=40, guidance=(3.0, 4.0)),
    ),
    # Wan2.2-I2V-A14B: convert_wan_to_diffusers.py "Wan2.2-I2V-14B-720p" (diffusers@58eb52c):
    # in_channels 36, out_channels 16, no image cross-attention (no image_dim, no CLIP encoder), two
    # experts, boundary_ratio 0.9; wan/configs/wan_i2v_A14B.py (Wan2.2@42bf4cf): boundary 0.900,
    # sample_shift 5.0, sample_steps 40, sample_guide_scale (3.5, 3.5), Wan2.1_VAE; frames, fps and
    # size as T2V-A14B.
    "wan2.2-i2v-a14b": replace(
        _WAN_14B,
        in_channels=36,
        experts=2,
        boundary_ratio=0.9,
        sampling=Sampling(frames=81, height=720, width=1280, fps=16, flow_shift=5.0, steps=40, guidance=(3.5, 3.5)),
    ),
}


def latent_shape(
    frames: int,
    height: int,
    width: int,
    channels: int = 16,
    temporal: int = VAE_TEMPORAL_FACTOR,
    spatial: int = VAE_SPATIAL_FACTOR,
) -> tuple[int, int, int, int]:
    """[C, F', H', W'] of the VAE latent: F' = (F - 1)/t + 1, H' = H/s, W' = W/s (Wan2.1: t 4, s 8)."""
    return (channels, (frames - 1) // temporal + 1, height // spatial, width // spatial)


def vae_latent_shape(vae_config: Mapping, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """The latent shape of a loaded `AutoencoderKLWan` (its config's z_dim and scale factors, the
    fields `WanPipeline` reads too)."""
    return latent_shape(
        frames,
        height,
        width,
        int(vae_config.get("z_dim", 16)),
        int(vae_config.get("scale_factor_temporal") or VAE_TEMPORAL_FACTOR),
        int(vae_config.get("scale_factor_spatial") or VAE_SPATIAL_FACTOR),
    )
