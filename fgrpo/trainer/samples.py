"""Held-out sample videos of one evaluation: one MP4 per prompt, a captioned grid, and their index.

Rank 0 writes them from the thumbnails it gathered (fgrpo.trainer.evaluate). The grid shows each
prompt's first seed with the prompt's text and its mean reward, "before -> now" when the same
prompts were evaluated before training (samples/before.json). An image-to-video model's
conditioning image stands still beside each prompt's videos (first in its row, left of its grid
cell), so the grid and `fgrpo report`, which shows these files, show what each video started from.
File names are the run folder's (fgrpo.run_folder.samples); trackers and `fgrpo report` read the index.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fgrpo.media import captioned_grid, make_video_grid, write_video
from fgrpo.run_folder.samples import SampleFolder

MIN_PX = 128  # per-prompt videos and grid cells are upscaled (nearest) to at least this wide
FPS = 8


def reward_caption(now: float, before: float | None) -> str:
    return f"reward {before:+.3f} -> {now:+.3f}" if before is not None else f"reward {now:+.3f}"


def still_videos(images: torch.Tensor, frames: int) -> list[torch.Tensor]:
    """``[P, 3, h, w]`` uint8 images -> P videos ``[frames, 3, h, w]`` in [0, 1] that stand still."""
    return list((images.float() / 255)[:, None].expand(-1, frames, -1, -1, -1))


def write_samples(
    samples: Path,
    tag: str,
    thumbs: torch.Tensor,
    prompts: list[str],
    rewards: torch.Tensor,
    videos_per_prompt: int,
    step: int | None = None,
    images: tuple[torch.Tensor, list[str]] | None = None,
) -> dict:
    """`thumbs` ``[B, F, 3, h, w]`` uint8, `prompts` and `rewards` per video (each prompt's
    `videos_per_prompt` seeds in a row); `images`: per prompt, its conditioning image ``[P, 3, h, w]``
    uint8 and file (image-to-video). Writes samples/<tag>/prompt-NN.mp4, samples/<tag>.mp4 and, last,
    samples/<tag>.json; returns that index."""
    folder = SampleFolder(samples)
    n = max(1, videos_per_prompt)
    frames = thumbs.float() / 255
    b, f, _, h, w = frames.shape
    per_prompt = [(prompts[i], frames[i : i + n], [float(x) for x in rewards[i : i + n]]) for i in range(0, b, n)]
    stills = [None] * len(per_prompt) if images is None else still_videos(images[0], f)
    before = folder.read_index("before") if tag != "before" else None
    before_means = None
    if before and before.get("prompts") == [p for p, _, _ in per_prompt]:
        before_means = before.get("rewards")
    up = max(1, -(-MIN_PX // w))
    entries = []
    for i, ((prompt, videos, scores), still) in enumerate(zip(per_prompt, stills)):
        row = videos if still is None else torch.cat([still[None], videos])
        path = write_video(make_video_grid(row, nrow=len(row), upscale=up, padding=0), folder.video(tag, i), FPS)
        mean = sum(scores) / len(scores)
        entry = {
            "prompt": prompt,
            "reward": mean,
            "rewards": scores,
            "video": str(path.relative_to(folder.path)),
            "reward_before": before_means[i] if before_means else None,
        }
        entries.append(entry if images is None else {**entry, "image": images[1][i]})
    captions = [[e["prompt"], reward_caption(e["reward"], e["reward_before"])] for e in entries]
    cells = [
        v[0] if still is None else torch.cat([still, v[0]], dim=-1) for (_, v, _), still in zip(per_prompt, stills)
    ]
    grid = write_video(
        captioned_grid(torch.stack(cells), captions, min_cell_px=MIN_PX),
        folder.grid(tag),
        FPS,
    )
    index = {
        "tag": tag,
        "step": step,
        "videos_per_prompt": n,
        "prompts": [e["prompt"] for e in entries],
        "rewards": [e["reward"] for e in entries],
        "rewards_before": before_means,
        "videos": entries,
        "grid": str(grid.relative_to(folder.path)),
        "grid_captions": [" / ".join(c) for c in captions],
    }
    folder.write_index(tag, index)
    return index
