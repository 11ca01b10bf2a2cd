"""The Wan2.2 and image-to-video recipes: the preset's official sampling settings, refused before
launch with the field named when the model folder is missing, and planned. The two-expert recipes
train the high-noise expert their window reaches (lora.experts=high). The image-to-video recipes name
no prompt file with images: the default text-only one is refused (prompts.file)."""

import dataclasses

import pytest

from fgrpo.algorithm.schedule import wan_sigmas
from fgrpo.models.wan.presets import PRESETS
from fgrpo.planner.plan import planning_problems
from fgrpo.recipe.io import load_recipe_file
from fgrpo.recipe.validate import recipe_problems
from tests.conftest import REPO, run_fgrpo
from tests.recipe.test_paper_recipes import paper_files  # noqa: F401  (fixture)

# recipe: its preset and what fgrpo refuses of it with its paths set (the fields named: an
# image-to-video model needs a prompt file with images)
RECIPES = {
    "wan2_2_ti2v_5b": ("wan2.2-ti2v-5b", []),
    "wan2_2_t2v_a14b": ("wan2.2-t2v-a14b", []),
    "wan2_2_i2v_a14b": ("wan2.2-i2v-a14b", ["prompts.file"]),
    "wan2_1_i2v_14b_480p": ("wan2.1-i2v-14b-480p", ["prompts.file"]),
    "wan2_1_i2v_14b_720p": ("wan2.1-i2v-14b-720p", ["prompts.file"]),
}
REWARD_ARGS = ["rewards.0.args.model_path", "rewards.0.args.checkpoint"]


def load(name: str):
    return load_recipe_file(REPO / "recipes" / f"{name}.py")


def fields(problems: list[str]) -> list[str]:
    return [p.split(":", 1)[0] for p in problems]


def refused_fields(name: str, missing: list[str]) -> list[str]:
    """The fields recipe_problems names, in its order: the `missing` paths', the prompts'."""
    return [*missing, *(f for f in RECIPES[name][1] if f == "prompts.file")]


def with_paths(recipe, files):
    args = {"model_path": files["model_path"], "checkpoint": files["checkpoint"]}
    return dataclasses.replace(
        recipe,
        model=dataclasses.replace(recipe.model, path=files["model.path"]),
        rewards=(dataclasses.replace(recipe.rewards[0], args=args),),
    )


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_samples_as_the_model_was_released(name):
    recipe = load(name)
    preset = PRESETS[RECIPES[name][0]]
    assert recipe.model.preset == RECIPES[name][0] and recipe.model.path is None
    s, ro = preset.sampling, recipe.rollout
    assert s is not None
    assert (ro.frames, ro.height, ro.width, ro.flow_shift) == (s.frames, s.height, s.width, s.flow_shift)
    # Two experts: the guidance of the high-noise expert, the one the window trains.
    assert ro.cfg_scale == (s.guidance[1] if isinstance(s.guidance, tuple) else s.guidance)


@pytest.mark.parametrize("name", ["wan2_2_t2v_a14b", "wan2_2_i2v_a14b"])
def test_two_expert_recipes_train_the_high_noise_expert_only(name):
    """Wan2.2 runs the high-noise expert while t = sigma x 1000 >= boundary_ratio x 1000: every SDE
    step of the window starts there, on the recipe's own grid."""
    recipe = load(name)
    boundary = PRESETS[recipe.model.preset].boundary_ratio
    assert boundary is not None
    sigmas = wan_sigmas(recipe.rollout.steps, recipe.rollout.flow_shift)
    start, end = recipe.timesteps.window
    assert all(sigmas[k] >= boundary for k in range(start, end))
    assert recipe.lora.experts == "high"  # the expert the window reaches; the other frozen


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_refused_without_its_model_folder_with_the_field_named(name):
    problems = recipe_problems(load(name))
    assert fields(problems) == ["model.path", *refused_fields(name, REWARD_ARGS)], problems
    assert f"model.path: preset {RECIPES[name][0]} needs a local diffusers-format folder (no downloads)" in problems


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_with_its_paths_only_what_fgrpo_cannot_run_yet_is_refused(name, paper_files):  # noqa: F811
    problems = recipe_problems(with_paths(load(name), paper_files))
    assert fields(problems) == RECIPES[name][1], problems
    if "prompts.file" in RECIPES[name][1]:
        assert any("holds text only" in p and "image-to-video model" in p for p in problems)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_planning_is_not_refused_for_what_it_models(name):
    assert planning_problems(load(name), 8) == []


def test_image_attention_takes_sp_and_tp_but_only_the_full_text_context_also_for_planning():
    """diffusers' Wan image cross-attention runs unchanged on each sp rank's tokens (fgrpo.models.wan.
    sequence_parallel; tensor parallelism shards it) and takes the context's last 512 tokens as text:
    a shorter context is refused before planning, not a crash inside it."""
    recipe = load("wan2_1_i2v_14b_480p")
    sp2 = dataclasses.replace(recipe.parallelism, sp=2)
    assert planning_problems(dataclasses.replace(recipe, parallelism=sp2), 8) == []
    # Tensor parallelism shards the image cross-attention with the text's heads (fgrpo.models.wan.tensor_parallel).
    tp2 = dataclasses.replace(recipe.parallelism, tp=2)
    assert planning_problems(dataclasses.replace(recipe, parallelism=tp2), 8) == []
    short = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, max_text_tokens=256))
    assert fields(planning_problems(short, 8)) == ["model.max_text_tokens"]
    # Wan2.2's I2V (no image cross-attention, two experts) too.
    a14b = load("wan2_2_i2v_a14b")
    sp2 = dataclasses.replace(a14b, parallelism=dataclasses.replace(a14b.parallelism, sp=2))
    assert planning_problems(sp2, 8) == []


@pytest.mark.parametrize("name", ["wan2_2_ti2v_5b", "wan2_2_i2v_a14b"])
def test_launch_refuses_before_writing_anything(tmp_path, name):
    runs = tmp_path / "runs"
    res = run_fgrpo("launch", str(REPO / "recipes" / f"{name}.py"), "--dry-run", "--logging.runs-dir", str(runs))
    assert res.returncode == 2, res.stderr
    for field in ["model.path", *RECIPES[name][1], *REWARD_ARGS]:
        assert f"\n  {field}: " in res.stderr, res.stderr
    assert not runs.exists()
