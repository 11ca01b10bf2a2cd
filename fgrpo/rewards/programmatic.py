"""Offline programmatic rewards (no model weights needed).

They give a tiny random-weight video model a real, prompt-dependent signal,
which makes end-to-end training testable on CPU. All are per-frame
(``[B, F]``) and vectorised over pixels; only prompt parsing loops over B.

* ``colour``: match the first colour word of the prompt, in ``[-1, 0]``.
* ``brightness``: match a brightness implied by the prompt, in ``[-1, 0]``.
* ``contrast``: luminance standard deviation, prompt-independent, ``[0, 0.5]``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

import torch

from fgrpo.rewards.base import register_reward

__all__ = ["DEFAULT_COLOURS", "brightness", "colour", "contrast", "find_colour", "luminance"]

DEFAULT_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
    "orange": (1.0, 0.5, 0.0),
    "purple": (0.5, 0.0, 0.5),
}

_BRIGHT = ("bright", "brightly", "light", "sunny", "sunlit")
_DARK = ("dark", "darkness", "night", "nighttime", "dim", "dimly")


def _check(frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Validate shapes and return frames as float (float32 for low precision)."""
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames must be [B, F, 3, H, W], got {tuple(frames.shape)}")
    if len(prompts) != frames.shape[0]:
        raise ValueError(f"got {len(prompts)} prompts for {frames.shape[0]} videos")
    return frames if frames.dtype == torch.float64 else frames.float()


def luminance(frames: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma ``0.299 R + 0.587 G + 0.114 B``: ``[..., 3, H, W] -> [..., H, W]``."""
    return 0.299 * frames[..., 0, :, :] + 0.587 * frames[..., 1, :, :] + 0.114 * frames[..., 2, :, :]


@lru_cache(maxsize=64)
def _word_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    # Longest first so multi-word keys ("dark red") win over their suffix at one position.
    alts = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b(?:{alts})\b", re.IGNORECASE)


def _palette(
    colours: Mapping[str, Sequence[float]] | None,
) -> dict[str, tuple[float, float, float]]:
    palette = dict(DEFAULT_COLOURS)
    for name, rgb in (colours or {}).items():
        values = tuple(float(v) for v in rgb)
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"colour {name!r} must be 3 finite RGB values in [0, 1], got {rgb!r}")
        palette[str(name).strip().lower()] = values  # type: ignore[assignment]
    return palette


def find_colour(prompt: str, colours: Mapping[str, Sequence[float]] | None = None) -> str | None:
    """First colour word in ``prompt`` (whole word, case-insensitive), or None."""
    palette = _palette(colours)
    match = _word_pattern(tuple(palette)).search(prompt)
    return match.group(0).lower() if match else None


@register_reward("colour", per_frame=True)
def colour(
    frames: torch.Tensor,
    prompts: list[str],
    colours: Mapping[str, Sequence[float]] | None = None,
) -> torch.Tensor:
    """``-mean_pixels ||rgb - target||_2 / sqrt(3)`` per frame, ``[B, F]`` in ``[-1, 0]``.

    The target is the first colour named in the prompt; prompts naming no
    colour score 0. ``colours`` extends or overrides :data:`DEFAULT_COLOURS`.
    """
    x = _check(frames, prompts)
    palette = _palette(colours)
    pattern = _word_pattern(tuple(palette))
    targets, mask = [], []
    for prompt in prompts:
        match = pattern.search(prompt)
        targets.append(palette[match.group(0).lower()] if match else (0.0, 0.0, 0.0))
        mask.append(match is not None)
    target = torch.tensor(targets, dtype=x.dtype, device=x.device)[:, None, :, None, None]
    dist = (x - target).square().sum(dim=2).sqrt().mean(dim=(-2, -1)) / math.sqrt(3.0)
    keep = torch.tensor(mask, dtype=x.dtype, device=x.device)[:, None]
    return (-dist * keep).to(torch.float32)


def _brightness_target(prompt: str, bright: float, dark: float, default: float) -> float:
    match = _word_pattern(_BRIGHT + _DARK).search(prompt)
    if match is None:
        return default
    return bright if match.group(0).lower() in _BRIGHT else dark


@register_reward("brightness", per_frame=True)
def brightness(
    frames: torch.Tensor,
    prompts: list[str],
    default_target: float = 0.5,
    bright_target: float = 0.85,
    dark_target: float = 0.15,
) -> torch.Tensor:
    """``-|mean luminance - target|`` per frame, ``[B, F]``.

    The target is ``bright_target`` if the first brightness word of the prompt
    is bright/light/sunny, ``dark_target`` for dark/night/dim, else
    ``default_target``.
    """
    x = _check(frames, prompts)
    targets = [_brightness_target(p, bright_target, dark_target, default_target) for p in prompts]
    target = torch.tensor(targets, dtype=x.dtype, device=x.device)[:, None]
    return -(luminance(x).mean(dim=(-2, -1)) - target).abs().to(torch.float32)


@register_reward("contrast", per_frame=True)
def contrast(frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Per-frame standard deviation of luminance over pixels, ``[B, F]``."""
    x = _check(frames, prompts)
    return luminance(x).flatten(-2).std(dim=-1, correction=0).to(torch.float32)
