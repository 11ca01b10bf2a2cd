"""The tiny Wan2.2-TI2V model (fgrpo/models/wan/tiny_ti2v.py): its folder is Wan2.2's layout, its VAE
compresses 16x into the latent shape fgrpo computes, and fgrpo's one-timestep-per-video sampling
equals the pipeline's per-token timesteps (`expand_timesteps`) for text-only prompts.

Suite cost: about 10 CPU-seconds (one tiny folder per session, forwards on 8-token videos).
(Training, resume, eval and export on it: tests/distributed/test_ti2v_runs.py; its text+image mode:
tests/test_ti2v_text_image.py.)
"""

import json

import pytest
import torch

from fgrpo.models.wan import PRESETS, load_wan
from fgrpo.models.wan.presets import vae_latent_shape
from fgrpo.planner.spec import ModelSpec
from fgrpo.recipe.config import ModelConfig, PromptsConfig, Recipe, RolloutConfig
from fgrpo.recipe.validate import recipe_problems
from fgrpo.trainer.rollout import NoiseConfig, sample
from tests.helpers.pipeline_parity import CFG, STEPS, parity_inputs, pipeline_latents, pipeline_sigmas

PRESET = PRESETS["tiny-ti2v"]
FRAMES, SIZE = 5, 64  # 2 latent frames of 4 x 4: a patch grid of 2 x 2 x 2 = 8 tokens


def test_folder_has_wan22_ti2v_structure(tiny_ti2v_model_dir):
    index = json.loads((tiny_ti2v_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and index["expand_timesteps"] is True
    vae = json.loads((tiny_ti2v_model_dir / "vae" / "config.json").read_text())
    assert vae["is_residual"] is True and vae["patch_size"] == 2 and vae["in_channels"] == vae["out_channels"] == 12
    assert (vae["scale_factor_spatial"], vae["scale_factor_temporal"]) == (16, 4)
    assert len(vae["latents_mean"]) == len(vae["latents_std"]) == vae["z_dim"] == PRESET.latent_channels
    transformer = json.loads((tiny_ti2v_model_dir / "transformer" / "config.json").read_text())
    assert transformer["in_channels"] == transformer["out_channels"] == vae["z_dim"]
    # The preset (what validation and the planner read) describes this folder.
    folder = ModelSpec.from_folder(tiny_ti2v_model_dir)
    spec = ModelSpec.from_preset("tiny-ti2v")
    assert {k: folder.transformer[k] for k in spec.transformer} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in spec.transformer.items()
    }
    assert {k: folder.vae[k] for k in spec.vae if not k.startswith("latents_")} == {
        k: v for k, v in spec.vae.items() if not k.startswith("latents_")
    }
    assert {k: folder.text_encoder[k] for k in spec.text_encoder} == spec.text_encoder


@pytest.mark.parametrize("frames, height, width", [(5, 64, 64), (9, 64, 96)])
def test_vae_latent_shape_and_16x_round_trip(tiny_ti2v_model_dir, frames, height, width):
    m = load_wan(tiny_ti2v_model_dir, "float32", max_text_tokens=16)
    shape = vae_latent_shape(m.vae.config, frames, height, width)
    assert shape == PRESET.latent_shape(frames, height, width)
    assert shape == (PRESET.latent_channels, (frames - 1) // 4 + 1, height // 16, width // 16)
    video = torch.rand(1, 3, frames, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latent = m.vae.encode(video, return_dict=False)[0].mode()
    assert tuple(latent.shape) == (1, *shape)
    frames_out = m.decode(torch.randn(2, *shape, generator=torch.Generator().manual_seed(1)))
    assert frames_out.shape == (2, frames, 3, height, width)
    assert 0 <= frames_out.min() and frames_out.max() <= 1
    # A reward sees the policy only if other latents decode to other colours.
    assert frames_out.mean(dim=(1, 3, 4)).std(dim=0).max() > 0.01


def test_decode_applies_the_folders_latent_normalisation(tiny_ti2v_model_dir):
    m = load_wan(tiny_ti2v_model_dir, "float32", max_text_tokens=16)
    cfg = m.vae.config
    assert any(abs(v) > 0.01 for v in cfg["latents_mean"]) and any(abs(v - 1) > 0.01 for v in cfg["latents_std"])
    z = torch.randn(1, *vae_latent_shape(cfg, FRAMES, SIZE, SIZE), generator=torch.Generator().manual_seed(2))
    mean = torch.tensor(cfg["latents_mean"]).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg["latents_std"]).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        raw = m.vae.decode(z * std + mean, return_dict=False)[0]
    expected = (raw.clamp(-1, 1) * 0.5 + 0.5).permute(0, 2, 1, 3, 4)
    assert torch.equal(m.decode(z), expected)


# The per-token timestep [B, seq] of WanPipeline(expand_timesteps=True), all equal to the video's t
# without an image, against the scalar [B] that fgrpo feeds. Only the time embedder's batch shape
# differs (B x seq rows instead of B), so only GEMM summation order can: fp32 measured 4.2e-7 on this
# CPU, bf16 measured 0 (its modulation is computed in the fp32 time embedder, then cast the same).
# Tolerances: fp32 1e-5; bf16 0.02, one bf16 ulp at the outputs' magnitude (~2).
EXPANDED_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 0.02}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_expanded_timesteps_equal_the_scalar_timestep(tiny_ti2v_model_dir, dtype):
    from diffusers import WanTransformer3DModel

    transformer = WanTransformer3DModel.from_pretrained(tiny_ti2v_model_dir, subfolder="transformer", torch_dtype=dtype)
    transformer.eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, *PRESET.latent_shape(FRAMES, SIZE, SIZE), generator=gen).to(dtype)
    text = torch.randn(2, 16, PRESET.text_dim, generator=gen).to(dtype)
    t = torch.tensor([900.0, 300.0])
    # As the pipeline builds it: a timestep per token of the patch grid (mask[0][0][:, ::2, ::2] * t).
    seq = len(torch.ones(x.shape[2:])[:, ::2, ::2].flatten())
    assert seq == 8
    with torch.no_grad():
        scalar = transformer(x, t, text, return_dict=False)[0].float()
        expanded = transformer(x, t[:, None].expand(2, seq), text, return_dict=False)[0].float()
    assert (scalar - expanded).abs().max().item() <= EXPANDED_TOLERANCE[dtype]
    # Not vacuous: the per-token path reads every token's timestep. The first frame's 4 tokens at
    # t = 0 (what an image condition would set) change the output far beyond the tolerance.
    first_frame_clean = t[:, None].expand(2, seq).clone()
    first_frame_clean[:, :4] = 0.0
    with torch.no_grad():
        image_like = transformer(x, first_frame_clean, text, return_dict=False)[0].float()
    print(
        f"{dtype}: |scalar - expanded| = {(scalar - expanded).abs().max().item():.3g}, first frame at t=0 moves "
        f"{(scalar - image_like).abs().max().item():.3g}"
    )
    assert (scalar - image_like).abs().max().item() > 10 * EXPANDED_TOLERANCE[dtype]


