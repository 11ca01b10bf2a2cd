"""A run never silently changes reward: the rewards' identities are recorded at its first start
(RUN/rewards.json) and a later start scoring with another setting or other weights is refused,
in-process and through a reward server."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fgrpo.recipe.config import RewardSpec
from fgrpo.rewards import register_reward
from fgrpo.rewards.server import RewardServer
from fgrpo.run_folder import RunFolder
from fgrpo.trainer.trainer import Trainer
from tests.helpers import present
from tests.helpers.recipes import small_recipe

R = dataclasses.replace


@register_reward("test_weights_file", per_frame=False)
def weights_file_reward(frames, prompts, weights_path: str = "", scale: float = 1.0):
    """Brightness; its weights file is never read (its identity is what these tests look at)."""
    return frames.mean(dim=(1, 2, 3, 4)) * scale


def recipe_with(tiny_model_dir, weights, **server):
    r = small_recipe(tiny_model_dir, max_steps=1)
    spec = RewardSpec(name="test_weights_file", args={"weights_path": str(weights)})
    return R(r, rewards=(spec,), reward_server=R(r.reward_server, **server))


def connected(recipe, run_dir) -> Trainer:
    t = Trainer(recipe, run_dir)
    t.connect_rewards()
    return t


def test_in_process_rewards_are_recorded_and_a_change_is_refused(tiny_model_dir, tmp_path):
    weights, run = tmp_path / "reward.bin", tmp_path / "run"
    weights.write_bytes(b"reward weights v1")
    recipe = recipe_with(tiny_model_dir, weights)
    connected(recipe, run)
    (recorded,) = present(RunFolder(run).read_rewards(), "rewards.json")
    assert recorded["name"] == "test_weights_file" and recorded["settings"]["scale"] == 1.0
    assert recorded["files"]["weights_path"]["bytes"] == len(b"reward weights v1")
    connected(recipe, run)  # the same rewards: resumes

    weights.write_bytes(b"reward weights v2")  # replaced under the same path
    with pytest.raises(
        ValueError,
        match=r"reward test_weights_file: args.weights_path: the weights at .*reward.bin "
        r"changed .*17 -> 17 bytes",
    ):
        connected(recipe, run)
    weights.write_bytes(b"reward weights v1")

    # The run started when the reward's default scale was 2 (an fgrpo upgrade changed it since).
    record = json.loads(RunFolder(run).rewards_file.read_text())
    record["rewards"][0]["settings"]["scale"] = 2.0
    RunFolder(run).rewards_file.write_text(json.dumps(record))
    with pytest.raises(
        ValueError,
        match=r"rewards changed since this run started .*then -> now\): "
        r"reward test_weights_file: args.scale 2.0 -> 1.0",
    ):
        connected(recipe, run)


def test_served_rewards_are_recorded_and_checked_by_the_handshake(tiny_model_dir, tmp_path):
    weights, run = tmp_path / "reward.bin", tmp_path / "run"
    weights.write_bytes(b"served weights v1")
    specs = recipe_with(tiny_model_dir, weights).rewards
    with RewardServer(specs) as srv:
        t = connected(recipe_with(tiny_model_dir, weights, url=srv.url), run)
        assert present(t.rewards, "connected rewards").where == "server"
    # recorded as the server sees them: its files' fingerprints too
    assert RunFolder(run).read_rewards() == json.loads(json.dumps(srv.identity))

    weights.write_bytes(b"served weights v2")
    with RewardServer(specs) as srv:  # requeued, its weights replaced meanwhile
        with pytest.raises(
            ValueError,
            match=r"\(409\).*reward test_weights_file: args.weights_path: the weights "
            r"at .*reward.bin changed",
        ):
            connected(recipe_with(tiny_model_dir, weights, url=srv.url), run)

    other = R(specs[0], args={**specs[0].args, "scale": 3.0})
    with RewardServer([other]) as srv:  # started by hand with another setting: refused at the first start too
        with pytest.raises(ValueError, match=r"\(409\).*reward test_weights_file: args.scale 1.0 -> 3.0"):
            connected(recipe_with(tiny_model_dir, weights, url=srv.url), tmp_path / "fresh")
    assert RunFolder(tmp_path / "fresh").read_rewards() is None
