"""Wan2.1 image-to-video (issue 23 point 4) on the tiny I2V architecture (fgrpo/models/wan/tiny_i2v.py):
its folder is what `WanImageToVideoPipeline` loads, prompt files with images are checked before
launch (each bad record named by file and line), the conditions are cached once per prompt, and
fgrpo's sampler gives the transformer exactly the pipeline's inputs and ends at the pipeline's sample.

Suite cost: about 15 CPU-seconds (one tiny folder per session, one `fgrpo launch` refused at
validation, a 4-step parity run on 8-token videos).
(Training, resume, eval and export on it: tests/distributed/test_i2v_runs.py.)
"""

import json
from typing import cast

import pytest
import torch

from fgrpo.models.wan import PRESETS
from fgrpo.models.wan.presets import vae_latent_shape
from fgrpo.planner.spec import ModelSpec
from fgrpo.recipe.config import ModelConfig, PromptsConfig, Recipe, RolloutConfig
from fgrpo.recipe.validate import recipe_problems
from fgrpo.trainer.rollout import NoiseConfig, sample
from tests.conftest import REPO, run_fgrpo
from tests.helpers.image_prompts import write_image, write_image_prompts

PRESET = PRESETS["tiny-i2v"]
FRAMES, SIZE = 5, 32  # 2 latent frames of 4 x 4: 8 tokens, as the tiny recipe's videos


def test_folder_is_a_wan21_i2v_pipeline_folder(tiny_i2v_model_dir):
    index = json.loads((tiny_i2v_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "WanImageToVideoPipeline"
    assert index["image_encoder"] == ["transformers", "CLIPVisionModel"]
    transformer = json.loads((tiny_i2v_model_dir / "transformer" / "config.json").read_text())
    assert (transformer["in_channels"], transformer["out_channels"]) == (36, 16)  # 16 + 4 mask + 16 image latent
    clip = json.loads((tiny_i2v_model_dir / "image_encoder" / "config.json").read_text())
    assert clip["hidden_size"] == transformer["image_dim"] == PRESET.image_dim
    assert transformer["added_kv_proj_dim"] == PRESET.width  # as 14B's 5120 = 40 heads x 128
    assert (tiny_i2v_model_dir / "image_processor" / "preprocessor_config.json").is_file()
    # The preset (what validation and the planner read) describes this folder.
    folder, spec = ModelSpec.from_folder(tiny_i2v_model_dir), ModelSpec.from_preset("tiny-i2v")
    assert {k: folder.transformer[k] for k in spec.transformer} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in spec.transformer.items()
    }


def _recipe(prompts, **model) -> Recipe:
    return Recipe(
        model=ModelConfig(preset="tiny-i2v", max_text_tokens=512, **model),
        rollout=RolloutConfig(height=SIZE, width=SIZE, frames=FRAMES, prompts_per_step=2, group_size=2),
        prompts=PromptsConfig(file=str(prompts), heldout=1),
    )


def _prompt_problems(recipe: Recipe) -> list[str]:
    return [e for e in recipe_problems(recipe, world_size=1) if e.startswith("prompts.")]


def test_a_good_image_prompt_file_is_accepted_and_the_model_built_when_no_path_is_given(tmp_path):
    from fgrpo.models.model_folder import model_folder

    recipe = _recipe(write_image_prompts(tmp_path, 4, (SIZE, SIZE)))
    assert [e for e in recipe_problems(recipe, world_size=1)] == []
    assert model_folder(recipe.model, build=False).name.startswith("tiny-i2v-")


def test_each_bad_image_record_is_named_with_its_file_and_line(tmp_path):
    good = write_image(tmp_path / "good.png", (SIZE, SIZE), (200, 0, 0))
    other = write_image(tmp_path / "sub" / "other.png", (SIZE, SIZE), (0, 200, 0))
    write_image(tmp_path / "wide.png", (48, SIZE), (0, 0, 200))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    records = [
        {"prompt": "fine", "image": "good.png"},  # line 1
        None,  # line 2: blank
        {"prompt": "no image"},  # 3
        {"prompt": "missing", "image": "nowhere.png"},  # 4
        {"prompt": "unreadable", "image": "broken.png"},  # 5
        {"prompt": "wrong size", "image": "wide.png"},  # 6
        {"prompt": "fine", "image": "sub/other.png"},  # 7: line 1's text, another image
        {"prompt": "fine again", "image": str(other)},  # 8: absolute path
        {"prompt": "not a path", "image": 3},  # 9
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join("\n" if r is None else json.dumps(r) + "\n" for r in records))
    problems = _prompt_problems(_recipe(prompts))
    by_line = {int(p.split(f"{prompts}:", 1)[1].split(":", 1)[0]): p for p in problems}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 9], problems
    assert all(p.startswith(f"prompts.file: {prompts}:") for p in problems)
    assert "no `image` field" in by_line[3]
    assert f"image {tmp_path / 'nowhere.png'} does not exist" in by_line[4]
    assert f"image {tmp_path / 'broken.png'} cannot be read as an image" in by_line[5]
    assert f"image {tmp_path / 'wide.png'} is 48x{SIZE} pixels" in by_line[6] and f"{SIZE}x{SIZE}" in by_line[6]
    assert "the prompt of line 1 again, with another image" in by_line[7]
    assert "must be a path" in by_line[9]
    assert good.is_file()


