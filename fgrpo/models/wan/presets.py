"""Wan2.1 T2V architecture presets (diffusers `WanTransformer3DModel` configs).

The large presets are used to validate recipes (head counts for tensor parallel, latent shapes)
before anything is loaded; their weights always come from a local diffusers-format folder.
"""

from __future__ import annotations

from dataclasses import dataclass

VAE_TEMPORAL_FACTOR = 4
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

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim

    def transformer_config(self) -> dict:
        return dict(
            patch_size=PATCH,
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


def latent_shape(frames: int, height: int, width: int, channels: int = 16) -> tuple[int, int, int, int]:
    """[C, F', H', W'] of the VAE latent: F' = (F - 1)/4 + 1, H' = H/8, W' = W/8."""
    return (
        channels,
        (frames - 1) // VAE_TEMPORAL_FACTOR + 1,
        height // VAE_SPATIAL_FACTOR,
        width // VAE_SPATIAL_FACTOR,
    )
