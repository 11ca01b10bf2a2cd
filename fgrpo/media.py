"""Write videos as animated GIFs (Pillow), atomically.

Frames are float tensors in ``[0, 1]`` (values outside are clamped), with 1
(grey) or 3 (RGB) channels; any dtype/device is accepted. Files are written
to a temporary file in the target folder and moved into place with
``os.replace``, so a crash never leaves a half-written GIF.

GIF caveats: colours are quantised to a 256-colour palette per frame, frame
durations are rounded to 10 ms, and Pillow merges identical consecutive
frames into one (their durations are summed, so playback is unchanged).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch
from PIL import Image

__all__ = ["make_video_grid", "save_video", "save_video_grid", "to_pil_frames"]


def to_pil_frames(frames: torch.Tensor) -> list[Image.Image]:
    """Convert ``[F, C, H, W]`` in ``[0, 1]`` (C = 1 or 3) into RGB PIL images."""
    if frames.ndim != 4 or frames.shape[1] not in (1, 3) or frames.shape[0] == 0:
        raise ValueError(f"frames must be [F, C, H, W] with F >= 1, C in (1, 3), got {tuple(frames.shape)}")
    x = frames.detach().to(device="cpu", dtype=torch.float32)
    x = torch.nan_to_num(x, nan=0.0).clamp(0.0, 1.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    arr = (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return [Image.fromarray(a) for a in arr]


def _atomic_save_gif(images: list[Image.Image], path: Path, fps: int) -> Path:
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            images[0].save(
                fh,
                format="GIF",
                save_all=True,
                append_images=images[1:],
                duration=max(10, round(1000 / fps)),
                loop=0,
            )
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return path


def save_video(frames: torch.Tensor, path: Path | str, fps: int = 8) -> Path:
    """Save ``[F, C, H, W]`` frames in ``[0, 1]`` as a looping GIF; returns the path."""
    return _atomic_save_gif(to_pil_frames(frames), Path(path), fps)


def make_video_grid(
    videos: torch.Tensor, nrow: int | None = None, upscale: int = 1, padding: int = 0
) -> torch.Tensor:
    """Tile ``[B, F, C, H, W]`` into one ``[F, C, H', W']`` video.

    ``nrow`` is the number of videos per row (default ``ceil(sqrt(B))``);
    empty cells are black. ``upscale`` is a nearest-neighbour factor and
    ``padding`` a black border (pixels, after upscaling) around every cell.
    """
    if videos.ndim != 5 or videos.shape[0] == 0:
        raise ValueError(f"videos must be [B, F, C, H, W] with B >= 1, got {tuple(videos.shape)}")
    if upscale < 1 or padding < 0:
        raise ValueError(f"need upscale >= 1 and padding >= 0, got {upscale}, {padding}")
    b, f, c, _, _ = videos.shape
    ncol = nrow if nrow is not None else math.ceil(math.sqrt(b))
    if ncol < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    ncol = min(ncol, b)
    rows = math.ceil(b / ncol)
    x = videos.detach().to(device="cpu", dtype=torch.float32)
    if upscale > 1:
        x = x.repeat_interleave(upscale, dim=-2).repeat_interleave(upscale, dim=-1)
    if padding:
        x = torch.nn.functional.pad(x, (padding, 0, padding, 0))
    h, w = x.shape[-2:]
    if rows * ncol > b:
        x = torch.cat([x, x.new_zeros(rows * ncol - b, f, c, h, w)])
    grid = x.reshape(rows, ncol, f, c, h, w).permute(2, 3, 0, 4, 1, 5).reshape(f, c, rows * h, ncol * w)
    if padding:
        grid = torch.nn.functional.pad(grid, (0, padding, 0, padding))
    return grid


def save_video_grid(
    videos: torch.Tensor,
    path: Path | str,
    nrow: int | None = None,
    upscale: int = 1,
    fps: int = 8,
    padding: int = 0,
) -> Path:
    """Tile ``[B, F, C, H, W]`` videos (see :func:`make_video_grid`) into one GIF."""
    return save_video(make_video_grid(videos, nrow=nrow, upscale=upscale, padding=padding), path, fps)
