"""Reward identity: name, weight, aggregation, scoring settings and the weights' fingerprint; the
reward server's handshake refuses a client that expects another."""

import json
import os
from pathlib import Path

import pytest
import torch

from fgrpo.recipe.config import RewardSpec
from fgrpo.rewards import identity as identity_mod
from fgrpo.rewards import register_reward
from fgrpo.rewards.identity import file_fingerprint, identity_differences, reward_identities, rewards_changed
from fgrpo.rewards.server import RewardClient, RewardServer
from tests.helpers import present

TOKEN = "identity-test-token"


@register_reward("test_file_backed")
def file_backed(frames, prompts, weights_path: str = "", scale: float = 1.0, batch_size: int = 4):
    """A reward with a weights file (never read here: its identity is what these tests look at)."""
    return frames.mean(dim=(1, 2, 3, 4)) * scale


def weights(tmp_path, content: bytes, name="w.bin"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_identity_holds_name_weight_aggregation_settings_and_weights(tmp_path):
    w = weights(tmp_path, b"weights-v1")
    spec = RewardSpec(
        name="test_file_backed", weight=0.5, args={"weights_path": str(w), "scale": 2}, frame_aggregation="topk:0.3"
    )
    (got,) = reward_identities([spec])
    assert got["key"] == got["name"] == "test_file_backed"
    assert got["weight"] == 0.5 and got["frame_aggregation"] == "topk:0.3"
    # the function's defaults count (an upgrade changing one is seen), batch_size does not score
    assert got["settings"] == {"scale": 2, "weights_path": str(w)}
    assert got["files"]["weights_path"]["bytes"] == len(b"weights-v1")
    assert json.loads(json.dumps(got)) == got  # recorded as JSON, compared after reading it back
    assert reward_identities([spec], fingerprint=False)[0]["files"] == {}
    assert reward_identities([RewardSpec(name="brightness")])[0]["settings"] == {
        "bright_target": 0.85,
        "dark_target": 0.15,
        "default_target": 0.5,
    }


def test_weights_are_compared_by_content_not_by_path(tmp_path):
    a, b = weights(tmp_path, b"same bytes", "a.bin"), weights(tmp_path, b"same bytes", "b.bin")
    spec = lambda p: [RewardSpec(name="test_file_backed", args={"weights_path": str(p)})]  # noqa: E731
    assert identity_differences(reward_identities(spec(a)), reward_identities(spec(b))) == []
    recorded = reward_identities(spec(a))
    a.write_bytes(b"other bytes")  # same size as before: only the content differs
    (diff,) = identity_differences(recorded, reward_identities(spec(a)))
    assert diff.startswith("reward test_file_backed: args.weights_path: the weights at ") and "changed" in diff
    a.unlink()
    (diff,) = identity_differences(recorded, reward_identities(spec(a)))
    assert "does not exist here" in diff


def test_a_large_file_is_fingerprinted_by_samples_that_still_see_a_change(tmp_path, monkeypatch):
    monkeypatch.setattr(identity_mod, "FULL_HASH_BYTES", 1 << 10)
    monkeypatch.setattr(identity_mod, "SAMPLE_BYTES", 1 << 8)
    big = weights(tmp_path, os.urandom(1 << 14))
    before = file_fingerprint(big)
    data = bytearray(big.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a byte in the middle sample
    big.write_bytes(bytes(data))
    assert file_fingerprint(big)["digest"] != before["digest"]
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / ".cache").mkdir()  # a download cache's bookkeeping: not the weights
    first = file_fingerprint(folder)
    (folder / ".cache" / "lock").write_text("x")
    assert file_fingerprint(folder) == first
    (folder / "config.json").write_text('{"layers": 2}')
    assert file_fingerprint(folder)["digest"] != first["digest"]


def test_differences_name_the_reward_and_how_it_changed():
    was = reward_identities([RewardSpec(name="brightness"), RewardSpec(name="contrast")])
    now = reward_identities(
        [RewardSpec(name="brightness", weight=2.0, args={"bright_target": 0.9}), RewardSpec(name="contrast")]
    )
    assert identity_differences(was, now) == ["reward brightness: weight 1.0 -> 2.0; args.bright_target 0.85 -> 0.9"]
    assert identity_differences(was, was[:1]) == ["rewards ['brightness'] instead of ['brightness', 'contrast']"]
    assert rewards_changed(None, now, Path("rewards.json")) is None  # nothing recorded yet: the first start
    message = present(rewards_changed(was, now, Path("RUN/rewards.json")), "refusal")
    assert "reward brightness: weight 1.0 -> 2.0" in message and "delete RUN/rewards.json" in message


def test_server_handshake_answers_its_identity_and_refuses_another(tmp_path):
    w = weights(tmp_path, b"served weights")
    served = [RewardSpec(name="test_file_backed", args={"weights_path": str(w)})]
    with RewardServer(served, token=TOKEN) as srv:
        client = RewardClient(srv.url, token=TOKEN, retries=0)
        # a first handshake: the trainer cannot see the server's files, only the settings
        answered = client.handshake(reward_identities(served, fingerprint=False))
        assert answered == json.loads(json.dumps(srv.identity))
        assert answered[0]["files"]["weights_path"]["digest"] == file_fingerprint(w)["digest"]
        assert client.handshake(answered) == answered  # a resume: the recorded identity, files too
        other = reward_identities([RewardSpec(name="test_file_backed", args={"weights_path": str(w), "scale": 3})])
        refused = r"\(409\).*the run's -> this server's\): reward test_file_backed: args.scale 3 -> 1.0"
        with pytest.raises(ValueError, match=refused):
            client.handshake(other)
        fingerprint = dict(answered[0]["files"]["weights_path"], digest="0" * 64)  # recorded of other weights
        recorded = [dict(answered[0], files={"weights_path": fingerprint})]
        with pytest.raises(ValueError, match=r"\(409\).*the weights at .*w.bin changed"):
            client.handshake(recorded)
        with pytest.raises(ValueError, match="401"):
            RewardClient(srv.url, retries=0).handshake(answered)
        with pytest.raises(ValueError, match="'identity' must be a list"):
            client.handshake({"not": "a list"})  # type: ignore[arg-type]
        # it goes on serving
        total, _ = client.score(torch.full((1, 1, 3, 4, 4), 0.5), ["a prompt"])
        assert total.shape == (1,)
