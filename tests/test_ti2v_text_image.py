"""Wan2.2-TI2V's text+image mode (issue 23 point 3) on the tiny TI2V model: the image's latent is the
first latent frame (fgrpo/models/wan/first_frame.py), as `WanImageToVideoPipeline(expand_timesteps=True)`
does it. Prompt files take either mode; fgrpo's sampler gives the transformer the pipeline's inputs and
ends at its sample; every sample's first frame is the condition; the SDE log-prob leaves it out.

Suite cost: about 15 CPU-seconds (the tiny TI2V folder of the session, 4-step samples of 8-token videos).
(Training on it, launch, stop and resume: tests/distributed/test_ti2v_runs.py.)
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from fgrpo.models.wan import PRESETS
from fgrpo.models.wan.first_frame import FirstFrameCondition
from fgrpo.models.wan.presets import vae_latent_shape
from fgrpo.recipe.config import ModelConfig, ParallelismConfig, PromptsConfig, Recipe, RolloutConfig
from fgrpo.recipe.validate import recipe_problems
from fgrpo.trainer.rollout import NoiseConfig, Transitions, sample, transition_log_prob, velocity
from tests.helpers.image_prompts import write_image, write_image_prompts
from tests.helpers.pipeline_parity import CFG, STEPS, parity_inputs, pipeline_latents, pipeline_sigmas

PRESET = PRESETS["tiny-ti2v"]
FRAMES, SIZE = 5, 64  # 2 latent frames of 4 x 4: a patch grid of 2 x 2 x 2 = 8 tokens, 4 in the first frame
NOISE = NoiseConfig("wan", 0.0)


def _recipe(prompts, sp: int = 1) -> Recipe:
    return Recipe(
        model=ModelConfig(preset="tiny-ti2v"),
        rollout=RolloutConfig(height=SIZE, width=SIZE, frames=FRAMES, prompts_per_step=2),
        prompts=PromptsConfig(file=str(prompts), heldout=2),
        parallelism=ParallelismConfig(sp=sp),
    )


def _prompt_problems(recipe: Recipe, world_size: int = 1) -> list[str]:
    return [e for e in recipe_problems(recipe, world_size) if e.startswith("prompts.")]


def test_a_text_only_file_and_an_image_per_prompt_are_both_accepted(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("".join(f"a red ball {i}\n" for i in range(6)))
    jsonl = tmp_path / "text.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": f"a red ball {i}"}) + "\n" for i in range(6)))
    images = write_image_prompts(tmp_path / "with-images", 6, (SIZE, SIZE))
    for prompts in (text, jsonl, images):
        assert _prompt_problems(_recipe(prompts)) == [], prompts


def test_image_records_are_checked_as_for_image_to_video(tmp_path):
    write_image(tmp_path / "good.png", (SIZE, SIZE), (200, 0, 0))
    write_image(tmp_path / "small.png", (32, 32), (0, 0, 200))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    records = [
        {"prompt": "fine", "image": "good.png"},  # line 1
        {"prompt": "no image"},  # 2: the file asks for text+image, so every prompt needs one
        {"prompt": "missing", "image": "nowhere.png"},  # 3
        {"prompt": "unreadable", "image": "broken.png"},  # 4
        {"prompt": "wrong size", "image": "small.png"},  # 5
        {"prompt": "fine too", "image": "good.png"},  # 6
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    problems = _prompt_problems(_recipe(prompts))
    by_line = {int(p.split(f"{prompts}:", 1)[1].split(":", 1)[0]): p for p in problems}
    assert sorted(by_line) == [2, 3, 4, 5], problems
    assert all(p.startswith(f"prompts.file: {prompts}:") for p in problems)
    assert "no `image` field" in by_line[2]
    assert f"image {tmp_path / 'nowhere.png'} does not exist" in by_line[3]
    assert f"image {tmp_path / 'broken.png'} cannot be read as an image" in by_line[4]
    assert f"image {tmp_path / 'small.png'} is 32x32 pixels" in by_line[5] and f"{SIZE}x{SIZE}" in by_line[5]
    # A text-to-video-only model: an `image` is one more field, carried into eval results.
    t2v = Recipe(model=ModelConfig(preset="tiny"), rollout=_recipe(prompts).rollout, prompts=_recipe(prompts).prompts)
    assert [e for e in recipe_problems(t2v, 1) if e.startswith("prompts.")] == []


def test_sequence_parallelism_is_accepted_in_both_modes(tmp_path):
    """The per-token timesteps of text+image are split with the tokens (fgrpo.models.wan.sequence_parallel;
    sp=2 against one process: tests/distributed/test_sequence_parallel_image.py)."""
    images = write_image_prompts(tmp_path, 6, (SIZE, SIZE))
    text = tmp_path / "prompts.txt"
    text.write_text("".join(f"a red ball {i}\n" for i in range(6)))
    for prompts in (images, text):
        assert [
            e for e in recipe_problems(_recipe(prompts, sp=2), 2) if e.startswith(("prompts.", "parallelism."))
        ] == []


@pytest.fixture(scope="module")
def conditions(tiny_ti2v_model_dir, tmp_path_factory):
    """Two prompts' first-frame conditions, through the image cache, and their image files."""
    from fgrpo.models.wan import load_wan
    from fgrpo.models.wan.image_cache import ImageConditionCache

    folder = tmp_path_factory.mktemp("ti2v-images")
    prompts = write_image_prompts(folder, 2, (SIZE, SIZE))
    images = {f"a ball, scene {i}": prompts.parent / "images" / f"{i}.png" for i in range(2)}
    vae = load_wan(tiny_ti2v_model_dir, "float32", max_text_tokens=16, with_text_encoder=False).vae
    shape = vae_latent_shape(vae.config, FRAMES, SIZE, SIZE)
    cache = ImageConditionCache.build(
        tiny_ti2v_model_dir, vae, images, (FRAMES, SIZE, SIZE), shape, False, folder / "runs", "cpu",
        torch.bfloat16, first_frame=True,
    )  # fmt: skip
    assert cache.clip is None and cache.latent.encoded == 3  # 2 prompts and the (empty) negative prompt
    return cache.lookup(list(images)), images


