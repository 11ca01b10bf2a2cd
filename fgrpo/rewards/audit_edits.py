"""Controlled edits of videos for `fgrpo reward-audit` (fgrpo.rewards.audit): pure functions.

Every edit takes videos as the rewards receive them (fgrpo.rewards.base): float ``[B, F, 3, H, W]``
in [0, 1], RGB, and returns a new tensor in the same layout and range (clamped), on the same
device, float32; only :func:`fewer_frames` changes ``F``. Random edits (noise, shuffle) are
seeded, so an audit is repeatable. The strengths are fixed and strong on purpose: an edit is a
probe for what a reward prefers, not an augmentation.

:data:`EDITS` lists them in table order with what kind of edit each is: *degrading* (a good
reward should not prefer it: blur, noise, JPEG, saturation/brightness/contrast pushed either
way, and the motion edits frozen, shuffle, reverse) and *motion* (destroys or inverts the
video's motion: frozen, shuffle, reverse). Sharpen, duplicated frames and fewer frames are
reported without a flag: whether a reward should like them depends on the reward.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "EDITS",
    "Edit",
    "additive_noise",
    "blur",
    "brightness_down",
    "brightness_up",
    "contrast_down",
    "contrast_up",
    "duplicated_frames",
    "edit_names",
    "fewer_frames",
    "frame_reversal",
    "frame_shuffle",
    "frozen",
    "jpeg",
    "luma",
    "saturation_down",
    "saturation_up",
    "sharpen",
]

EDIT_SEED = 0  # the noise and the shuffle's permutation
JPEG_QUALITY = 10  # Pillow's scale 1..95: 10 shows blocking and ringing


def _check(videos: torch.Tensor) -> torch.Tensor:
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise ValueError(f"videos must be [B, F, 3, H, W], got {tuple(videos.shape)}")
    return videos.float()


def luma(videos: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma of ``[..., 3, H, W]`` as ``[..., 1, H, W]`` (the grey each colour edit blends with)."""
    r, g, b = videos.unbind(dim=-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def _blend(videos: torch.Tensor, towards: torch.Tensor, factor: float) -> torch.Tensor:
    """``towards + factor * (videos - towards)``, clamped: factor > 1 pushes away, < 1 pulls in."""
    return (towards + factor * (videos - towards)).clamp(0.0, 1.0)


def saturation_up(videos: torch.Tensor, factor: float = 2.0) -> torch.Tensor:
    """Colours pushed away from their pixel's grey (luma) by ``factor`` (Pillow's ImageEnhance.Color):
    HSV saturation rises, hue and luma stay (up to clamping)."""
    x = _check(videos)
    return _blend(x, luma(x), factor)


def saturation_down(videos: torch.Tensor, factor: float = 0.3) -> torch.Tensor:
    """Colours pulled towards their pixel's grey (luma) to ``factor`` of their chroma: washed out."""
    x = _check(videos)
    return _blend(x, luma(x), factor)


def brightness_up(videos: torch.Tensor, factor: float = 1.5) -> torch.Tensor:
    """Every value times ``factor`` (Pillow's ImageEnhance.Brightness), clamped: highlights burn out."""
    return (_check(videos) * factor).clamp(0.0, 1.0)


def brightness_down(videos: torch.Tensor, factor: float = 0.5) -> torch.Tensor:
    """Every value times ``factor``: a darker video."""
    return (_check(videos) * factor).clamp(0.0, 1.0)


def _frame_mean_luma(x: torch.Tensor) -> torch.Tensor:
    return luma(x).mean(dim=(-2, -1), keepdim=True)


def contrast_up(videos: torch.Tensor, factor: float = 2.0) -> torch.Tensor:
    """Values pushed away from each frame's mean luma by ``factor`` (Pillow's ImageEnhance.Contrast)."""
    x = _check(videos)
    return _blend(x, _frame_mean_luma(x), factor)


def contrast_down(videos: torch.Tensor, factor: float = 0.3) -> torch.Tensor:
    """Values pulled towards each frame's mean luma to ``factor`` of their distance: a flat, grey video."""
    x = _check(videos)
    return _blend(x, _frame_mean_luma(x), factor)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of each frame and channel (reflect-padded, radius 3 sigma)."""
    b, f, c, h, w = x.shape
    radius = max(1, math.ceil(3.0 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    planes = x.reshape(b * f * c, 1, h, w)
    # Reflect padding needs the pad smaller than the side; tiny frames fall back to replicate.
    mode = "reflect" if radius < min(h, w) else "replicate"
    planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
    planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode=mode), kernel.view(1, 1, -1, 1))
    return planes.reshape(b, f, c, h, w)


def _blur_sigma(videos: torch.Tensor, relative: float) -> float:
    """A blur width that looks the same at every resolution: ``relative`` x the longest side, >= 1 px."""
    return max(1.0, relative * max(videos.shape[-2:]))


def blur(videos: torch.Tensor, relative_sigma: float = 0.02) -> torch.Tensor:
    """Gaussian blur of every frame, sigma = ``relative_sigma`` x the longest side (at least 1 pixel;
    64 px: 1.3 px, 832 px: 17 px)."""
    x = _check(videos)
    return _gaussian_blur(x, _blur_sigma(x, relative_sigma)).clamp(0.0, 1.0)


def sharpen(videos: torch.Tensor, amount: float = 1.5, relative_sigma: float = 0.01) -> torch.Tensor:
    """Unsharp mask: ``x + amount * (x - blur(x))``, the blur ``relative_sigma`` x the longest side
    (at least 1 pixel): edges gain halos."""
    x = _check(videos)
    return (x + amount * (x - _gaussian_blur(x, _blur_sigma(x, relative_sigma)))).clamp(0.0, 1.0)


def jpeg(videos: torch.Tensor, quality: int = JPEG_QUALITY) -> torch.Tensor:
    """Every frame JPEG-encoded at ``quality`` and decoded again with Pillow (libjpeg; 4:2:0 chroma
    subsampling), through uint8: blocking, ringing and colour bleeding. Runs on the CPU."""
    import numpy as np
    from PIL import Image

    x = _check(videos)
    pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
    out = np.empty_like(pixels)
    for i in np.ndindex(*pixels.shape[:2]):
        buffer = io.BytesIO()
        Image.fromarray(pixels[i]).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return torch.from_numpy(out).permute(0, 1, 4, 2, 3).float().div(255).to(x.device)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def additive_noise(videos: torch.Tensor, std: float = 0.1, seed: int = EDIT_SEED) -> torch.Tensor:
    """Independent Gaussian noise of standard deviation ``std`` on every value (seeded), clamped."""
    x = _check(videos)
    noise = torch.randn(x.shape, generator=_generator(seed)).to(x.device)
    return (x + std * noise).clamp(0.0, 1.0)


def shuffle_order(frames: int, seed: int = EDIT_SEED) -> torch.Tensor:
    """A seeded permutation of ``range(frames)`` that moves the frames (never the identity for >= 2)."""
    order = torch.randperm(frames, generator=_generator(seed))
    if frames >= 2 and torch.equal(order, torch.arange(frames)):
        order = order.roll(1)
    return order


def frame_shuffle(videos: torch.Tensor, seed: int = EDIT_SEED) -> torch.Tensor:
    """The frames in a seeded random order (the same for every video): the motion is scrambled,
    each frame is intact."""
    x = _check(videos)
    return x[:, shuffle_order(x.shape[1], seed).to(x.device)]


def frame_reversal(videos: torch.Tensor) -> torch.Tensor:
    """The frames in reverse order: the motion runs backwards, each frame is intact."""
    return _check(videos).flip(dims=(1,))


def frozen(videos: torch.Tensor) -> torch.Tensor:
    """A still video: the first frame repeated ``F`` times (no motion at all)."""
    x = _check(videos)
    return x[:, :1].expand_as(x).contiguous()


def duplicated_frames(videos: torch.Tensor) -> torch.Tensor:
    """Every frame shown twice, then cut to ``F`` frames: the first half of the video at half speed."""
    x = _check(videos)
    return x.repeat_interleave(2, dim=1)[:, : x.shape[1]].contiguous()


def fewer_frames(videos: torch.Tensor) -> torch.Tensor:
    """Resampled in time to ``(F - 1) // 2 + 1`` frames (linear, the ends kept; with Wan's frame
    counts, ``F = 4k + 1``, exactly every other frame): the same motion in fewer, farther-apart frames.
    A one-frame video stays as it is."""
    x = _check(videos)
    b, f, c, h, w = x.shape
    target = (f - 1) // 2 + 1
    if target == f:
        return x.clone()
    line = x.permute(0, 2, 3, 4, 1).reshape(b, c * h * w, f)
    out = F.interpolate(line, size=target, mode="linear", align_corners=True)
    return out.reshape(b, c, h, w, target).permute(0, 4, 1, 2, 3).contiguous()


@dataclass(frozen=True)
class Edit:
    """One controlled edit: its name in tables and JSON, the function, and what kind of edit it is."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    degrading: bool  # a good reward should not prefer it
    motion: bool  # destroys or inverts the motion: a reward that barely moves is motion-blind
    what: str

    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        return self.fn(videos)


