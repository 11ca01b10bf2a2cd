"""Two experts (issue 23 point 2) on the tiny two-expert model (fgrpo/models/wan/tiny_a14b.py): its
folder is what `WanPipeline` loads with `transformer_2` and `boundary_ratio`; the expert rule is
diffusers' (the experts WanPipeline itself runs, step by step); a mixed batch goes row by row to its
expert; fgrpo's deterministic sampler ends at WanPipeline's sample; `lora.experts` is checked
against the recipe's own grid, with the field named.

Suite cost: about 15 CPU-seconds (one tiny folder per module, a few 4-step samples on 8-token videos).
(Training, resume, eval and export on it: tests/distributed/test_a14b_runs.py.)
"""

import dataclasses
import json
from typing import cast

import pytest
import torch

from fgrpo.algorithm import wan_sigmas
from fgrpo.models.wan import PRESETS
from fgrpo.models.wan.experts import WanExperts, expert_of_timestep, step_experts
from fgrpo.planner.spec import ModelSpec
from fgrpo.recipe.config import LoraConfig, ModelConfig, PromptsConfig, Recipe, RolloutConfig, TimestepConfig
from fgrpo.recipe.validate import recipe_problems
from fgrpo.trainer.rollout import NoiseConfig, sample
from tests.helpers.pipeline_parity import CFG, STEPS, parity_inputs, pipeline_latents, pipeline_sigmas

PRESET = PRESETS["tiny-a14b"]
FRAMES, SIZE = 5, 32  # 2 latent frames of 4 x 4: 8 tokens, as the tiny recipe's videos


def test_folder_is_a_two_expert_wan_pipeline_folder(tiny_a14b_model_dir):
    from diffusers import WanPipeline

    index = json.loads((tiny_a14b_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and index["boundary_ratio"] == PRESET.boundary_ratio == 0.7
    assert index["transformer_2"] == ["diffusers", "WanTransformer3DModel"]
    pipe = WanPipeline.from_pretrained(tiny_a14b_model_dir)
    assert pipe.transformer_2 is not None and pipe.config["boundary_ratio"] == 0.7
    a, b = pipe.transformer.state_dict(), pipe.transformer_2.state_dict()
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a), "the experts must differ"
    folder, spec = ModelSpec.from_folder(tiny_a14b_model_dir), ModelSpec.from_preset("tiny-a14b")
    assert folder.experts == spec.experts == 2
    assert {k: folder.transformer[k] for k in spec.transformer} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in spec.transformer.items()
    }


def test_expert_rule_is_diffusers_rule_at_the_boundary():
    """`t >= boundary_ratio * num_train_timesteps` runs `transformer`, in the timestep's float32."""
    boundary = torch.tensor(700.0)
    below = torch.nextafter(boundary, torch.tensor(0.0))
    t = torch.stack([torch.tensor(999.0), boundary, below, torch.tensor(0.5)])
    assert expert_of_timestep(t, 0.7).tolist() == [0, 0, 1, 1]
    assert expert_of_timestep(t, None).tolist() == [0, 0, 0, 0]  # one transformer: always it
    # diffusers' own expression, on the same float32 timesteps
    assert expert_of_timestep(t, 0.875).tolist() == [0 if x >= 0.875 * 1000 else 1 for x in t]
    # per-token timesteps [B, seq] (expand_timesteps): the video's
    assert expert_of_timestep(t[:, None].expand(4, 8), 0.7).tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("steps", [3, 4, 7])
