"""Per-expert guidance (rollout.cfg_scale_2): each step of a two-expert model guided at its expert's
scale, as diffusers' WanPipeline does with guidance_scale and guidance_scale_2; the same scales in
the rollout and in the training pass's log-probs; refused with the field named where there is no
second expert; the Wan2.2 A14B recipes at their official per-expert scales.

Suite cost: a few CPU-seconds (the tiny two-expert folder, once per session; 4-step samples of
8-token videos).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from fgrpo.algorithm import wan_sigmas
from fgrpo.models.wan import PRESETS
from fgrpo.models.wan.experts import WanExperts, step_experts, step_guidance_scales
from fgrpo.recipe.config import LoraConfig, ModelConfig, PromptsConfig, Recipe, RolloutConfig, TimestepConfig
from fgrpo.recipe.io import load_recipe_file
from fgrpo.recipe.validate import recipe_problems
from fgrpo.trainer.rollout import NoiseConfig, rowwise_velocity, sample, transition_log_prob, velocity
from tests.conftest import REPO, run_fgrpo
from tests.helpers.pipeline_parity import CFG, STEPS, parity_inputs, pipeline_latents, pipeline_sigmas

PRESET = PRESETS["tiny-a14b"]
FRAMES, SIZE = 5, 32  # 2 latent frames of 4 x 4: 8 tokens
TOLERANCE = 1e-5  # fp32, as the other sampler-parity tests (tests/test_tiny_a14b.py)


def test_each_step_takes_its_experts_scale():
    """The tiny grid (8 steps, shift 1, boundary 0.7): steps 0-2 high noise, 3-7 low."""
    sigmas = wan_sigmas(8, 1.0)
    assert step_experts(sigmas, 0.7) == [0, 0, 0, 1, 1, 1, 1, 1]
    assert step_guidance_scales(sigmas, 0.7, 4.0, 3.0) == (4.0, 4.0, 4.0, 3.0, 3.0, 3.0, 3.0, 3.0)
    assert step_guidance_scales(sigmas, 0.7, 4.0, None) == (4.0,) * 8  # diffusers: guidance_scale_2 = guidance_scale
    assert step_guidance_scales(sigmas, None, 4.0, 3.0) == (4.0,) * 8  # one transformer: every step its


def test_policy_guidance_is_per_step_only_when_the_experts_differ():
    from fgrpo.trainer.policy import Policy

    unused: Any = None
    sigmas = wan_sigmas(8, 1.0)

    def policy(scale_2, boundary):
        # the boundary is the model's: a WanExperts transformer's (here of two stand-in modules)
        transformer = WanExperts(torch.nn.Identity(), torch.nn.Identity(), boundary) if boundary else None
        components: Any = SimpleNamespace(transformer=transformer)
        return Policy(
            components, unused, unused, unused, torch.device("cpu"), sigmas, unused, 4.0, (16, 2, 4, 4),
            cfg_scale_2=scale_2,
        )  # fmt: skip

    assert policy(None, 0.7).guidance() == 4.0 and policy(4.0, 0.7).guidance() == 4.0
    assert policy(3.0, 0.7).guidance() == step_guidance_scales(sigmas, 0.7, 4.0, 3.0)
    evaluation = wan_sigmas(2, 1.0)  # another grid (eval.steps): its own steps' experts
    assert policy(3.0, 0.7).guidance(evaluation) == step_guidance_scales(evaluation, 0.7, 4.0, 3.0) == (4.0, 3.0)


def _pipe(folder):
    from diffusers import WanPipeline

    return WanPipeline.from_pretrained(folder)


def _experts(pipe) -> WanExperts:
    return WanExperts(pipe.transformer, pipe.transformer_2, pipe.config["boundary_ratio"]).eval()


@pytest.mark.parametrize("scale_2", [3.0, 1.0])
def test_ode_sampler_equals_wan_pipeline_with_guidance_scale_2(tiny_a14b_model_dir, scale_2):
    """fgrpo's deterministic sampler through WanExperts with cfg_scale = CFG on the high-noise steps and
    cfg_scale_2 on the low-noise ones equals WanPipeline(guidance_scale=CFG, guidance_scale_2=...) on its
    own grid (4 steps, shift 3: two at each expert), same noise and text; fp32, within 1e-5. At scale 1
    fgrpo runs the conditional pass alone where the pipeline computes v_u + 1 (v_c - v_u)."""
    pipe = _pipe(tiny_a14b_model_dir)
    inputs = parity_inputs(PRESET, FRAMES, SIZE)
    expected = pipeline_latents(pipe, inputs, FRAMES, SIZE, guidance_scale_2=scale_2)
    sigmas = pipeline_sigmas(pipe)
    assert step_experts(sigmas, 0.7) == [0, 0, 1, 1]
    scales = step_guidance_scales(sigmas, 0.7, CFG, scale_2)
    no_sde, noise = torch.zeros(1, STEPS, dtype=torch.bool), NoiseConfig("wan", 0.0)
    args = (inputs.x0, inputs.text, inputs.negative, sigmas, no_sde, noise)
    got, _ = sample(_experts(pipe), *args, scales, [torch.Generator()], 1)
    diff = (got - expected).abs().max().item()
    print(f"two-expert sampler, guidance ({CFG}, {scale_2}) vs WanPipeline: {diff:.3g}")
    assert diff <= TOLERANCE
    # Not vacuous: one scale for every step ends elsewhere.
    one_scale, _ = sample(_experts(pipe), *args, CFG, [torch.Generator()], 1)
    assert (one_scale - expected).abs().max().item() > 100 * TOLERANCE


def test_a_mixed_micro_batch_guides_each_row_at_its_scale(tiny_a14b_model_dir):
    """The training pass's velocity of rows of both experts in one call equals each row's own
    `velocity` at its scale (3 rows: high noise at 2, low noise at 3, low noise at 1)."""
    experts = _experts(_pipe(tiny_a14b_model_dir))
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, *PRESET.latent_shape(FRAMES, SIZE, SIZE), generator=gen)
    text, neg = torch.randn(2, 3, 16, PRESET.text_dim, generator=gen)
    sigma, scales = torch.tensor([0.9, 0.4, 0.2]), [2.0, 3.0, 1.0]
    with torch.no_grad():
        mixed = rowwise_velocity(experts, x, sigma, text, neg, scales)
        for b, s in enumerate(scales):
            alone = velocity(experts, x[b : b + 1], sigma[b : b + 1], text[b : b + 1], neg[b : b + 1], s)
            assert (mixed[b : b + 1] - alone).abs().max().item() <= TOLERANCE, b
        uniform = rowwise_velocity(experts, x, sigma, text, neg, [2.0] * 3)  # one scale: `velocity` itself
        assert torch.equal(uniform, velocity(experts, x, sigma, text, neg, 2.0))


def test_training_log_probs_take_the_rollouts_scales(tiny_a14b_model_dir):
    """Transitions sampled at a high-noise step (video 0) and a low-noise step (video 1) with two scales:
    recomputed by transition_log_prob with the same per-step scales, each log-prob is the rollout's
    (an on-policy ratio of 1); with one scale for both experts the low-noise one's is not."""
    experts = _experts(_pipe(tiny_a14b_model_dir))
    gen = torch.Generator().manual_seed(7)
    x0 = torch.randn(2, *PRESET.latent_shape(FRAMES, SIZE, SIZE), generator=gen)
    text, neg = torch.randn(2, 2, 16, PRESET.text_dim, generator=gen)
    sigmas = wan_sigmas(8, 1.0)
    scales = step_guidance_scales(sigmas, 0.7, 2.0, 3.0)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, 1] = mask[1, 5] = True  # step 1: high noise; step 5: low noise
    noise = NoiseConfig("wan", 0.7)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    with torch.no_grad():
        _, trans = sample(experts, x0, text, neg, sigmas, mask, noise, scales, gens, 2)
        assert trans.step.tolist() == [1, 5]
        same = transition_log_prob(experts, trans, text, neg, sigmas, noise, scales).log_prob
        one_scale = transition_log_prob(experts, trans, text, neg, sigmas, noise, 2.0).log_prob
    assert (same - trans.log_prob).abs().max().item() <= 1e-3 * trans.log_prob.abs().max().item()
    assert abs(one_scale[0] - same[0]) <= 1e-3 * abs(same[0])  # the high-noise step: cfg_scale either way
    assert abs(one_scale[1] - same[1]) > 10 * abs(same[1] - trans.log_prob[1])


