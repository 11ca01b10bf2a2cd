"""Registry, import-path rewards, frame aggregation and weighted combination."""

import uuid
from types import SimpleNamespace
from typing import Any, cast

import pytest
import torch

import fgrpo.rewards as R
from fgrpo.rewards import base


@pytest.fixture
def clean_registry(monkeypatch):
    """Let a test register rewards without leaking them into other tests."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))


def spec(name, weight=1.0, args=None, agg="mean"):
    return SimpleNamespace(name=name, weight=weight, args=args or {}, frame_aggregation=agg)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A uniquely named user module on sys.path with a few reward callables."""
    name = f"user_rewards_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "import torch\n"
        "def score(frames, prompts, scale=1.0):\n"
        "    return frames.mean(dim=(1, 2, 3, 4)) * scale\n"
        "def per_frame_score(frames, prompts):\n"
        "    return frames.mean(dim=(2, 3, 4))\n"
        "per_frame_score.per_frame = True\n"
        "def bad_shape(frames, prompts):\n"
        "    return frames.mean(dim=(2, 3, 4))\n"
        "NOT_CALLABLE = 3\n"
        "def needs_model(frames, prompts, model_path=None):\n"
        "    return frames.mean(dim=(1, 2, 3, 4))\n"
        "needs_model.required_args = {'model_path': 'my model folder'}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_builtins_registered():
    assert {"colour", "brightness", "contrast"} <= set(R.list_rewards())
    assert R.get_reward("colour") is R.programmatic.colour
    assert R.get_reward_info("colour").per_frame is True


def test_unknown_name_lists_registered_names():
    with pytest.raises(ValueError) as exc:
        R.get_reward("aesthetics_v9")
    msg = str(exc.value)
    assert "aesthetics_v9" in msg
    for name in ("colour", "brightness", "contrast"):
        assert name in msg


def test_register_decorator_and_duplicates(clean_registry):
    @R.register_reward("ones", per_frame=True)
    def ones(frames, prompts):
        return torch.ones(frames.shape[:2])

    assert "ones" in R.list_rewards()
    assert R.get_reward_info("ones").per_frame and ones.per_frame is True

    with pytest.raises(ValueError, match="already registered"):

        @R.register_reward("ones")
        def other(frames, prompts):
            return torch.zeros(frames.shape[0])

    with pytest.raises(ValueError):
        R.register_reward("bad:name")


def test_user_reward_by_import_path(user_module):
    fn = R.get_reward(f"{user_module}:score")
    frames = torch.rand(3, 2, 3, 4, 4)
    torch.testing.assert_close(fn(frames, ["a"] * 3), frames.mean(dim=(1, 2, 3, 4)))
    assert R.get_reward_info(f"{user_module}:per_frame_score").per_frame is True

    rewards = R.build_rewards([spec(f"{user_module}:score", 2.0, {"scale": 3.0})])
    total, comps = rewards(frames, ["a"] * 3)
    torch.testing.assert_close(total, 6.0 * frames.mean(dim=(1, 2, 3, 4)))
    assert list(comps) == [f"{user_module}:score"]


@pytest.mark.parametrize(
    "suffix, needle",
    [(":NOT_CALLABLE", "not callable"), (":missing", "no attribute"), ("_nope:score", "cannot import")],
)
def test_import_path_errors_name_the_spec(user_module, suffix, needle):
    path = f"{user_module}{suffix}"
    with pytest.raises(ValueError, match=needle) as exc:
        R.get_reward(path)
    assert path in str(exc.value)


