"""Write videos, atomically: MP4 (H.264, PyAV) with GIF (Pillow) as the fallback; captioned grids.

Frames are float tensors in ``[0, 1]`` (values outside are clamped), with 1
(grey) or 3 (RGB) channels; any dtype/device is accepted. Files are written
to a temporary file in the target folder and moved into place (fgrpo.fileio.atomic_path, the
one implementation), so a crash never leaves a half-written video.

MP4 is written by PyAV, whose wheel ships FFmpeg with libx264 (nothing to install on a cluster):
H.264, yuv420p (odd sizes padded by one black row/column), which every browser, TensorBoard
and W&B play. Where PyAV is missing or cannot encode, :func:`write_video` writes a GIF instead.

GIF caveats: colours are quantised to a 256-colour palette per frame, frame
durations are rounded to 10 ms, and Pillow merges identical consecutive
frames into one (their durations are summed, so playback is unchanged).
"""

from __future__ import annotations

import math
import warnings
from functools import cache
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from fgrpo.fileio import atomic_path

__all__ = [
    "caption_strip",
    "captioned_grid",
    "make_video_grid",
    "mp4_available",
    "read_video",
    "save_video",
    "save_video_grid",
    "to_pil_frames",
    "write_video",
]


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


def _write_gif(fh, images: list[Image.Image], fps: int) -> None:
    images[0].save(
        fh, format="GIF", save_all=True, append_images=images[1:], duration=max(10, round(1000 / fps)), loop=0
    )


def gif_bytes(frames: torch.Tensor, fps: int = 8) -> bytes:
    """``[F, C, H, W]`` in ``[0, 1]`` as the bytes of a looping GIF (for TensorBoard's image plugin)."""
    import io

    buf = io.BytesIO()
    _write_gif(buf, to_pil_frames(frames), fps)
    return buf.getvalue()


@cache
def mp4_available() -> bool:
    """Whether PyAV is installed with an H.264 encoder (its wheels ship libx264)."""
    try:
        import av
    except ImportError:
        return False
    return "libx264" in av.codecs_available


def _write_mp4(fh, images: list[Image.Image], fps: int) -> None:
    import av
    import numpy as np

    w, h = images[0].size
    W, H = w + w % 2, h + h % 2  # yuv420p needs even sizes: pad with black
    with av.open(str(fh), mode="w", format="mp4", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "16", "preset": "medium"}
        for im in images:
            a = np.zeros((H, W, 3), dtype=np.uint8)
            a[:h, :w] = np.asarray(im)
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _atomic_save(images: list[Image.Image], path: Path, fps: int) -> Path:
    """GIF or MP4 by the file's suffix, written to a temporary sibling and renamed into place."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    writer = {".gif": _write_gif, ".mp4": _write_mp4}.get(path.suffix.lower())
    if writer is None:
        raise ValueError(f"{path}: videos are .mp4 or .gif")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        writer(str(tmp), images, fps)  # by name: PyAV opens the file itself
    return path


def save_video(frames: torch.Tensor, path: Path | str, fps: int = 8) -> Path:
    """Save ``[F, C, H, W]`` frames in ``[0, 1]`` as ``path`` (a looping GIF for ``.gif``, H.264 for
    ``.mp4``); returns the path."""
    return _atomic_save(to_pil_frames(frames), Path(path), fps)


_warned_fallback = False


def write_video(frames: torch.Tensor, path: Path | str, fps: int = 8) -> Path:
    """Save as MP4 at ``path`` (its suffix is replaced by .mp4), or as a GIF beside it where no
    H.264 writer is available; returns the path written."""
    global _warned_fallback
    path = Path(path)
    images = to_pil_frames(frames)
    if mp4_available():
        try:
            return _atomic_save(images, path.with_suffix(".mp4"), fps)
        except Exception as e:  # noqa: BLE001 - an encoder that fails: GIF still shows the samples
            if not _warned_fallback:
                warnings.warn(
                    f"MP4 writing failed ({type(e).__name__}: {e}); writing GIF samples instead", stacklevel=2
                )
                _warned_fallback = True
    return _atomic_save(images, path.with_suffix(".gif"), fps)


def read_video(path: Path | str) -> torch.Tensor:
    """An MP4 or GIF file as ``[F, 3, H, W]`` float frames in ``[0, 1]`` (for trackers and tests)."""
    import numpy as np

    path = Path(path)
    if path.suffix.lower() == ".mp4":
        import av

        with av.open(str(path)) as f:
            arrays = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    else:
        from PIL import ImageSequence

        with Image.open(path) as im:
            arrays = [np.asarray(fr.convert("RGB")) for fr in ImageSequence.Iterator(im)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def make_video_grid(videos: torch.Tensor, nrow: int | None = None, upscale: int = 1, padding: int = 0) -> torch.Tensor:
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


# ----- captions


@cache
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            while draw.textlength(word, font=font) > width and len(word) > 1:  # a word wider than the cell
                cut = max(1, int(len(word) * width / draw.textlength(word, font=font)))
                lines.append(word[:cut])
                word = word[cut:]
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(".") + "..."
    return lines or [""]


def caption_strip(
    texts: list[str], width: int, font_size: int = 11, max_lines: int = 4, height: int | None = None
) -> torch.Tensor:
    """``[3, h, width]`` float image: `texts` (each wrapped to at most `max_lines` lines; the last
    text on one line of its own), light on a dark background. `height`: pad to this height."""
    font = _font(font_size)
    lines = [ln for t in texts[:-1] for ln in _wrap(t, font, width - 6, max_lines)] + (
        [_wrap(texts[-1], font, width - 6, 1)[0]] if texts else []
    )
    step = font_size + 3
    h = max(height or 0, 4 + step * len(lines))
    im = Image.new("RGB", (width, h), (24, 24, 24))
    draw = ImageDraw.Draw(im)
    for i, line in enumerate(lines):
        draw.text((3, 2 + i * step), line, fill=(235, 235, 235), font=font)
    import numpy as np

    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255


def captioned_grid(
    cells: torch.Tensor,
    captions: list[list[str]],
    ncol: int | None = None,
    min_cell_px: int = 160,
    font_size: int = 11,
    padding: int = 2,
) -> torch.Tensor:
    """``[B, F, C, H, W]`` cells in ``[0, 1]`` tiled into one ``[F, 3, H', W']`` video, each with its
    caption (a list of texts: e.g. the prompt, then the reward) in a strip below it. Cells are
    upscaled (nearest) to at least `min_cell_px` wide; every strip has the tallest one's height."""
    if cells.ndim != 5 or cells.shape[0] == 0 or len(captions) != cells.shape[0]:
        raise ValueError(f"need [B, F, C, H, W] cells and B captions, got {tuple(cells.shape)} and {len(captions)}")
    b, f, c, h, w = cells.shape
    x = cells.detach().to("cpu", torch.float32).clamp(0, 1)
    if c == 1:
        x = x.expand(-1, -1, 3, -1, -1)
    k = max(1, -(-min_cell_px // w))
    if k > 1:
        x = x.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
    width = w * k
    strips = [caption_strip(t, width, font_size) for t in captions]
    tallest = max(s.shape[1] for s in strips)
    strips = torch.stack([caption_strip(t, width, font_size, height=tallest) for t in captions])
    framed = torch.cat([x, strips[:, None].expand(-1, f, -1, -1, -1)], dim=-2)
    return make_video_grid(framed, nrow=ncol or min(b, 4), padding=padding)