def test_ode_sampler_equals_the_expand_timesteps_pipeline(tiny_ti2v_model_dir):
    """fgrpo's sampler with no SDE step on the pipeline's own sigma grid, same noise, text and
    guidance, against WanPipeline with expand_timesteps=True (its per-token timesteps, separate
    conditional and unconditional passes). fp32; measured 7.5e-7 after 4 steps, tolerance 1e-5."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_ti2v_model_dir)
    assert pipe.config["expand_timesteps"]
    inputs = parity_inputs(PRESET, FRAMES, SIZE)
    x0, text, negative, steps, cfg = inputs.x0, inputs.text, inputs.negative, STEPS, CFG
    expected = pipeline_latents(pipe, inputs, FRAMES, SIZE)
    sigmas = pipeline_sigmas(pipe)
    no_sde = torch.zeros(1, steps, dtype=torch.bool)
    got, transitions = sample(
        pipe.transformer, x0, text, negative, sigmas, no_sde, NoiseConfig("wan", 0.0), cfg, [torch.Generator()], 1
    )
    assert len(transitions) == 0
    assert (got - expected).abs().max().item() <= 1e-5
    assert (expected - x0).abs().max().item() > 1.0  # the sampler moved the latents


def _recipe(tmp_path, preset: str, image: bool) -> Recipe:
    lines = [{"prompt": f"a red ball {i}"} for i in range(6)]
    if image:
        lines[3]["image"] = "frame3.png"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return Recipe(
        model=ModelConfig(preset=preset),  # type: ignore[arg-type]
        rollout=RolloutConfig(height=SIZE, width=SIZE, frames=FRAMES, prompts_per_step=2),
        prompts=PromptsConfig(file=str(prompts), heldout=2),
    )


def test_tiny_ti2v_is_built_by_fgrpo_when_no_path_is_given(tmp_path):
    from fgrpo.models.model_folder import model_folder

    recipe = _recipe(tmp_path, "tiny-ti2v", image=False)
    assert not [e for e in recipe_problems(recipe, 1) if e.startswith("model.path")]
    assert model_folder(recipe.model, build=False).name.startswith("tiny-ti2v-")
