"""The miniature world's scores and rewards: faithfulness (soft), gold (strict) and the hackable proxy."""

import random

import pytest
import torch
import torch.nn.functional as F

import fgrpo.rewards as R
from fgrpo.miniature import world as W
from fgrpo.miniature.scoring import all_correct, faithfulness_scores, gold_scores, mean_score, saturation
from fgrpo.miniature.world import ATTRIBUTES, BACKGROUNDS, COLOURS, all_scenes
from fgrpo.rewards.miniature import miniature_faithfulness, miniature_gold, miniature_proxy

# Gold's chance level per attribute when a video is scored against a random prompt: 1 / (number of
# classes), except size, whose gold also needs the area of the prompt's shape (a triangle has half a
# square's area), so a random prompt's shape fails it too about a third of the time: ~1/3.
CHANCE = {
    "count": 1 / 2,
    "size": 1 / 3,
    "colour": 1 / 4,
    "shape": 1 / 3,
    "direction": 1 / 4,
    "speed": 1 / 2,
    "background": 1 / 2,
}


def compose(scenes, seeds, colour=None, background=None):
    """Videos [B, F, 3, H, W] of the scenes' objects, in their colours or the ones given."""
    cover = torch.stack([W.coverage(s, k) for s, k in zip(scenes, seeds)])[:, :, None]
    fg = torch.tensor([colour(s) if colour else COLOURS[s.colour] for s in scenes])[:, None, :, None, None]
    bg = torch.tensor([background(s) if background else BACKGROUNDS[s.background] for s in scenes])[
        :, None, :, None, None
    ]
    return bg * (1 - cover) + fg * cover


@pytest.fixture(scope="module")
def world():
    """96 ground-truth videos, their prompts, and for each a random other prompt."""
    rng = random.Random(11)
    scenes = all_scenes()
    sample = rng.sample(scenes, 96)
    seeds = [rng.randrange(10_000) for _ in sample]
    others = [rng.choice([o for o in scenes if o != s]).prompt for s in sample]
    return sample, seeds, compose(sample, seeds), [s.prompt for s in sample], others


def test_rewards_are_registered_per_video():
    for name, fn in (
        ("miniature_faithfulness", miniature_faithfulness),
        ("miniature_gold", miniature_gold),
        ("miniature_proxy", miniature_proxy),
    ):
        info = R.get_reward_info(name)
        assert info.fn is fn and info.per_frame is False and info.required_args == ()


