"""Scoring a reward through the reward server on localhost must equal scoring it in-process."""

from __future__ import annotations

import torch

from fgrpo.rewards import WeightedRewards
from fgrpo.rewards.server import RewardClient, RewardServer, dequantize, quantize


def assert_served_equals_in_process(spec: dict, frames: torch.Tensor, prompts: list[str], atol: float = 1e-5) -> None:
    """The server scores the uint8 frames it receives; in-process scoring of the same uint8 frames
    must give the same total and components. The server requires a token, as launched ones do."""
    with RewardServer([spec], token="served-test-token") as srv:
        total, comps = RewardClient(srv.url, token="served-test-token").score(frames, prompts)
    want_total, want = WeightedRewards([spec])(dequantize(quantize(frames)), prompts)
    torch.testing.assert_close(total, want_total, atol=atol, rtol=0)
    assert comps.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(comps[k], want[k], atol=atol, rtol=0)
