"""The latent shape comes from the model's VAE (its config's z_dim and scale factors, the fields
WanPipeline reads), not from Wan2.1's fixed 4x / 8x: Wan2.2's VAE compresses 16x into 48 channels."""

import pytest
from diffusers import AutoencoderKLWan

from fgrpo.models.wan.presets import PRESETS, WanPreset, latent_shape, vae_latent_shape
from fgrpo.recipe.config import Recipe, RolloutConfig
from fgrpo.recipe.validate import recipe_problems


def test_wan21_vae_gives_wan21_shape():
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    assert vae_latent_shape(vae.config, 81, 480, 832) == (16, 21, 60, 104) == latent_shape(81, 480, 832)


def test_other_factors_and_channels_are_read_from_the_config():
    wan22 = {"z_dim": 48, "scale_factor_spatial": 16, "scale_factor_temporal": 4}
    assert vae_latent_shape(wan22, 121, 704, 1280) == (48, 31, 44, 80)
    # A config saved before diffusers had the fields: Wan2.1's factors.
    assert vae_latent_shape({"z_dim": 16}, 9, 64, 64) == (16, 3, 8, 8)


def test_preset_patch_grid_and_pixel_multiple():
    p = WanPreset(2, 2, 8, 16, 8, 8, latent_channels=48, patch=(1, 2, 2), vae_spatial_factor=16)
    assert p.pixel_multiple == 32 and p.latent_shape(121, 704, 1280) == (48, 31, 44, 80)
    assert p.tokens(121, 704, 1280) == (31, 22, 40)
    assert PRESETS["wan2.1-t2v-1.3b"].pixel_multiple == 16


@pytest.mark.parametrize("size, ok", [(64, True), (72, False)])
def test_validation_asks_for_the_presets_pixel_multiple(size, ok):
    errs = recipe_problems(Recipe(rollout=RolloutConfig(height=size, width=64)), world_size=1)
    assert ok == (not any(e.startswith("rollout.height") for e in errs)), errs
    if not ok:
        assert any("multiple of 16" in e and "got 72" in e for e in errs)
