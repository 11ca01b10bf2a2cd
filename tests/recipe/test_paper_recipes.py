"""The paper recipes (wan1_3b, wan14b) train on the paper's reward, HPSv3 per frame with top-30 %
aggregation; its model_path and checkpoint, like model.path, are the user's to set, and a missing one
is refused before launch with the field named."""

import dataclasses
import json

import pytest

from fgrpo.recipe.config import RewardSpec
from fgrpo.recipe.io import load_recipe_file
from fgrpo.recipe.validate import recipe_problems
from tests.conftest import REPO, run_fgrpo

PAPER_RECIPES = ["wan1_3b", "wan14b"]
REQUIRED = ["model.path", "rewards.0.args.model_path", "rewards.0.args.checkpoint"]


def fields(problems: list[str]) -> list[str]:
    return [p.split(":", 1)[0] for p in problems]


@pytest.fixture
def paper_files(tmp_path):
    """Stand-ins for the Wan weights and the two HPSv3 files: validation only checks they exist."""
    wan = tmp_path / "models" / "Wan2.1-T2V-Diffusers"
    for sub in ("transformer", "vae", "text_encoder", "tokenizer"):
        (wan / sub).mkdir(parents=True)
    qwen = tmp_path / "models" / "Qwen2-VL-7B-Instruct"
    qwen.mkdir()
    ckpt = tmp_path / "models" / "HPSv3.safetensors"
    ckpt.write_bytes(b"")
    return {"model.path": str(wan), "model_path": str(qwen), "checkpoint": str(ckpt)}


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipes_train_on_hpsv3_top_30_percent(name):
    recipe = load_recipe_file(REPO / "recipes" / f"{name}.py")
    assert recipe.rewards == (RewardSpec(name="hpsv3", weight=1.0, args={}, frame_aggregation="topk:0.3"),)
    assert recipe.model.path is None
    problems = recipe_problems(recipe)
    assert fields(problems) == REQUIRED, problems
    assert "rewards.0.args.model_path: required by the hpsv3 reward (a local Qwen2-VL-7B-Instruct folder)" in problems
    assert "rewards.0.args.checkpoint: required by the hpsv3 reward (the HPSv3.safetensors file)" in problems


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipes_are_valid_once_the_paths_are_set(name, paper_files):
    recipe = load_recipe_file(REPO / "recipes" / f"{name}.py")
    args = {"model_path": paper_files["model_path"], "checkpoint": paper_files["checkpoint"]}
    recipe = dataclasses.replace(
        recipe,
        model=dataclasses.replace(recipe.model, path=paper_files["model.path"]),
        rewards=(dataclasses.replace(recipe.rewards[0], args=args),),
    )
    assert recipe_problems(recipe) == []
    # One missing HPSv3 file is named on its own; a given path that does not exist is still refused.
    only = dataclasses.replace(
        recipe, rewards=(dataclasses.replace(recipe.rewards[0], args={"model_path": args["model_path"]}),)
    )
    assert fields(recipe_problems(only)) == ["rewards.0.args.checkpoint"]
    gone = dataclasses.replace(
        recipe,
        rewards=(
            dataclasses.replace(recipe.rewards[0], args={**args, "checkpoint": "/nonexistent/HPSv3.safetensors"}),
        ),
    )
    assert recipe_problems(gone) == ["rewards.0.args.checkpoint: /nonexistent/HPSv3.safetensors does not exist"]


def test_a_running_reward_server_holds_the_reward_args():
    """As for the path checks: a server at reward_server.url was started with its own args; a server
    the backend launches (reward_server.launch) gets the recipe's, so they are still required."""
    recipe = load_recipe_file(REPO / "recipes" / "wan1_3b.py")
    served = dataclasses.replace(
        recipe, reward_server=dataclasses.replace(recipe.reward_server, url="http://rewards:8000")
    )
    assert fields(recipe_problems(served)) == ["model.path"]
    launched = dataclasses.replace(recipe, reward_server=dataclasses.replace(recipe.reward_server, launch=True))
    assert fields(recipe_problems(launched)) == REQUIRED


@pytest.mark.parametrize("command", [["launch", "--dry-run"], ["launch"], ["show"]])
@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_missing_paths_are_refused_with_the_fields_named_and_nothing_written(tmp_path, name, command):
    runs = tmp_path / "runs"
    res = run_fgrpo(
        command[0], str(REPO / "recipes" / f"{name}.py"), *command[1:], "--logging.runs-dir", str(runs), cwd=tmp_path
    )
    assert res.returncode != 0
    for field in REQUIRED:
        assert f"\n  {field}: " in res.stderr, res.stderr
    assert "required by the hpsv3 reward" in res.stderr
    assert not runs.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_show_resolves_the_paper_recipe_with_hpsv3(tmp_path, name, paper_files):
    res = run_fgrpo(
        "show",
        str(REPO / "recipes" / f"{name}.py"),
        "--logging.runs-dir",
        str(tmp_path / "runs"),
        "--model.path",
        paper_files["model.path"],
        "--rewards.0.args",
        "model_path",
        paper_files["model_path"],
        "checkpoint",
        paper_files["checkpoint"],
        cwd=tmp_path,
        env={"COLUMNS": "1000"},
    )  # rich would wrap the long paths at 80 columns
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout[: res.stdout.index("run folder:")])
    assert shown["model"]["path"] == paper_files["model.path"]
    assert shown["rewards"] == [
        {
            "name": "hpsv3",
            "weight": 1.0,
            "frame_aggregation": "topk:0.3",
            "args": {"model_path": paper_files["model_path"], "checkpoint": paper_files["checkpoint"]},
            "label": None,
        }
    ]
    assert not (tmp_path / "runs").exists()


def test_dry_run_launch_of_the_paper_recipe_with_its_paths(tmp_path, paper_files):
    res = run_fgrpo(
        "launch",
        str(REPO / "recipes" / "wan1_3b.py"),
        "--dry-run",
        "--logging.runs-dir",
        str(tmp_path / "runs"),
        "--model.path",
        paper_files["model.path"],
        "--rewards.0.args",
        "model_path",
        paper_files["model_path"],
        "checkpoint",
        paper_files["checkpoint"],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert '"name": "hpsv3"' in res.stdout and '"frame_aggregation": "topk:0.3"' in res.stdout
    assert "8 local process(es)" in res.stdout and not (tmp_path / "runs").exists()