EDITS: tuple[Edit, ...] = (
    Edit("saturation_up", saturation_up, True, False, "chroma x2 around the pixel's luma"),
    Edit("saturation_down", saturation_down, True, False, "chroma x0.3"),
    Edit("brightness_up", brightness_up, True, False, "values x1.5"),
    Edit("brightness_down", brightness_down, True, False, "values x0.5"),
    Edit("contrast_up", contrast_up, True, False, "distance to the frame's mean luma x2"),
    Edit("contrast_down", contrast_down, True, False, "distance to the frame's mean luma x0.3"),
    Edit("sharpen", sharpen, False, False, "unsharp mask, amount 1.5"),
    Edit("blur", blur, True, False, "Gaussian, sigma 2% of the longest side"),
    Edit("jpeg", jpeg, True, False, f"Pillow JPEG, quality {JPEG_QUALITY}"),
    Edit("noise", additive_noise, True, False, "Gaussian, std 0.1"),
    Edit("shuffle", frame_shuffle, True, True, "frames in a random order"),
    Edit("reverse", frame_reversal, True, True, "frames in reverse order"),
    Edit("frozen", frozen, True, True, "the first frame repeated"),
    Edit("duplicated", duplicated_frames, False, False, "every frame twice, cut to length"),
    Edit("fewer_frames", fewer_frames, False, False, "resampled in time to (F-1)//2+1 frames"),
)


def edit_names() -> list[str]:
    """The edits' names in table order."""
    return [e.name for e in EDITS]