def _recipe(tmp_path, preset: str = "tiny-a14b", **rollout) -> Recipe:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a red ball {i}\n" for i in range(6)))
    return Recipe(
        model=ModelConfig(preset=preset, max_text_tokens=16),  # type: ignore[arg-type]
        rollout=RolloutConfig(
            height=SIZE, width=SIZE, frames=FRAMES, steps=8, flow_shift=1.0, prompts_per_step=2, **rollout
        ),
        timesteps=TimestepConfig(window=(1, 6)),
        lora=LoraConfig(experts="both"),
        prompts=PromptsConfig(file=str(prompts), heldout=2),
    )


def _fields(recipe: Recipe) -> list[str]:
    return [e.split(":", 1)[0] for e in recipe_problems(recipe, world_size=1)]


def test_cfg_scale_2_is_validated_with_the_field_named(tmp_path):
    assert _fields(_recipe(tmp_path, cfg_scale_2=3.0)) == []
    assert _fields(_recipe(tmp_path, cfg_scale_2=1.0)) == []  # the low-noise steps unguided
    (err,) = recipe_problems(_recipe(tmp_path, cfg_scale_2=-1.0), world_size=1)
    assert err.startswith("rollout.cfg_scale_2: must be in [0, inf)")
    assert _fields(_recipe(tmp_path, cfg_scale_2=float("nan"))) == ["rollout.cfg_scale_2"]
    # one transformer: no low-noise expert to guide, refused before launch from the preset
    (err,) = recipe_problems(_recipe(tmp_path, preset="tiny", cfg_scale_2=3.0), world_size=1)
    assert err.startswith("rollout.cfg_scale_2: ") and "one transformer" in err
    assert _fields(_recipe(tmp_path, preset="tiny")) == []  # unset: fine


