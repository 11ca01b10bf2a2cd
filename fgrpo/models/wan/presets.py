"""Wan2.1 T2V architecture presets (diffusers `WanTransformer3DModel` configs).

The large presets are used to validate recipes (head counts for tensor parallel, latent shapes)
before anything is loaded; their weights always come from a local diffusers-format folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

VAE_TEMPORAL_FACTOR = 4  # Wan2.1's VAE; a model folder's own VAE says its factors in its config
VAE_SPATIAL_FACTOR = 8
PATCH = (1, 2, 2)


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

    def transformer_config(self) -> dict:
        return dict(
            patch_size=self.patch,
            num_attention_heads=self.num_heads,
            attention_head_dim=self.head_dim,
            in_channels=self.latent_channels,
            out_channels=self.latent_channels,
            text_dim=self.text_dim,
            freq_dim=self.freq_dim,
            ffn_dim=self.ffn_dim,
            num_layers=self.num_layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=1024,
        )


PRESETS: dict[str, WanPreset] = {
    # 4 heads so that tensor parallel degrees 2 and 4 can be tested on it.
    "tiny": WanPreset(num_layers=2, num_heads=4, head_dim=16, ffn_dim=128, text_dim=32, freq_dim=32),
    # The miniature world's pre-trained model (fgrpo.miniature.pretrain): 1.1M parameters, trainable on a CPU.
    "miniature": WanPreset(num_layers=4, num_heads=4, head_dim=32, ffn_dim=384, text_dim=64, freq_dim=64),
    "wan2.1-t2v-1.3b": WanPreset(num_layers=30, num_heads=12, head_dim=128, ffn_dim=8960, text_dim=4096, freq_dim=256),
    "wan2.1-t2v-14b": WanPreset(num_layers=40, num_heads=40, head_dim=128, ffn_dim=13824, text_dim=4096, freq_dim=256),
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
