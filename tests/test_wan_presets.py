"""The Wan2.2 and image-to-video presets against their official configurations, their models built
on the meta device, and their latent shapes at the official sizes."""

import math

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from fgrpo.models.wan.presets import PRESETS, Sampling, vae_latent_shape
from fgrpo.planner.spec import ModelSpec

# Transformer: diffusers' scripts/convert_wan_to_diffusers.py, get_transformer_config
# (huggingface/diffusers@58eb52c), checked against dim/num_heads/num_layers/ffn_dim of Wan's own
# wan/configs (Wan-Video/Wan2.2@42bf4cf: wan_ti2v_5B.py, wan_t2v_A14B.py, wan_i2v_A14B.py;
# Wan-Video/Wan2.1@9737cba: wan_i2v_14B.py). Experts and boundary: the conversion's
# transformer/transformer_2 and boundary_ratio, Wan2.2's `boundary`. VAE: `vae22_diffusers_config`
# (TI2V-5B) or Wan2.1's (vae_stride (4, 8, 8)).
# name: layers, heads, head_dim, ffn, in, out, image_dim, added_kv, experts, boundary, z_dim, spatial
TRANSFORMERS = {
    "wan2.2-ti2v-5b": (30, 24, 128, 14336, 48, 48, None, None, 1, None, 48, 16),
    "wan2.2-t2v-a14b": (40, 40, 128, 13824, 16, 16, None, None, 2, 0.875, 16, 8),
    "wan2.2-i2v-a14b": (40, 40, 128, 13824, 36, 16, None, None, 2, 0.9, 16, 8),
    "wan2.1-i2v-14b-480p": (40, 40, 128, 13824, 36, 16, 1280, 5120, 1, None, 16, 8),
    "wan2.1-i2v-14b-720p": (40, 40, 128, 13824, 36, 16, 1280, 5120, 1, None, 16, 8),
}
# Sampling: Wan2.2's configs (frame_num, sample_fps, sample_shift, sample_steps, sample_guide_scale
# as (low noise, high noise)) and generate.py's default size 1280*720 (W*H; TI2V-5B: 1280*704);
# Wan2.1's generate.py: 81 frames, 40 steps for i2v, shift 3.0 at 480*832 else 5.0, guide 5.0,
# shared_config sample_fps 16.
SAMPLING = {
    "wan2.2-ti2v-5b": Sampling(121, 704, 1280, 24, 5.0, 50, 5.0),
    "wan2.2-t2v-a14b": Sampling(81, 720, 1280, 16, 12.0, 40, (3.0, 4.0)),
    "wan2.2-i2v-a14b": Sampling(81, 720, 1280, 16, 5.0, 40, (3.5, 3.5)),
    "wan2.1-i2v-14b-480p": Sampling(81, 480, 832, 16, 3.0, 40, 5.0),
    "wan2.1-i2v-14b-720p": Sampling(81, 720, 1280, 16, 5.0, 40, 5.0),
}
# Latents at the official size: [z_dim, (F - 1)/4 + 1, H/s, W/s].
LATENTS = {
    "wan2.2-ti2v-5b": (48, 31, 44, 80),
    "wan2.2-t2v-a14b": (16, 21, 90, 160),
    "wan2.2-i2v-a14b": (16, 21, 90, 160),
    "wan2.1-i2v-14b-480p": (16, 21, 60, 104),
    "wan2.1-i2v-14b-720p": (16, 21, 90, 160),
}
# Parameters per transformer, measured on the meta device (the official names: 5B, A14B = 2 x 14B,
# I2V-14B; Wan2.1 I2V adds 2.1B of image cross-attention and image embedder to the T2V 14B).
PARAMS_BILLIONS = {
    "wan2.2-ti2v-5b": (4.9, 5.1),
    "wan2.2-t2v-a14b": (14.0, 14.5),
    "wan2.2-i2v-a14b": (14.0, 14.5),
    "wan2.1-i2v-14b-480p": (16.3, 16.5),
    "wan2.1-i2v-14b-720p": (16.3, 16.5),
}


def meta_model(name: str) -> WanTransformer3DModel:
    with torch.device("meta"):
        return WanTransformer3DModel(**PRESETS[name].transformer_config())