def test_a_text_only_prompt_file_is_refused_naming_prompts_file(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball\na green ball\na blue ball\n")
    (problem,) = _prompt_problems(_recipe(prompts))
    assert problem.startswith(f"prompts.file: {prompts} holds text only") and "tiny-i2v" in problem
    # A text-to-video model takes the same file.
    recipe = _recipe(prompts)
    t2v = Recipe(model=ModelConfig(preset="tiny"), rollout=recipe.rollout, prompts=recipe.prompts)
    assert _prompt_problems(t2v) == []


def test_launch_exits_2_before_writing_anything(tmp_path):
    prompts = write_image_prompts(tmp_path, 4, (SIZE, SIZE))
    write_image(tmp_path / "images" / "2.png", (SIZE, 2 * SIZE), (0, 0, 0))  # line 3's image, now 32x64
    runs = tmp_path / "runs"
    res = run_fgrpo(
        "launch",
        str(REPO / "recipes" / "tiny.py"),
        "--model.preset",
        "tiny-i2v",
        "--model.max-text-tokens",
        "512",
        "--prompts.file",
        str(prompts),
        "--prompts.heldout",
        "1",
        "--logging.runs-dir",
        str(runs),
        cwd=tmp_path,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert f"prompts.file: {prompts}:3: image {tmp_path / 'images' / '2.png'} is {SIZE}x{2 * SIZE}" in res.stderr
    assert not runs.exists()


def _conditions(folder, vae, images: dict, cache_root):
    from fgrpo.models.wan.image_cache import ImageConditionCache

    shape = vae_latent_shape(vae.config, FRAMES, SIZE, SIZE)
    return ImageConditionCache.build(
        folder, vae, images, (FRAMES, SIZE, SIZE), shape, True, cache_root, "cpu", torch.float32
    )


def _first_call_inputs(transformer, run) -> tuple[torch.Tensor, list[dict]]:
    """`run()`'s result and the transformer's inputs (hidden states, image features) of each call it makes."""
    calls = []

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        calls.append({"hidden": hidden.clone(), "image": kwargs["encoder_hidden_states_image"].clone()})

    handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        return run(), calls
    finally:
        handle.remove()


def test_sampler_gives_the_transformer_the_i2v_pipelines_inputs(tiny_i2v_model_dir, tmp_path):
    """Same image, noise, text and guidance, the pipeline's own sigma grid, no SDE step, fp32:
    fgrpo's first forward (conditional and unconditional halves in one batch) gets exactly the
    36-channel input and CLIP features of WanImageToVideoPipeline's first two calls, and its ODE
    sample after 4 steps is the pipeline's within 1e-5 (measured 7.8e-7: the CFG halves are one
    batch in fgrpo, two calls in the pipeline). Under the rollout's cross-attention cache, which
    steps aside for image attention."""
    from diffusers import WanImageToVideoPipeline

    from fgrpo.data.image_prompts import load_image
    from fgrpo.models.wan.cross_attention_cache import cached_text_projections
    from fgrpo.models.wan.image_condition import ImageCondition

    pipe = WanImageToVideoPipeline.from_pretrained(tiny_i2v_model_dir)
    prompts = write_image_prompts(tmp_path, 2, (SIZE, SIZE))
    images = {f"a ball, scene {i}": prompts.parent / "images" / f"{i}.png" for i in range(2)}
    cache = _conditions(tiny_i2v_model_dir, pipe.vae, images, tmp_path / "runs")
    condition = cache.lookup(["a ball, scene 0"])
    other = cache.lookup(["a ball, scene 1"])
    assert isinstance(condition, ImageCondition) and isinstance(other, ImageCondition)  # not TI2V's first frame
    assert condition.embeds is not None and other.embeds is not None
    assert not torch.equal(condition.latent[:, 4:], other.latent[:, 4:])
    assert not torch.equal(condition.embeds, other.embeds)
    assert torch.equal(condition.latent[:, :4, 0], torch.ones_like(condition.latent[:, :4, 0]))  # the first frame given
    assert not condition.latent[:, :4, 1:].any()

    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, *PRESET.latent_shape(FRAMES, SIZE, SIZE), generator=gen)
    text, negative = torch.randn(2, 1, 512, PRESET.text_dim, generator=gen)
    steps, cfg = 4, 2.0
    expected, pipe_calls = _first_call_inputs(
        pipe.transformer,
        lambda: pipe(
            load_image(images["a ball, scene 0"]),
            prompt_embeds=text,
            negative_prompt_embeds=negative,
            latents=x0.clone(),
            height=SIZE,
            width=SIZE,
            num_frames=FRAMES,
            num_inference_steps=steps,
            guidance_scale=cfg,
            output_type="latent",
            return_dict=False,
        )[0],
    )
    sigmas = cast(torch.Tensor, pipe.scheduler.sigmas)
    no_sde = torch.zeros(1, steps, dtype=torch.bool)

    def ours():
        with cached_text_projections(pipe.transformer):
            return sample(
                pipe.transformer, x0, text, negative, sigmas, no_sde, NoiseConfig("wan", 0.0), cfg,
                [torch.Generator()], 1, image=condition,
            )[0]  # fmt: skip

    got, our_calls = _first_call_inputs(pipe.transformer, ours)
    assert len(pipe_calls) == 2 * steps and len(our_calls) == steps
    first = our_calls[0]
    assert first["hidden"].shape[1] == 36
    assert torch.equal(first["hidden"], torch.cat([pipe_calls[0]["hidden"], pipe_calls[1]["hidden"]]))
    assert torch.equal(first["image"], torch.cat([pipe_calls[0]["image"], pipe_calls[1]["image"]]))
    err = (got - expected).abs().max().item()
    print(f"\nI2V ODE sample vs WanImageToVideoPipeline after {steps} steps: max |diff| = {err:.3g}")
    assert err <= 1e-5
    assert (expected - x0).abs().max().item() > 1.0  # the sampler moved the latents


def test_conditions_are_computed_once_and_keyed_by_the_image_bytes(tiny_i2v_model_dir, tmp_path, monkeypatch):
    from fgrpo.models.wan import image_cache, load_wan

    vae = load_wan(tiny_i2v_model_dir, "float32", max_text_tokens=16, with_text_encoder=False).vae
    prompts = write_image_prompts(tmp_path, 2, (SIZE, SIZE))
    images = {f"a ball, scene {i}": prompts.parent / "images" / f"{i}.png" for i in range(2)}
    first = _conditions(tiny_i2v_model_dir, vae, images, tmp_path / "runs")
    assert first.clip is not None
    assert first.latent.encoded == first.clip.encoded == 3  # the 2 prompts and the (empty) negative prompt

    def no_encoder(*_):
        raise AssertionError("the CLIP encoder was loaded although its cache is complete")

    monkeypatch.setattr(image_cache, "load_image_encoder", no_encoder)
    again = _conditions(tiny_i2v_model_dir, vae, images, tmp_path / "runs")
    assert again.clip is not None
    assert again.latent.encoded == again.clip.encoded == 0 and again.latent.folder == first.latent.folder
    assert torch.equal(again.lookup(list(images)).latent, first.lookup(list(images)).latent)
    with pytest.raises(KeyError, match="a red ball"):
        first.lookup(["a red ball"])
    write_image(images["a ball, scene 1"], (SIZE, SIZE), (1, 2, 3))  # an edited image: a new key
    monkeypatch.undo()
    edited = _conditions(tiny_i2v_model_dir, vae, images, tmp_path / "runs")
    assert edited.latent.folder != first.latent.folder and edited.latent.encoded == 3


def test_samples_show_the_condition_image_beside_each_prompts_videos(tmp_path):
    """write_samples with the prompts' images: each prompt's video row starts with its image standing
    still, the captioned grid's cell has it on the left, and the index names the file."""
    from fgrpo.media import read_video
    from fgrpo.run_folder.samples import SampleFolder
    from fgrpo.trainer.samples import MIN_PX, write_samples

    n, frames, h, w = 2, 3, 16, 16
    thumbs = torch.full((2 * n, frames, 3, h, w), 128, dtype=torch.uint8)  # grey videos
    images = torch.zeros(2, 3, h, w, dtype=torch.uint8)
    images[0, 0], images[1, 2] = 255, 255  # red, blue
    files = ["/data/red.png", "/data/blue.png"]
    index = write_samples(
        tmp_path, "videos", thumbs, ["p0", "p0", "p1", "p1"], torch.zeros(4), n, images=(images, files)
    )
    assert [e["image"] for e in index["videos"]] == files
    up = -(-MIN_PX // w)
    row = read_video(SampleFolder(tmp_path).video("videos", 1))
    assert row.shape[-1] == (n + 1) * w * up  # the image, then the n videos
    still, video = row[:, :, :, : w * up].mean(dim=(0, 2, 3)), row[:, :, :, w * up :].mean(dim=(0, 2, 3))
    assert still[2] > 0.8 and still[0] < 0.2, still  # blue, as prompt 1's image
    assert (video - 0.5).abs().max() < 0.1, video  # grey
    without = write_samples(tmp_path / "t2v", "videos", thumbs, ["p0", "p0", "p1", "p1"], torch.zeros(4), n)
    assert "image" not in without["videos"][0]
    assert read_video(SampleFolder(tmp_path / "t2v").video("videos", 1)).shape[-1] == n * w * up


def test_doctor_checks_the_image_encoder_of_an_i2v_folder(tiny_i2v_model_dir, tmp_path):
    import shutil

    from fgrpo.cli.doctor_files import model_folder_check

    folder = shutil.copytree(tiny_i2v_model_dir, tmp_path / "i2v")
    model = ModelConfig(preset="tiny-i2v", path=str(folder))
    ok = model_folder_check(model)
    assert ok.status == "ok" and "image_encoder" in ok.detail, ok
    shutil.rmtree(folder / "image_encoder")
    failed = model_folder_check(model)
    assert failed.status == "fail" and "image_encoder" in failed.detail, failed