def test_shapes_and_ranges(world):
    _, _, videos, prompts, _ = world
    v, p = videos[:4], prompts[:4]
    for fn in (miniature_faithfulness, miniature_gold, miniature_proxy):
        out = fn(v, p)
        assert out.shape == (4,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    for scores in (faithfulness_scores(v, p), gold_scores(v, p)):
        assert list(scores) == list(ATTRIBUTES)
        assert all(
            s.shape == (4,) and s.dtype == torch.float32 and (0 <= s).all() and (s <= 1).all() for s in scores.values()
        )
    total, parts = R.build_rewards(
        [{"name": "miniature_gold"}, {"name": "miniature_faithfulness", "args": {"attribute": "colour"}}]
    )(v, p)
    assert total.shape == (4,) and set(parts) == {"miniature_gold", "miniature_faithfulness"}


def test_non_world_prompts_and_bad_arguments_are_refused(world):
    _, _, videos, prompts, _ = world
    v = videos[:2]
    for fn in (miniature_faithfulness, miniature_gold, miniature_proxy):
        with pytest.raises(ValueError, match="a cat playing piano"):
            fn(v, [prompts[0], "a cat playing piano"])
        with pytest.raises(ValueError, match="prompts for 2 videos"):
            fn(v, prompts[:1])
        with pytest.raises(ValueError, match="frames must be"):
            fn(v[:, 0], prompts[:2])
    for fn in (miniature_faithfulness, miniature_gold):
        with pytest.raises(ValueError, match="unknown miniature attribute 'hue'"):
            fn(v, prompts[:2], attribute="hue")


def test_ground_truth_scores_near_the_maximum(world):
    _, _, videos, prompts, _ = world
    faith, gold = faithfulness_scores(videos, prompts), gold_scores(videos, prompts)
    # Measured on this sample: faithfulness 0.999 (every attribute >= 0.99, worst video 0.997), gold 1.0.
    assert mean_score(faith).min() > 0.9 and mean_score(faith).mean() > 0.98
    assert mean_score(gold).mean() > 0.95 and all_correct(gold).mean() > 0.95
    for a in ATTRIBUTES:
        assert faith[a].mean() > 0.95, a
    for a in ("colour", "direction"):
        torch.testing.assert_close(miniature_gold(videos[:8], prompts[:8], attribute=a), gold[a][:8])
        torch.testing.assert_close(miniature_faithfulness(videos[:8], prompts[:8], attribute=a), faith[a][:8])
    torch.testing.assert_close(miniature_faithfulness(videos, prompts), mean_score(faith))


def test_another_prompt_scores_near_chance(world):
    _, _, videos, prompts, others = world
    faith, gold = faithfulness_scores(videos, others), gold_scores(videos, others)
    # Measured on this sample: gold 0.366 (chance ~0.40), faithfulness 0.454, all-right 0.
    for a in ATTRIBUTES:
        assert abs(gold[a].mean() - CHANCE[a]) < 0.15, (a, gold[a].mean(), CHANCE[a])
    overall = mean_score(gold).mean()
    assert abs(overall - sum(CHANCE.values()) / 7) < 0.08 and all_correct(gold).max() == 0
    assert 0.3 < mean_score(faith).mean() < 0.6
    # Every video scores lower on any other prompt than on its own.
    assert (miniature_faithfulness(videos, others) < miniature_faithfulness(videos, prompts) - 0.05).all()
    assert (miniature_gold(videos, others) < miniature_gold(videos, prompts)).all()


def test_gold_is_binary_and_stricter_than_faithfulness(world):
    scenes, seeds, videos, prompts, _ = world
    v, p, s, k = videos[:32], prompts[:32], scenes[:32], seeds[:32]
    faith, gold = faithfulness_scores(v, p), gold_scores(v, p)
    off = compose(s, k, colour=lambda sc: [0.5 * c + 0.25 for c in COLOURS[sc.colour]])  # halfway to grey
    f_off, g_off = faithfulness_scores(off, p), gold_scores(off, p)
    assert f_off["colour"].min() > 0.9 and g_off["colour"].max() == 0  # still the nearest colour, not the colour
    blurred = F.avg_pool2d(v.flatten(0, 1), 5, 1, 2, count_include_pad=False).view_as(v)
    f_blur, g_blur = faithfulness_scores(blurred, p), gold_scores(blurred, p)
    for f_edit, g_edit in ((f_off, g_off), (f_blur, g_blur)):
        lost_faith = (mean_score(faith) - mean_score(f_edit)).mean()
        lost_gold = (mean_score(gold) - mean_score(g_edit)).mean()
        assert lost_gold > lost_faith + 0.03, (lost_gold, lost_faith)
        assert all(((g == 0) | (g == 1)).all() for g in g_edit.values())


def test_a_static_video_gets_no_motion_credit(world):
    _, _, videos, prompts, _ = world
    still = videos[:16, :1].expand(-1, W.FRAMES, -1, -1, -1)
    faith, gold = faithfulness_scores(still, prompts[:16]), gold_scores(still, prompts[:16])
    assert gold["direction"].max() == 0 and gold["speed"].max() == 0
    assert faith["direction"].max() < 0.05 and faith["speed"].max() < 0.05
    assert gold["colour"].min() == 1 and gold["count"].min() == 1  # the rest is still read
    one_frame = gold_scores(videos[:4, :1], prompts[:4])  # F = 1: no motion either
    assert one_frame["direction"].max() == 0 and one_frame["background"].min() == 1


def test_proxy_rewards_an_oversaturated_background_that_gold_penalises(world):
    scenes, seeds, videos, prompts, _ = world
    s, k, v, p = scenes[:32], seeds[:32], videos[:32], prompts[:32]
    # A background of high saturation that is still nearest to the named one.
    edit = compose(s, k, background=lambda sc: (0.34, 0.04, 0.04) if sc.background == "black" else (0.93, 0.93, 0.55))
    assert (saturation(edit) > saturation(v) + 0.2).all()
    assert (miniature_proxy(edit, p) > miniature_proxy(v, p) + 0.1).all()
    assert ((miniature_faithfulness(edit, p) - miniature_faithfulness(v, p)).abs() < 0.01).all()
    assert (miniature_gold(edit, p) < miniature_gold(v, p)).all()
    assert miniature_gold(edit, p, attribute="background").max() == 0
    bonus = miniature_proxy(v, p, saturation_bonus=1.0) - miniature_proxy(v, p, saturation_bonus=0.0)
    torch.testing.assert_close(bonus, saturation(v))


def test_saturation_values():
    grey = torch.full((1, 2, 3, 4, 4), 0.5)
    red = torch.zeros(1, 2, 3, 4, 4)
    red[:, :, 0] = 0.8
    torch.testing.assert_close(
        saturation(torch.cat([grey, red, torch.zeros_like(grey)])), torch.tensor([0.0, 1.0, 0.0])
    )