def test_step_experts_are_those_wan_pipeline_runs(tiny_a14b_model_dir, steps):
    """The experts WanPipeline calls, step by step (forward hooks), against fgrpo's rule on its grid."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_a14b_model_dir)
    ran: list[int] = []
    for e, t in enumerate((pipe.transformer, pipe.transformer_2)):
        t.register_forward_pre_hook(lambda *_, e=e: ran.append(e))
    text = torch.randn(1, 1, 16, PRESET.text_dim, generator=torch.Generator().manual_seed(0))
    pipe(
        prompt_embeds=text[0],
        num_frames=FRAMES,
        height=SIZE,
        width=SIZE,
        num_inference_steps=steps,
        guidance_scale=1.0,  # no CFG: one forward per step
        output_type="latent",
    )
    sigmas = cast(torch.Tensor, pipe.scheduler.sigmas)
    assert ran == step_experts(sigmas, 0.7)
    assert set(ran) == {0, 1}, "both experts run on this grid"


def _experts(pipe) -> WanExperts:
    return WanExperts(pipe.transformer, pipe.transformer_2, pipe.config["boundary_ratio"]).eval()


def test_a_mixed_batch_goes_row_by_row_to_its_expert(tiny_a14b_model_dir):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_a14b_model_dir)
    experts = _experts(pipe)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, *PRESET.latent_shape(FRAMES, SIZE, SIZE), generator=gen)
    text = torch.randn(4, 16, PRESET.text_dim, generator=gen)
    t = torch.tensor([300.0, 900.0, 700.0, 100.0])  # low, high, high (at the boundary), low
    with torch.no_grad():
        (mixed,) = experts(x, t, text, return_dict=False)
        high = pipe.transformer(x[[1, 2]], t[[1, 2]], text[[1, 2]], return_dict=False)[0]
        low = pipe.transformer_2(x[[0, 3]], t[[0, 3]], text[[0, 3]], return_dict=False)[0]
    assert torch.equal(mixed[[1, 2]], high) and torch.equal(mixed[[0, 3]], low)
    assert not torch.equal(low, pipe.transformer(x[[0, 3]], t[[0, 3]], text[[0, 3]], return_dict=False)[0])


def test_ode_sampler_equals_the_two_expert_pipeline(tiny_a14b_model_dir):
    """fgrpo's sampler with no SDE step through WanExperts, on the pipeline's own sigma grid (4 steps
    with shift 3: two at the high-noise expert, two at the low), same noise, text and guidance
    (guidance_scale_2 = guidance_scale, as WanPipeline defaults it), against WanPipeline with
    transformer_2 and boundary_ratio. fp32; tolerance 1e-5, as the single-expert parity tests."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_a14b_model_dir)
    inputs = parity_inputs(PRESET, FRAMES, SIZE)
    x0, text, negative, steps, cfg = inputs.x0, inputs.text, inputs.negative, STEPS, CFG
    expected = pipeline_latents(pipe, inputs, FRAMES, SIZE)
    sigmas = pipeline_sigmas(pipe)
    assert step_experts(sigmas, 0.7) == [0, 0, 1, 1]
    no_sde = torch.zeros(1, steps, dtype=torch.bool)
    got, transitions = sample(
        _experts(pipe), x0, text, negative, sigmas, no_sde, NoiseConfig("wan", 0.0), cfg, [torch.Generator()], 1
    )
    assert len(transitions) == 0
    diff = (got - expected).abs().max().item()
    print(f"two-expert sampler vs WanPipeline: {diff:.3g}")
    assert diff <= 1e-5
    # Not vacuous: the high-noise expert alone for every step ends elsewhere.
    alone, _ = sample(
        pipe.transformer, x0, text, negative, sigmas, no_sde, NoiseConfig("wan", 0.0), cfg, [torch.Generator()], 1
    )
    assert (alone - expected).abs().max().item() > 100 * 1e-5


def _recipe(tmp_path, preset: str = "tiny-a14b", experts: str = "both", window=(1, 6), **rollout) -> Recipe:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a red ball {i}\n" for i in range(6)))
    return Recipe(
        model=ModelConfig(preset=preset, max_text_tokens=16),  # type: ignore[arg-type]
        rollout=RolloutConfig(
            height=SIZE, width=SIZE, frames=FRAMES, steps=8, flow_shift=1.0, prompts_per_step=2, **rollout
        ),
        timesteps=TimestepConfig(window=window),
        lora=LoraConfig(experts=experts),  # type: ignore[arg-type]
        prompts=PromptsConfig(file=str(prompts), heldout=2),
    )


def _fields(recipe: Recipe) -> list[str]:
    return [e.split(":", 1)[0] for e in recipe_problems(recipe, world_size=1)]


def test_tiny_recipe_grid_splits_at_step_3():
    """The tiny recipe's grid (8 steps, shift 1): steps 0-2 high noise, 3-7 low (the preset's comment)."""
    assert step_experts(wan_sigmas(8, 1.0), 0.7) == [0, 0, 0, 1, 1, 1, 1, 1]


def test_lora_experts_is_checked_against_the_recipes_grid(tmp_path):
    assert _fields(_recipe(tmp_path)) == []  # both experts, window (1, 6) reaches both
    assert _fields(_recipe(tmp_path, experts="high", window=(1, 3))) == []
    assert _fields(_recipe(tmp_path, experts="low", window=(3, 8))) == []
    # a window that draws a frozen expert's steps: refused naming the window and those steps
    (err,) = recipe_problems(_recipe(tmp_path, experts="high"), world_size=1)
    assert err.startswith("timesteps.window: (1, 6) draws steps [3, 4, 5]") and "steps 0-2" in err
    # ... unless their weight is 0 (never drawn)
    weighted = _recipe(tmp_path, experts="high")
    weighted = dataclasses.replace(weighted, timesteps=TimestepConfig(window=(1, 6), weights=(1.0, 1.0, 0, 0, 0)))
    assert _fields(weighted) == []
    # a trained expert the window never reaches: refused naming lora.experts
    (err,) = recipe_problems(_recipe(tmp_path, window=(0, 3)), world_size=1)
    assert err.startswith("lora.experts: both trains the low-noise expert")
    # full-trajectory takes every step: both experts
    full = _recipe(tmp_path, experts="high", window=(0, 3))
    full = dataclasses.replace(full, algorithm=dataclasses.replace(full.algorithm, mode="full-trajectory"))
    assert _fields(full) == ["lora.experts"]
    # one transformer: only `both`
    assert _fields(_recipe(tmp_path, preset="tiny", experts="high")) == ["lora.experts"]
    # what fgrpo does not implement for two experts, named
    assert _fields(_recipe(tmp_path, share_prefix=True)) == ["rollout.share_prefix"]


def test_tiny_a14b_is_built_by_fgrpo_when_no_path_is_given(tmp_path):
    from fgrpo.models.model_folder import model_folder

    recipe = _recipe(tmp_path)
    assert not [e for e in recipe_problems(recipe, 1) if e.startswith("model.")]
    assert model_folder(recipe.model, build=False).name.startswith("tiny-a14b-")