def _calls(transformer, run) -> tuple[torch.Tensor, list[dict]]:
    """`run()`'s result and the transformer's (hidden states, timestep) of each call it makes."""
    calls = []

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        calls.append({"hidden": hidden.clone(), "timestep": t.clone()})

    handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        return run(), calls
    finally:
        handle.remove()


def test_sampler_equals_the_expand_timesteps_image_pipeline(tiny_ti2v_model_dir, conditions):
    """Same image, noise, text and guidance, the pipeline's own sigma grid, no SDE step, fp32: fgrpo's
    first forward (both CFG halves in one batch) gets exactly the blended latents and per-token
    timesteps (the first frame's 4 tokens at 0) of WanImageToVideoPipeline(expand_timesteps=True)'s
    first two calls, and its 4-step ODE sample is the pipeline's within 1e-5 (the CFG halves are one
    batch in fgrpo, two calls in the pipeline: GEMM order only), its first frame the condition exactly."""
    from diffusers import WanImageToVideoPipeline

    from fgrpo.data.image_prompts import load_image

    condition, images = conditions
    assert isinstance(condition, FirstFrameCondition) and condition.latent.dtype == torch.float32
    assert condition.latent.shape == (2, PRESET.latent_channels, 1, SIZE // 16, SIZE // 16)
    assert not torch.equal(condition.latent[0], condition.latent[1])
    pipe = WanImageToVideoPipeline.from_pretrained(tiny_ti2v_model_dir)
    assert pipe.config["expand_timesteps"] and pipe.image_encoder is None
    inputs = parity_inputs(PRESET, FRAMES, SIZE)
    x0, text, negative, steps, cfg = inputs.x0, inputs.text, inputs.negative, STEPS, CFG
    image = load_image(images["a ball, scene 0"])
    expected, pipe_calls = _calls(pipe.transformer, lambda: pipeline_latents(pipe, inputs, FRAMES, SIZE, image))
    sigmas = pipeline_sigmas(pipe)
    no_sde = torch.zeros(1, steps, dtype=torch.bool)
    got, our_calls = _calls(
        pipe.transformer,
        lambda: sample(
            pipe.transformer, x0, text, negative, sigmas, no_sde, NOISE, cfg, [torch.Generator()], 1,
            image=condition[:1],
        )[0],
    )  # fmt: skip
    assert len(pipe_calls) == 2 * steps and len(our_calls) == steps
    first = our_calls[0]
    assert torch.equal(first["hidden"], torch.cat([pipe_calls[0]["hidden"], pipe_calls[1]["hidden"]]))
    assert torch.equal(first["timestep"], torch.cat([pipe_calls[0]["timestep"], pipe_calls[1]["timestep"]]))
    assert first["timestep"].shape == (2, 8) and not first["timestep"][:, :4].any() and first["timestep"][:, 4:].all()
    err = (got - expected).abs().max().item()
    print(f"\nTI2V text+image ODE sample vs WanImageToVideoPipeline after {steps} steps: max |diff| = {err:.3g}")
    assert err <= 1e-5
    assert torch.equal(got[:, :, :1], condition.latent[:1])
    assert (expected[:, :, 1:] - x0[:, :, 1:]).abs().max().item() > 1.0  # the sampler moved the latents


@pytest.fixture(scope="module")
def transformer(tiny_ti2v_model_dir):
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel.from_pretrained(tiny_ti2v_model_dir, subfolder="transformer")
    return model.eval().requires_grad_(False)


def test_the_first_latent_frame_of_every_sample_is_the_condition(tiny_ti2v_model_dir, conditions):
    """bf16 compute, SDE steps at several steps per video, rows starting late (the non-whole batch
    path), two micro-batches: the final latents and every recorded transition's states hold the
    image's latent as their first frame, exactly; the other frames were sampled."""
    from diffusers import WanTransformer3DModel

    condition, _ = conditions
    bf16 = WanTransformer3DModel.from_pretrained(
        tiny_ti2v_model_dir, subfolder="transformer", torch_dtype=torch.bfloat16
    )
    bf16.eval()
    cond = condition[torch.tensor([0, 1, 0])]
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, *PRESET.latent_shape(FRAMES, SIZE, SIZE), generator=gen)
    text = torch.randn(3, 16, PRESET.text_dim, generator=gen)
    negative = torch.randn(3, 16, PRESET.text_dim, generator=gen)
    sde = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    sigmas = torch.linspace(1.0, 0.0, 5)
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    finals, trans = sample(
        bf16, x0, text, negative, sigmas, sde, NOISE, 2.0, gens, 2, torch.bfloat16,
        start=torch.tensor([0, 1, 0]), image=cond,
    )  # fmt: skip
    assert len(trans) == 5
    assert torch.equal(finals[:, :, :1], cond.latent)
    assert torch.equal(trans.x[:, :, :1], cond.latent[trans.video])
    assert torch.equal(trans.x_next[:, :, :1], cond.latent[trans.video])
    assert (finals[:, :, 1:] - x0[:, :, 1:]).abs().max().item() > 1.0