@pytest.mark.parametrize("name", ["wan2_2_t2v_a14b", "wan2_2_i2v_a14b"])
def test_two_expert_recipes_guide_each_expert_at_its_official_scale(name):
    """Wan2.2's sample_guide_scale is (low noise, high noise) (presets.py's Sampling.guidance)."""
    recipe = load_recipe_file(REPO / "recipes" / f"{name}.py")
    sampling = PRESETS[recipe.model.preset].sampling
    assert sampling is not None and isinstance(sampling.guidance, tuple)
    low, high = sampling.guidance
    assert (recipe.rollout.cfg_scale, recipe.rollout.cfg_scale_2) == (high, low)
    assert not [p for p in recipe_problems(recipe, 32) if p.startswith("rollout.")]


def test_cfg_scale_2_on_the_command_line():
    """`--rollout.cfg-scale-2` reaches the recipe; the tiny recipe's one transformer refuses it, named."""
    res = run_fgrpo("show", "recipes/tiny.py", "--rollout.cfg-scale-2", "3")
    assert res.returncode != 0 and "rollout.cfg_scale_2: " in res.stderr and "one transformer" in res.stderr, res.stderr


def test_planner_counts_one_pass_for_a_step_at_scale_1(tmp_path):
    """A step at guidance scale 1 is one transformer pass, a guided one two (fgrpo.planner.guidance)."""
    from fgrpo.planner.guidance import measured_scale, step_passes, transition_passes
    from fgrpo.planner.plan import rollout_evaluations

    recipe = _recipe(tmp_path, cfg_scale=2.0, cfg_scale_2=1.0)
    assert step_passes(recipe, 8) == [2, 2, 2, 1, 1, 1, 1, 1] and measured_scale(recipe) == 2.0
    assert rollout_evaluations(recipe) == 8 and rollout_evaluations(recipe, step_passes(recipe, 8)) == 11
    assert transition_passes(recipe) == Fraction(2 + 2 + 1 + 1 + 1, 5)  # window (1, 6), uniform
    # the high-noise steps unguided, the low-noise ones guided: the phases measure a guided forward
    swapped = dataclasses.replace(recipe, rollout=dataclasses.replace(recipe.rollout, cfg_scale=1.0, cfg_scale_2=3.0))
    assert step_passes(swapped, 8) == [1, 1, 1, 2, 2, 2, 2, 2] and measured_scale(swapped) == 3.0
    unguided = dataclasses.replace(recipe, rollout=dataclasses.replace(recipe.rollout, cfg_scale=1.0))
    assert step_passes(unguided, 8) == [1] * 8 and measured_scale(unguided) == 1.0
