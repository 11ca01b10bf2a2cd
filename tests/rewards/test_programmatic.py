"""Behaviour of the built-in programmatic rewards (colour, brightness, contrast)."""

import math

import pytest
import torch

import fgrpo.rewards as R
from fgrpo.rewards.programmatic import brightness, colour, contrast, find_colour


def solid(rgb, b=1, f=2, h=4, w=5):
    """Videos [b, f, 3, h, w] filled with one RGB colour."""
    return torch.tensor(rgb, dtype=torch.float32).view(1, 1, 3, 1, 1).expand(b, f, 3, h, w).clone()


def grey(level, **kw):
    return solid([level] * 3, **kw)


def test_red_frames_beat_blue_for_red_prompt():
    red, blue = solid([1, 0, 0]), solid([0, 0, 1])
    assert (colour(red, ["a red car"]) > colour(blue, ["a red car"])).all()
    assert (colour(blue, ["A BLUE car"]) > colour(red, ["A BLUE car"])).all()
    torch.testing.assert_close(colour(red, ["a red car"]), torch.zeros(1, 2))


def test_colour_range_and_exact_value():
    # black vs white target is the farthest possible pixel: exactly -1
    torch.testing.assert_close(colour(grey(0.0), ["white snow"]), -torch.ones(1, 2))
    # half of the pixels exactly on target, half at distance 1 → -0.5/sqrt(3)
    x = solid([1, 0, 0])
    x[..., :2, :] = torch.tensor([1.0, 1.0, 0.0]).view(3, 1, 1)
    torch.testing.assert_close(colour(x, ["red"]), torch.full((1, 2), -0.5 / math.sqrt(3)))
    s = colour(torch.rand(8, 3, 3, 6, 6), ["green"] * 8)
    assert s.shape == (8, 3) and s.dtype == torch.float32
    assert (s <= 0).all() and (s >= -1).all()


def test_colour_parsing():
    assert find_colour("a red and blue ball") == "red"
    assert find_colour("a blue and red ball") == "blue"
    assert find_colour("a bored cat with credentials") is None  # 'red' only inside words
    assert find_colour("Purple rain") == "purple"
    x = torch.rand(2, 2, 3, 4, 4)
    torch.testing.assert_close(colour(x, ["a bored cat", "nothing here"]), torch.zeros(2, 2))


def test_colour_palette_kwarg():
    teal = solid([0.0, 0.5, 0.5])
    assert colour(teal, ["a teal fish"]).abs().sum() == 0  # unknown word → 0
    custom = {"teal": [0.0, 0.5, 0.5], "red": [0.0, 0.0, 1.0]}
    torch.testing.assert_close(colour(teal, ["a teal fish"], colours=custom), torch.zeros(1, 2))
    # override: "red" now means blue
    assert (colour(solid([0, 0, 1]), ["red"], colours=custom) > colour(solid([1, 0, 0]), ["red"], colours=custom)).all()
    with pytest.raises(ValueError, match="teal"):
        colour(teal, ["teal"], colours={"teal": [0.1, 0.2]})


def test_brightness_ordering():
    dark, mid, bright = grey(0.1), grey(0.5), grey(0.9)

    def order(prompt):
        return [brightness(v, [prompt]).mean().item() for v in (dark, mid, bright)]

    d, m, b = order("a bright sunny beach")
    assert b > m > d
    d, m, b = order("a city at night")
    assert d > m > b
    d, m, b = order("a cat")
    assert m > d and m > b
    torch.testing.assert_close(brightness(grey(0.85), ["light room"]), torch.zeros(1, 2))
    torch.testing.assert_close(brightness(grey(0.15), ["a dim cave"]), torch.zeros(1, 2))
    # "lightning" is not "light": neutral target 0.5
    torch.testing.assert_close(brightness(mid, ["lightning"]), torch.zeros(1, 2))
    torch.testing.assert_close(brightness(mid, ["a cat"], default_target=0.2), torch.full((1, 2), -0.3))


def test_brightness_uses_luminance_weights():
    green, blue = solid([0, 1, 0]), solid([0, 0, 1])
    # green is much more luminous than blue, so it is better for "bright"
    assert (brightness(green, ["bright"]) > brightness(blue, ["bright"])).all()
    torch.testing.assert_close(brightness(green, ["cat"]), torch.full((1, 2), -abs(0.587 - 0.5)))


def test_contrast():
    flat = grey(0.5)
    checker = grey(0.0, h=4, w=4)
    checker[..., ::2, ::2] = 1.0
    checker[..., 1::2, 1::2] = 1.0
    torch.testing.assert_close(contrast(flat, ["x"]), torch.zeros(1, 2))
    torch.testing.assert_close(contrast(checker, ["x"]), torch.full((1, 2), 0.5))
    # prompt-independent
    torch.testing.assert_close(contrast(checker, ["a red car"]), contrast(checker, ["night"]))


@pytest.mark.parametrize("name", ["colour", "brightness", "contrast"])
def test_batching_invariance(name):
    torch.manual_seed(1)
    fn = R.get_reward(name)
    frames = torch.rand(5, 3, 3, 7, 6)
    prompts = ["a red car", "dark forest at night", "a bright yellow flower", "a cat", "Blue SUNNY sky"]
    batched = fn(frames, prompts)
    single = torch.cat([fn(frames[i : i + 1], prompts[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, single)


def test_prompt_dependent_signal():
    frames = torch.rand(1, 3, 3, 6, 6).expand(2, -1, -1, -1, -1)  # same video twice
    s = colour(frames, ["red", "cyan"])
    assert not torch.allclose(s[0], s[1])
    b = brightness(frames, ["bright", "dark"])
    assert not torch.allclose(b[0], b[1])


def test_bad_inputs_rejected():
    with pytest.raises(ValueError):
        colour(torch.rand(2, 3, 4, 4), ["a", "b"])  # missing frame dim
    with pytest.raises(ValueError):
        brightness(torch.rand(2, 3, 1, 4, 4), ["a", "b"])  # not RGB
    with pytest.raises(ValueError):
        contrast(torch.rand(2, 3, 3, 4, 4), ["a"])  # prompt count


def test_accepts_half_precision():
    x = torch.rand(2, 2, 3, 4, 4)
    torch.testing.assert_close(colour(x.bfloat16(), ["red", "blue"]), colour(x.bfloat16().float(), ["red", "blue"]))