def counted_params(name: str) -> int:
    """Wan's parameter count from its architecture (diffusers' module layout), independent of the model."""
    p = PRESETS[name]
    d, f, patch = p.width, p.ffn_dim, math.prod(p.patch)
    # q, k, v, out with biases and q/k RMSNorms in two attentions; FFN; cross-attn LayerNorm; 6d modulation
    block = 2 * (4 * d * d + 4 * d + 2 * d) + 2 * d * f + f + d + 2 * d + 6 * d
    if p.added_kv_proj_dim:
        block += 2 * (p.added_kv_proj_dim * d + d) + d  # image key/value projections and their RMSNorm
    top = (p.in_channels or p.latent_channels) * d * patch + d  # patch embedding
    top += p.freq_dim * d + d + d * d + d + 6 * d * d + 6 * d  # time embedder and projection
    top += p.text_dim * d + d + d * d + d  # text embedder
    top += d * p.latent_channels * patch + p.latent_channels * patch + 2 * d  # output head, its modulation
    if p.image_dim:
        i = p.image_dim
        top += 2 * i + i * i + i + i * d + d + 2 * d  # image embedder: LayerNorm, 2-layer FFN, LayerNorm
    return p.num_layers * block + top


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_preset_numbers_are_the_official_ones(name):
    layers, heads, head_dim, ffn, cin, cout, image_dim, kv, experts, boundary, z, spatial = TRANSFORMERS[name]
    p, cfg = PRESETS[name], PRESETS[name].transformer_config()
    assert (cfg["num_layers"], cfg["num_attention_heads"], cfg["attention_head_dim"], cfg["ffn_dim"]) == (
        layers,
        heads,
        head_dim,
        ffn,
    )
    assert (cfg["in_channels"], cfg["out_channels"]) == (cin, cout)
    assert (cfg.get("image_dim"), cfg.get("added_kv_proj_dim")) == (image_dim, kv)
    assert (cfg["text_dim"], cfg["freq_dim"], tuple(cfg["patch_size"])) == (4096, 256, (1, 2, 2))
    assert (p.experts, p.boundary_ratio) == (experts, boundary)
    assert p.expand_timesteps == (name == "wan2.2-ti2v-5b")
    assert p.sampling == SAMPLING[name]
    vae = ModelSpec.from_preset(name).vae
    assert (vae.get("z_dim", 16), vae.get("scale_factor_spatial", 8), p.latent_channels, p.vae_spatial_factor) == (
        z,
        spatial,
        z,
        spatial,
    )
    assert p.image_to_video == (cin > cout)


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_transformer_builds_on_meta_with_the_counted_parameters(name):
    model = meta_model(name)
    params = sum(t.numel() for t in model.parameters())
    assert params == counted_params(name)
    low, high = PARAMS_BILLIONS[name]
    assert low * 1e9 < params < high * 1e9, params
    assert model.patch_embedding.in_channels == TRANSFORMERS[name][4]
    assert model.proj_out.out_features == TRANSFORMERS[name][5] * 4


def test_existing_presets_and_their_plans_are_unchanged():
    """The Wan2.1 T2V presets keep their config keys (no image ones) and diffusers' default VAE."""
    keys = {
        "patch_size",
        "num_attention_heads",
        "attention_head_dim",
        "in_channels",
        "out_channels",
        "text_dim",
        "freq_dim",
        "ffn_dim",
        "num_layers",
        "cross_attn_norm",
        "qk_norm",
        "rope_max_seq_len",
    }
    for name in ("tiny", "miniature", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b"):
        assert set(PRESETS[name].transformer_config()) == keys
        assert PRESETS[name].experts == 1 and not PRESETS[name].image_to_video
    spec = ModelSpec.from_preset("wan2.1-t2v-14b")
    assert spec.vae == {} and spec.experts == 1 and spec.notes == ()
    assert counted_params("wan2.1-t2v-14b") == sum(t.numel() for t in meta_model("wan2.1-t2v-14b").parameters())


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_latent_shape_at_the_official_size_from_the_preset_and_its_vae(name):
    s = PRESETS[name].sampling
    assert s is not None
    assert PRESETS[name].latent_shape(s.frames, s.height, s.width) == LATENTS[name]
    with torch.device("meta"):
        vae = AutoencoderKLWan(**ModelSpec.from_preset(name).vae)
    assert vae_latent_shape(vae.config, s.frames, s.height, s.width) == LATENTS[name]
    assert s.height % PRESETS[name].pixel_multiple == 0 and s.width % PRESETS[name].pixel_multiple == 0


def test_ti2v_5b_patch_grid_and_pixel_multiple():
    p = PRESETS["wan2.2-ti2v-5b"]
    assert p.pixel_multiple == 32 and p.tokens(121, 704, 1280) == (31, 22, 40)


@pytest.mark.parametrize(
    "name, notes",
    [
        ("wan2.2-t2v-a14b", ("experts: 2",)),
        ("wan2.2-i2v-a14b", ("experts: 2", "image-to-video: the transformer's input carries 20 condition channels")),
        ("wan2.1-i2v-14b-480p", ("image-to-video: the transformer's input carries 20 condition channels",)),
        ("wan2.2-ti2v-5b", ("timesteps: one per video",)),
    ],
)
def test_the_plan_says_how_it_models_what_text_to_video_has_not(name, notes):
    spec = ModelSpec.from_preset(name)
    assert [n[: len(want)] for n, want in zip(spec.notes, notes)] == list(notes)
    assert spec.experts == PRESETS[name].experts
    assert spec.condition_channels == PRESETS[name].condition_channels
