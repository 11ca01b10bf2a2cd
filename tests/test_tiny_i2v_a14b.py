"""Wan2.2 I2V-A14B on the tiny I2V two-expert model (fgrpo/models/wan/tiny_i2v_a14b.py): its folder is
what `WanImageToVideoPipeline` loads with `transformer_2` and `boundary_ratio` and no image encoder,
and fgrpo's deterministic sampler through the two experts with the image condition ends at that
pipeline's sample.

Suite cost: about 10 CPU-seconds (one tiny folder per session, a 4-step sample of 8-token videos).
(Training, resume, eval and export on it: tests/distributed/test_i2v_a14b_runs.py.)
"""

import json

import torch

from fgrpo.models.wan import PRESETS
from fgrpo.models.wan.experts import WanExperts, step_experts
from fgrpo.planner.spec import ModelSpec
from fgrpo.trainer.rollout import NoiseConfig, sample
from tests.helpers.image_prompts import write_image_prompts
from tests.helpers.pipeline_parity import CFG, STEPS, parity_inputs, pipeline_latents, pipeline_sigmas

PRESET = PRESETS["tiny-i2v-a14b"]
FRAMES, SIZE = 5, 32  # 2 latent frames of 4 x 4: 8 tokens, as the tiny recipe's videos


def test_folder_is_a_two_expert_i2v_pipeline_folder_without_clip(tiny_i2v_a14b_model_dir):
    from diffusers import WanImageToVideoPipeline

    index = json.loads((tiny_i2v_a14b_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "WanImageToVideoPipeline"
    assert index["boundary_ratio"] == PRESET.boundary_ratio == 0.7
    assert index["transformer_2"] == ["diffusers", "WanTransformer3DModel"]
    assert index["image_encoder"] == [None, None] and not (tiny_i2v_a14b_model_dir / "image_encoder").exists()
    for expert in ("transformer", "transformer_2"):
        config = json.loads((tiny_i2v_a14b_model_dir / expert / "config.json").read_text())
        assert (config["in_channels"], config["out_channels"], config["image_dim"]) == (36, 16, None)
    pipe = WanImageToVideoPipeline.from_pretrained(tiny_i2v_a14b_model_dir)
    assert pipe.image_encoder is None and pipe.transformer_2 is not None
    a, b = pipe.transformer.state_dict(), pipe.transformer_2.state_dict()
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a), "the experts must differ"
    folder, spec = ModelSpec.from_folder(tiny_i2v_a14b_model_dir), ModelSpec.from_preset("tiny-i2v-a14b")
    assert folder.experts == spec.experts == 2 and folder.condition_channels == spec.condition_channels == 20
    assert {k: folder.transformer[k] for k in spec.transformer} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in spec.transformer.items()
    }


def test_ode_sampler_equals_the_two_expert_i2v_pipeline(tiny_i2v_a14b_model_dir, tmp_path):
    """fgrpo's sampler with no SDE step through WanExperts and the image's condition latent (mask +
    latent, image_condition.py; no CLIP features), on the pipeline's own sigma grid (4 steps, shift 3:
    two at the high-noise expert, two at the low), same image, noise, text and guidance
    (guidance_scale_2 defaults to guidance_scale), against WanImageToVideoPipeline with transformer_2
    and boundary_ratio. fp32; tolerance 1e-5, as the other parity tests (the CFG halves are one batch
    in fgrpo, two calls in the pipeline: GEMM order only)."""
    from diffusers import WanImageToVideoPipeline

    from fgrpo.data.image_prompts import load_image
    from fgrpo.models.wan.image_condition import ImageCondition, condition_pipeline, encode_condition_latent

    pipe = WanImageToVideoPipeline.from_pretrained(tiny_i2v_a14b_model_dir)
    prompts = write_image_prompts(tmp_path, 1, (SIZE, SIZE))
    image = load_image(prompts.parent / "images" / "0.png")
    latent = encode_condition_latent(condition_pipeline(pipe.vae), image, FRAMES, SIZE, SIZE, "cpu")
    condition = ImageCondition(latent, None)
    inputs = parity_inputs(PRESET, FRAMES, SIZE)
    x0, text, negative, steps, cfg = inputs.x0, inputs.text, inputs.negative, STEPS, CFG
    expected = pipeline_latents(pipe, inputs, FRAMES, SIZE, image)
    sigmas = pipeline_sigmas(pipe)
    assert step_experts(sigmas, 0.7) == [0, 0, 1, 1]
    experts = WanExperts(pipe.transformer, pipe.transformer_2, pipe.config["boundary_ratio"]).eval()
    no_sde = torch.zeros(1, steps, dtype=torch.bool)

    def ours(model, image_condition):
        return sample(
            model, x0, text, negative, sigmas, no_sde, NoiseConfig("wan", 0.0), cfg, [torch.Generator()], 1,
            image=image_condition,
        )  # fmt: skip

    got, transitions = ours(experts, condition)
    assert len(transitions) == 0
    diff = (got - expected).abs().max().item()
    print(f"\nI2V two-expert ODE sample vs WanImageToVideoPipeline after {steps} steps: max |diff| = {diff:.3g}")
    assert diff <= 1e-5
    assert (expected - x0).abs().max().item() > 1.0  # the sampler moved the latents
    # Not vacuous: the high-noise expert alone, or another image, ends elsewhere.
    alone, _ = ours(pipe.transformer, condition)
    assert (alone - expected).abs().max().item() > 100 * 1e-5
    blank = ImageCondition(torch.cat([latent[:, :4], torch.zeros_like(latent[:, 4:])], dim=1), None)
    assert (ours(experts, blank)[0] - expected).abs().max().item() > 100 * 1e-5
