"""Batches of real Wan videos through the reward server.

One 81-frame 480x832 video is 97 MB of uint8 frames, 129 MB as base64: the first client sent a
whole batch as one base64 JSON request, so 9 videos (micro_batch >= 9, or a rank's held-out set)
passed the server's 1 GiB limit, got 413, and the trainer crashed. The client now sends raw uint8
in requests of at most ``max_request_bytes`` (whole videos)."""

from __future__ import annotations

import math
import time

import torch

from fgrpo.recipe.config import RewardSpec
from fgrpo.rewards import WeightedRewards
from fgrpo.rewards.client import DEFAULT_REQUEST_BYTES
from fgrpo.rewards.server import RewardClient, RewardServer, dequantize, quantize
from fgrpo.rewards.wire import MAX_BODY_BYTES

SPECS = [RewardSpec(name="colour"), RewardSpec(name="brightness", weight=0.5)]
COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple", "pink"]


def test_a_batch_is_sent_in_requests_of_whole_videos():
    frames = torch.rand(5, 2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    prompts = [f"a {c} kite at night" for c in COLOURS[:5]]
    per_video = math.prod(frames.shape[1:])
    with RewardServer(SPECS) as srv:
        total, comps = RewardClient(srv.url, max_request_bytes=2 * per_video + 1).score(frames, prompts)
        assert srv.scored == (3, 5)  # 2 + 2 + 1 videos
    want_total, want = WeightedRewards(SPECS)(dequantize(quantize(frames)), prompts)
    torch.testing.assert_close(total, want_total, atol=1e-6, rtol=0)
    assert list(comps) == ["colour", "brightness"]
    for k in want:
        torch.testing.assert_close(comps[k], want[k], atol=1e-6, rtol=0)


def test_nine_wan_videos_score_like_in_process():
    """9 x 81 x 480 x 832 RGB (873 MB of uint8; 1.16 GB as one base64 request: 413 before), with
    the cheap `colour` reward (so the time is mostly the transport's)."""
    specs = SPECS[:1]
    b, shape = 9, (81, 3, 480, 832)
    assert b * math.prod(shape) * 4 / 3 > MAX_BODY_BYTES  # the old single request could not pass
    # Each video one flat colour plus noise, uint8 as decoded video is (taken as quantised frames).
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 64, (b, *shape), dtype=torch.uint8, generator=g)
    u8 += torch.randint(0, 192, (b, 1, 3, 1, 1), dtype=torch.uint8, generator=g)
    prompts = [f"a {c} balloon over a bright city" for c in COLOURS]
    with RewardServer(specs) as srv:
        start = time.perf_counter()
        total, comps = RewardClient(srv.url, timeout_s=300).score(u8, prompts)
        took = time.perf_counter() - start
        per_request = DEFAULT_REQUEST_BYTES // math.prod(shape)
        assert srv.scored == (math.ceil(b / per_request), b)
    rewards, start = WeightedRewards(specs), time.perf_counter()
    for i in range(b):  # one video at a time: a float32 copy of all nine would be 3.5 GB
        want_total, want = rewards(dequantize(u8[i : i + 1]), prompts[i : i + 1])
        torch.testing.assert_close(total[i : i + 1], want_total, atol=1e-6, rtol=0)
        for k in want:
            torch.testing.assert_close(comps[k][i : i + 1], want[k], atol=1e-6, rtol=0)
    print(
        f"9 Wan videos: {took:.1f} s through the server ({srv.scored[0]} requests), "
        f"{time.perf_counter() - start:.1f} s in-process"
    )
    assert total.std() > 0.01  # the scores do tell the videos apart
