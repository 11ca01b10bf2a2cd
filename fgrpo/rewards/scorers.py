"""What every learned reward shares: dtype names, and one loaded scorer per model and device.

``dtype="auto"`` (the default of every learned reward) is bfloat16 on CUDA, where reward models
run as they were trained and at half the memory, and float32 elsewhere (CPU bf16 is slow).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["DTYPES", "cached_scorer", "resolve_dtype"]

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

T = TypeVar("T")
_SCORERS: dict[tuple, Any] = {}


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """A torch dtype, a name in DTYPES, or "auto" (bfloat16 on CUDA, else float32)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def cached_scorer(kind: str, key: tuple, build: Callable[[], T]) -> T:
    """The scorer of (kind, key), built once per process: reward models load once, not per call."""
    full = (kind, *key)
    if full not in _SCORERS:
        _SCORERS[full] = build()
    return _SCORERS[full]