def test_aggregate_frames_hand_made():
    scores = torch.tensor([[3.0, 9.0, 1.0, 7.0, 0.0, 8.0, 2.0, 4.0, 6.0, 5.0], [1.0] * 9 + [11.0]])
    torch.testing.assert_close(R.aggregate_frames(scores, "topk:0.3"), torch.tensor([8.0, 13.0 / 3]))
    torch.testing.assert_close(R.aggregate_frames(scores, "mean"), torch.tensor([4.5, 2.0]))
    torch.testing.assert_close(R.aggregate_frames(scores, "min"), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(R.aggregate_frames(scores, "max"), torch.tensor([9.0, 11.0]))
    # tiny fraction still keeps one frame; P = 1 is the mean
    torch.testing.assert_close(R.aggregate_frames(scores, "topk:0.01"), torch.tensor([9.0, 11.0]))
    torch.testing.assert_close(R.aggregate_frames(scores, "topk:1"), torch.tensor([4.5, 2.0]))
    # k = ceil(P * F): 30 % of 7 frames rounds up to the top 3
    seven = torch.tensor([[0.0, 6.0, 1.0, 5.0, 2.0, 4.0, 3.0]])
    torch.testing.assert_close(R.aggregate_frames(seven, "topk:0.3"), torch.tensor([5.0]))


@pytest.mark.parametrize("how", ["median", "topk:0", "topk:1.5", "topk:abc", "topk:", "top3"])
def test_bad_aggregation_rejected(how):
    with pytest.raises(ValueError):
        R.aggregate_frames(torch.zeros(2, 4), how)


def test_validate_reward_spec_names_the_reward():
    R.validate_reward_spec(spec("colour", agg="topk:0.3"))
    R.validate_reward_spec({"name": "contrast", "weight": 0.5})
    with pytest.raises(ValueError, match="'no_such_reward'"):
        R.validate_reward_spec(spec("no_such_reward"))
    with pytest.raises(ValueError, match="'brightness'.*median"):
        R.validate_reward_spec(spec("brightness", agg="median"))
    with pytest.raises(ValueError, match="'colour'.*weight"):
        R.validate_reward_spec(spec("colour", weight=float("nan")))
    with pytest.raises(ValueError, match="'colour'.*args"):
        R.validate_reward_spec(SimpleNamespace(name="colour", weight=1.0, args=[1], frame_aggregation="mean"))
    # build validates eagerly, before any frames exist
    with pytest.raises(ValueError, match="topk"):
        R.build_rewards([spec("colour"), spec("contrast", agg="topk:2")])


def test_learned_rewards_declare_their_required_args():
    required = {n: dict(R.get_reward_info(n).required_args) for n in R.list_rewards()}
    assert list(required["hpsv3"]) == ["model_path", "checkpoint"]
    assert list(required["videoalign"]) == ["model_path"]  # a VideoReward folder of its own needs no checkpoint
    assert list(required["hpsv2"]) == ["checkpoint", "tokenizer_path"]
    assert list(required["clip"]) == ["model_path"]
    assert required["colour"] == required["brightness"] == required["contrast"] == {}
    assert "Qwen2-VL-7B-Instruct" in required["hpsv3"]["model_path"]
    assert R.hpsv3.hpsv3.required_args == required["hpsv3"]


def test_missing_reward_args(clean_registry, user_module):
    assert R.missing_reward_args(spec("hpsv3")) == {
        "model_path": "a local Qwen2-VL-7B-Instruct folder",
        "checkpoint": "the HPSv3.safetensors file",
    }
    # None and "" are unset too; any other value counts as given (existence is the recipe's check)
    assert list(R.missing_reward_args(spec("hpsv3", args={"model_path": "/m", "checkpoint": ""}))) == ["checkpoint"]
    assert list(R.missing_reward_args({"name": "hpsv2", "args": {"checkpoint": None}})) == [
        "checkpoint",
        "tokenizer_path",
    ]
    assert R.missing_reward_args(spec("clip", args={"model_path": "/m/pick"})) == {}
    assert R.missing_reward_args(spec("colour")) == {}
    # a user callable declares them as an attribute, a registered one with register_reward
    assert R.missing_reward_args(spec(f"{user_module}:needs_model")) == {"model_path": "my model folder"}
    assert R.missing_reward_args(spec(f"{user_module}:score")) == {}

    @R.register_reward("needs_two", required_args={"a": "the a file", "b": "the b folder"})
    def needs_two(frames, prompts, a=None, b=None):
        return frames.mean(dim=(1, 2, 3, 4))

    assert needs_two.required_args == {"a": "the a file", "b": "the b folder"}
    assert R.missing_reward_args(spec("needs_two", args={"b": "x"})) == {"a": "the a file"}
    with pytest.raises(ValueError, match="required_args"):
        R.register_reward("bad_required", required_args=cast(Any, ["model_path"]))  # not a mapping, on purpose
    with pytest.raises(ValueError, match="no_such_reward"):
        R.missing_reward_args(spec("no_such_reward"))


def test_weighted_sum_equals_manual_sum():
    torch.manual_seed(0)
    frames = torch.rand(4, 10, 3, 6, 6)
    prompts = ["a red car", "a dark night", "a bright blue sky", "a cat"]
    specs = [
        spec("colour", 2.0, agg="topk:0.3"),
        spec("brightness", -0.5, {"default_target": 0.3}, agg="min"),
        spec("contrast", 1.5, agg="max"),
    ]
    total, comps = R.build_rewards(specs)(frames, prompts)

    c = R.aggregate_frames(R.get_reward("colour")(frames, prompts), "topk:0.3")
    b = R.aggregate_frames(R.get_reward("brightness")(frames, prompts, default_target=0.3), "min")
    k = R.aggregate_frames(R.get_reward("contrast")(frames, prompts), "max")
    torch.testing.assert_close(total, 2.0 * c - 0.5 * b + 1.5 * k)
    torch.testing.assert_close(comps["colour"], c)
    torch.testing.assert_close(comps["brightness"], b)
    assert total.shape == (4,) and total.dtype == torch.float32


def test_repeated_reward_gets_distinct_keys():
    frames, prompts = torch.rand(2, 3, 3, 4, 4), ["red", "blue"]
    rewards = R.build_rewards([spec("colour"), spec("colour", 1.0, {"colours": {"red": [0, 0, 1]}})])
    assert rewards.names == ["colour", "colour#2"]
    total, comps = rewards(frames, prompts)
    assert not torch.allclose(comps["colour"], comps["colour#2"])
    torch.testing.assert_close(total, comps["colour"] + comps["colour#2"])


def test_labels_name_the_components_and_must_not_repeat():
    frames, prompts = torch.rand(2, 3, 3, 4, 4), ["red", "blue"]
    blue = {"colours": {"red": [0, 0, 1]}}
    labelled = SimpleNamespace(**vars(spec("colour", 1.0, blue)), label="colour_as_blue")
    rewards = R.build_rewards([spec("colour"), labelled, spec("colour")])
    assert rewards.names == ["colour", "colour_as_blue", "colour#2"]
    _, comps = rewards(frames, prompts)
    per_frame = R.get_reward("colour")(frames, prompts, **blue)
    torch.testing.assert_close(comps["colour_as_blue"], R.aggregate_frames(per_frame, "mean"))
    clash = SimpleNamespace(**vars(spec("brightness")), label="colour")
    assert R.duplicate_reward_keys([spec("colour"), clash]) == ["colour"]
    with pytest.raises(ValueError, match="recorded under the same name: colour;"):
        R.build_rewards([spec("colour"), clash])
    for bad in ("", "has space", "a/b"):
        with pytest.raises(ValueError, match="reward 'colour': label must be"):
            R.validate_reward_spec(SimpleNamespace(**vars(spec("colour")), label=bad))


def test_runs_without_grad(clean_registry):
    seen = []

    @R.register_reward("grad_probe")
    def grad_probe(frames, prompts):
        seen.append(torch.is_grad_enabled())
        return frames.sum(dim=(1, 2, 3, 4))

    frames = torch.rand(2, 3, 3, 4, 4, requires_grad=True)
    R.build_rewards([spec("grad_probe")])(frames, ["a", "b"])
    assert seen == [False]
    total, comps = R.build_rewards([spec("colour"), spec("contrast")])(frames, ["red", "x"])
    assert not total.requires_grad
    assert not any(v.requires_grad for v in comps.values())


def test_wrong_output_shape_is_reported(user_module):
    rewards = R.build_rewards([spec(f"{user_module}:bad_shape")])
    with pytest.raises(ValueError, match="bad_shape"):
        rewards(torch.rand(2, 3, 3, 4, 4), ["a", "b"])
    with pytest.raises(ValueError, match="prompts"):
        R.build_rewards([spec("colour")])(torch.rand(2, 3, 3, 4, 4), ["only one"])
