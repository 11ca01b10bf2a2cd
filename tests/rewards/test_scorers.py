"""Shared reward-model plumbing: dtype names ("auto") and one scorer per model and device."""

import pytest
import torch

from fgrpo.rewards.scorers import cached_scorer, resolve_dtype


def test_auto_is_bf16_on_gpu_and_fp32_on_cpu():
    assert resolve_dtype("auto", "cuda:3") == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16 and resolve_dtype(torch.float16) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'half8'; use auto or one of"):
        resolve_dtype("half8")


def test_a_scorer_is_built_once_per_key():
    built = []

    def build():
        built.append(1)
        return object()

    a = cached_scorer("test", ("/m", "float32", "cpu"), build)
    assert cached_scorer("test", ("/m", "float32", "cpu"), build) is a
    assert cached_scorer("test", ("/m", "bfloat16", "cpu"), build) is not a
    assert cached_scorer("other", ("/m", "float32", "cpu"), build) is not a
    assert len(built) == 3
