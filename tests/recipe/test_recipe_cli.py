"""Recipes: files, overrides, validation errors that name the field, run names, JSON round-trip."""

import json

import pytest

from fgrpo.recipe.io import from_dict, load_recipe_file, run_name, to_dict
from fgrpo.recipe.validate import recipe_problems
from tests.conftest import REPO, run_fgrpo

RECIPES = ["tiny", "wan1_3b", "wan14b"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_files_load_and_round_trip(name):
    recipe = load_recipe_file(REPO / "recipes" / f"{name}.py")
    assert from_dict(json.loads(json.dumps(to_dict(recipe)))) == recipe


def test_paper_settings_in_wan_recipes():
    r13 = load_recipe_file(REPO / "recipes" / "wan1_3b.py")
    r14 = load_recipe_file(REPO / "recipes" / "wan14b.py")
    assert (r13.rollout.steps, r14.rollout.steps) == (20, 12)
    for r in (r13, r14):
        ro = r.rollout
        assert (ro.height, ro.width, ro.frames, ro.cfg_scale, ro.flow_shift) == (480, 832, 81, 4.5, 3.0)
        assert (ro.group_size, ro.prompts_per_step) == (8, 24)
        assert (r.lora.rank, r.lora.alpha, r.optim.lr, r.algorithm.clip_range, r.algorithm.adv_clip) == (
            16,
            32,
            1e-4,
            1e-3,
            5.0,
        )
        assert set(r.lora.target_modules) == {"to_q", "to_k", "to_v", "to_out.0"}
        assert (r.ema.decay, r.ema.interval, r.algorithm.kl_beta) == (0.9, 8, 0.0)
    assert r13.timesteps.window == (0, 10)


def test_tiny_recipe_is_valid():
    assert recipe_problems(load_recipe_file(REPO / "recipes" / "tiny.py")) == []


def test_show_applies_overrides():
    res = run_fgrpo("show", "recipes/tiny.py", "--optim.lr", "0.0005", "--rollout.group-size", "2")
    assert res.returncode == 0, res.stderr
    assert '"lr": 0.0005' in res.stdout and '"group_size": 2' in res.stdout
    assert "runs/tiny__lr=0.0005_group_size=2" in res.stdout


@pytest.mark.parametrize(
    "override, field",
    [
        (["--rollout.frames", "8"], "rollout.frames"),
        (["--rollout.height", "40"], "rollout.height"),
        (["--rollout.width", "20"], "rollout.width"),
        (["--timesteps.window", "0", "12"], "timesteps.window"),
        (
            ["--rollout.group-size", "3", "--rollout.prompts-per-step", "3", "--launch.procs-per-node", "2"],
            "rollout.group_size",
        ),
        (["--parallelism.tp", "3", "--launch.procs-per-node", "3"], "parallelism.tp"),
        (["--parallelism.dp-shard", "2", "--launch.procs-per-node", "3"], "parallelism"),
        (["--model.path", "/nonexistent/wan"], "model.path"),
        (["--rewards.0.name", "no_such_reward"], "rewards.0"),
        (["--prompts.file", "missing.txt"], "prompts.file"),
        (
            ["--rewards.0.name", "clip", "--rewards.0.args", "model_path", "/nonexistent/pickscore"],
            "rewards.0.args.model_path: /nonexistent/pickscore does not exist",
        ),
        (["--rewards.0.name", "clip"], "rewards.0.args.model_path: required by the clip reward"),
        (
            ["--rewards.0.name", "hpsv2", "--rewards.0.args", "checkpoint", "/nonexistent/hps.pt"],
            "rewards.0.args.tokenizer_path: required by the hpsv2 reward",
        ),
        (["--reward-server.url", "host:8000"], "reward_server.url: must start with http://"),
        (["--reward-server.url", "http://h:1", "--reward-server.launch"], "reward_server.url: give either"),
        (["--reward-server.port", "70000"], "reward_server.port"),
    ],
)
def test_inconsistent_recipe_names_the_field_and_writes_nothing(tmp_path, override, field):
    res = run_fgrpo(
        "launch", str(REPO / "recipes/tiny.py"), "--logging.runs-dir", str(tmp_path / "runs"), *override, cwd=tmp_path
    )
    assert res.returncode != 0
    assert field in res.stderr, res.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override", [["--optim.no-such-field", "1"], ["--optim.lr", "fast"]])
def test_unknown_field_or_wrong_type_is_refused(tmp_path, override):
    res = run_fgrpo(
        "launch", str(REPO / "recipes/tiny.py"), "--logging.runs-dir", str(tmp_path / "runs"), *override, cwd=tmp_path
    )
    assert res.returncode != 0
    assert override[0].lstrip("-").split(".")[-1] in (res.stderr + res.stdout)
    assert not (tmp_path / "runs").exists()


def test_wan_preset_without_weights_is_refused():
    res = run_fgrpo("launch", "recipes/wan1_3b.py", "--dry-run")
    assert res.returncode != 0 and "model.path" in res.stderr


def test_dry_run_writes_nothing(tmp_path):
    res = run_fgrpo("launch", str(REPO / "recipes/tiny.py"), "--dry-run", "--logging.runs-dir", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr
    assert "local process" in res.stdout and not (tmp_path / "r").exists()


def test_help_teaches_every_section():
    res = run_fgrpo("launch", "recipes/tiny.py", "--help")
    assert res.returncode == 0
    for text in (
        "--rollout.group-size",
        "--timesteps.window",
        "--algorithm.mode",
        "--backend",
        "--lora.rank",
        "iso-temporal",
        "--rewards.0.name",
        "--launch.procs-per-node",
    ):
        assert text in res.stdout, text


def test_run_name_is_a_function_of_recipe_and_overrides():
    base = load_recipe_file(REPO / "recipes" / "tiny.py")
    from dataclasses import replace

    assert run_name(base, base) == "tiny"
    a = replace(base, optim=replace(base.optim, lr=1e-3))
    assert run_name(base, a) == run_name(base, replace(base, optim=replace(base.optim, lr=0.001)))
    assert run_name(base, a) != run_name(base, replace(base, optim=replace(base.optim, lr=2e-3)))
    # launch settings do not change what is trained, so not the folder either
    assert run_name(base, replace(base, launch=replace(base.launch, time_limit="1:00:00"))) == "tiny"


def test_reward_paths_are_not_checked_when_a_running_server_scores():
    recipe = load_recipe_file(REPO / "recipes" / "tiny.py")
    import dataclasses

    spec = dataclasses.replace(recipe.rewards[0], name="clip", args={"model_path": "/on/the/server/only"})
    served = dataclasses.replace(
        recipe, rewards=(spec,), reward_server=dataclasses.replace(recipe.reward_server, url="http://rewards:8000")
    )
    assert recipe_problems(served) == []
    local = dataclasses.replace(served, reward_server=recipe.reward_server)
    assert recipe_problems(local) == ["rewards.0.args.model_path: /on/the/server/only does not exist"]


def test_run_name_and_changes_inside_the_rewards_list():
    from dataclasses import replace

    from fgrpo.recipe.config import RewardSpec
    from fgrpo.recipe.io import changed_fields

    base = load_recipe_file(REPO / "recipes" / "tiny.py")
    two = replace(base, rewards=(base.rewards[0], RewardSpec(name="contrast", weight=0.5)))
    name = run_name(base, two)  # long: shortened with a hash of the whole change
    assert (
        name.startswith("tiny__rewards.1.args=_rewards.1.frame_aggregation=mean_rewards.1.name=con") and len(name) <= 96
    )
    # Dropping a reward is a change too (a run folder must not silently change its rewards).
    assert "rewards.1.name" in changed_fields(two, base)
    clip = replace(base, rewards=(replace(base.rewards[0], name="clip", args={"model_path": "/m/pick"}),))
    # A reward's file is where its weights live, not what differs: a hash, not a path in the name.
    assert run_name(base, clip).startswith("tiny__rewards.0.name=clip__") and "pick" not in run_name(base, clip)


def test_reward_args_from_the_command_line_keep_their_types():
    res = run_fgrpo(
        "show",
        "recipes/tiny.py",
        "--rewards.0.args",
        "model_path",
        "/",
        "min_pixels",
        "3136",
        "scale",
        "0.5",
        "use_norm",
        "False",
    )
    assert res.returncode == 0, res.stderr  # show validates first: the path must exist
    args = json.loads(res.stdout[: res.stdout.index("run folder:")])["rewards"][0]["args"]
    assert args == {"model_path": "/", "min_pixels": 3136, "scale": 0.5, "use_norm": False}