def test_the_log_prob_leaves_out_the_imposed_first_frame(transformer, conditions):
    """The recomputed log pi of a recorded transition equals the sampler's exactly (on-policy ratio 1),
    equals the Gaussian log-density averaged over latent frames 1.. only, and does not move when the
    first frame of x_{i+1} does (it is imposed, not sampled), while frame 1 moves it."""
    condition, _ = conditions
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, *PRESET.latent_shape(FRAMES, SIZE, SIZE), generator=gen)
    text, negative = torch.randn(2, 1, 16, PRESET.text_dim, generator=gen)
    sde = torch.tensor([[0, 1, 0, 0]], dtype=torch.bool)
    sigmas = torch.linspace(1.0, 0.0, 5)
    args = (text, negative, sigmas, NOISE, 2.0)
    _, trans = sample(transformer, x0, text, negative, sigmas, sde, NOISE, 2.0, [gen], 1, image=condition[:1])
    again = transition_log_prob(transformer, trans, *args, image=condition[:1])
    assert torch.equal(again.log_prob, trans.log_prob)
    std = float(again.std[0])
    density = -((trans.x_next - again.mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    assert torch.allclose(again.log_prob, density[:, :, 1:].mean(dim=(1, 2, 3, 4)), rtol=0, atol=1e-5)
    assert (density.mean() - again.log_prob).abs().item() > 1e-3  # counting frame 0 would show

    def moved(frame: int) -> torch.Tensor:
        x_next = trans.x_next.clone()
        x_next[:, :, frame] += 0.5
        moved = Transitions(trans.video, trans.step, trans.x, x_next, trans.log_prob)
        return transition_log_prob(transformer, moved, *args, image=condition[:1]).log_prob

    assert torch.equal(moved(0), again.log_prob)
    assert not torch.equal(moved(1), again.log_prob)


def test_without_guidance_the_forward_still_takes_the_image(transformer, conditions):
    """cfg_scale 1 (one conditional pass): the transformer still gets the blended latents and the
    per-token timesteps (the image was dropped there before)."""
    condition, _ = conditions
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, *PRESET.latent_shape(FRAMES, SIZE, SIZE), generator=gen)
    text = torch.randn(2, 16, PRESET.text_dim, generator=gen)
    sigma = torch.tensor([0.9, 0.4])
    got = velocity(transformer, x, sigma, text, None, 1.0, torch.float32, condition)
    hidden, per_token = condition.transformer_inputs(x, (sigma * 1000.0).float(), torch.float32)
    with torch.no_grad():
        direct = transformer(hidden, per_token, text, return_dict=False)[0].float()
    assert torch.equal(got, direct)
