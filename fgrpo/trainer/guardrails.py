"""Guardrail metrics of the held-out videos: cheap pixel statistics, no model, that show a policy
gaming its reward with degenerate videos (frozen, flickering, washed out, over-saturated, blank,
all alike) while the reward still climbs.

Every evaluation (fgrpo.trainer.evaluate) adds them to its record in metrics.jsonl as
`guard/<name>`, the mean over the held-out videos, and the trainer adds `guard/<name>_drift`
(the value minus the run's "before" evaluation) for brightness, saturation and contrast. Trackers
log them as `eval/guard/<name>`; `fgrpo report` shows them in its "Guardrails" section.

Videos are evaluate.py's decoded frames: `[B, F, 3, H, W]`, RGB in [0, 1]. Luminance is Rec. 601,
Y = 0.299 R + 0.587 G + 0.114 B. Each per-video function returns a `[B]` float tensor.
"""

from __future__ import annotations

import math

import torch

PREFIX = "guard/"  # the record's keys; fgrpo.report.guardrails reads the same prefix
DRIFTED = ("brightness", "saturation", "contrast")  # drift: minus the "before" evaluation's value
EDGE_THRESHOLD = 0.1  # luminance step between neighbouring pixels that counts as an edge
COLOUR_LEVELS = 8  # per channel: an 8 x 8 x 8 = 512-bin colour histogram
LUMA = (0.299, 0.587, 0.114)


def luminance(videos: torch.Tensor) -> torch.Tensor:
    """`[B, F, 3, H, W]` -> `[B, F, H, W]`: Y = 0.299 R + 0.587 G + 0.114 B."""
    w = torch.tensor(LUMA, dtype=videos.dtype, device=videos.device).view(1, 1, 3, 1, 1)
    return (videos * w).sum(dim=2)


def motion_energy(videos: torch.Tensor) -> torch.Tensor:
    """mean over t >= 1, channels and pixels of |x_t - x_{t-1}|: 0 for a static video (or one frame),
    1 for frames alternating black and white."""
    if videos.shape[1] < 2:
        return videos.new_zeros(videos.shape[0])
    return (videos[:, 1:] - videos[:, :-1]).abs().flatten(1).mean(1)


def temporal_flicker(videos: torch.Tensor) -> torch.Tensor:
    """With m_t the mean luminance of frame t: mean over t of |m_{t+1} - 2 m_t + m_{t-1}| / 2, in
    [0, 1]. The second difference is 0 for steady brightness, a smooth fade and motion that keeps
    the frame's mean (a moving square), and 1 for frames alternating black and white; fewer than 3
    frames score 0."""
    if videos.shape[1] < 3:
        return videos.new_zeros(videos.shape[0])
    m = luminance(videos).flatten(2).mean(2)  # [B, F]
    return (m[:, 2:] - 2 * m[:, 1:-1] + m[:, :-2]).abs().mean(1) / 2


def brightness(videos: torch.Tensor) -> torch.Tensor:
    """Mean luminance over frames and pixels, in [0, 1]."""
    return luminance(videos).flatten(1).mean(1)


def saturation(videos: torch.Tensor) -> torch.Tensor:
    """Mean HSV saturation S = (max - min) / max of each pixel's R, G, B (0 where max = 0), in [0, 1]:
    0 for greys, 1 for pure colours."""
    mx, mn = videos.amax(dim=2), videos.amin(dim=2)
    s = torch.where(mx > 0, (mx - mn) / mx.clamp_min(1e-12), torch.zeros_like(mx))
    return s.flatten(1).mean(1)


def contrast(videos: torch.Tensor) -> torch.Tensor:
    """Standard deviation of luminance over each frame's pixels (population), mean over frames: 0
    for a flat frame, 0.5 for half black and half white."""
    return luminance(videos).flatten(2).std(2, correction=0).mean(1)


def colour_entropy(videos: torch.Tensor, levels: int = COLOUR_LEVELS) -> torch.Tensor:
    """Shannon entropy of the video's colour histogram (each channel quantised to `levels` levels,
    levels^3 bins, all frames' pixels), divided by its maximum log2(levels^3): in [0, 1], 0 for one
    colour, 1 for every bin equally often."""
    q = (videos * levels).clamp(0, levels - 1).to(torch.int32)  # [B, F, 3, H, W]; small ints, small temporaries
    index = (q[:, :, 0] * levels + q[:, :, 1]) * levels + q[:, :, 2]  # [B, F, H, W]
    bins = levels**3
    out = []
    for v in index.flatten(1):
        p = torch.bincount(v, minlength=bins).double() / v.numel()
        p = p[p > 0]
        out.append(-(p * p.log2()).sum() / math.log2(bins))
    return torch.stack(out).to(videos.dtype)


def edge_density(videos: torch.Tensor, threshold: float = EDGE_THRESHOLD) -> torch.Tensor:
    """Share of pixels whose luminance gradient magnitude sqrt(gx^2 + gy^2) (forward differences to
    the right and downward neighbours) exceeds `threshold`, over all frames: 0 for a flat image.
    A per-pixel quantity, so compare runs at the same resolution."""
    y = luminance(videos)
    if y.shape[-1] < 2 or y.shape[-2] < 2:
        return videos.new_zeros(videos.shape[0])
    gx = y[..., :-1, 1:] - y[..., :-1, :-1]
    gy = y[..., 1:, :-1] - y[..., :-1, :-1]
    return ((gx.square() + gy.square()).sqrt() > threshold).flatten(1).float().mean(1)


def diversity(videos: torch.Tensor, per_prompt: int) -> float:
    """Mean over prompts of the mean over pairs i < j of a prompt's videos of mean |v_i - v_j| (videos
    grouped `per_prompt` at a time, in order): 0 with one video per prompt or identical videos."""
    n = videos.shape[0]
    if per_prompt < 1 or n % per_prompt:
        raise ValueError(f"eval.videos_per_prompt: {n} videos do not split into groups of {per_prompt}")
    if per_prompt == 1 or n == 0:
        return 0.0
    per_group = []
    for g in videos.float().split(per_prompt):
        pairs = [(g[i] - g[j]).abs().mean() for i in range(per_prompt) for j in range(i + 1, per_prompt)]
        per_group.append(torch.stack(pairs).mean())
    return float(torch.stack(per_group).mean())


PER_VIDEO = {
    "motion": motion_energy,
    "flicker": temporal_flicker,
    "brightness": brightness,
    "saturation": saturation,
    "contrast": contrast,
    "colour_entropy": colour_entropy,
    "edge_density": edge_density,
}
NAMES = (*PER_VIDEO, "diversity")  # every guard/<name> of an eval record (plus the DRIFTED drifts)


def per_video_table(frames: torch.Tensor) -> torch.Tensor:
    """`[B, F, 3, H, W]` -> `[B, len(PER_VIDEO)]` float32, one video at a time (full-resolution
    videos are large: the temporaries stay one video's size)."""
    rows = [torch.stack([f(v.float()) for f in PER_VIDEO.values()], dim=1) for v in frames.split(1)]
    return torch.cat(rows) if rows else frames.new_zeros(0, len(PER_VIDEO), dtype=torch.float32)


def guard_record(table: torch.Tensor, thumbnails: torch.Tensor, per_prompt: int) -> dict[str, float]:
    """The record's `guard/<name>`: each per-video metric's mean over the `table`'s videos, and the
    diversity of the uint8 `thumbnails` ([N, F, 3, h, w], every video, prompt by prompt) in [0, 1]."""
    out = {f"{PREFIX}{name}": float(table[:, i].mean()) for i, name in enumerate(PER_VIDEO)}
    out[f"{PREFIX}diversity"] = diversity(thumbnails.float() / 255, per_prompt)
    return out


def before_of(evals: list[dict]) -> dict | None:
    """The run's "before" evaluation record (tag "before", at step 0), if it has one."""
    return next((r for r in evals if r.get("tag") == "before"), None)


def drift(record: dict, before: dict | None) -> dict[str, float]:
    """`guard/<name>_drift` = the record's value minus `before`'s, for brightness, saturation and
    contrast; nothing without a before record carrying them (a run started before guardrails)."""
    if before is None:
        return {}
    keys = (f"{PREFIX}{name}" for name in DRIFTED)
    return {f"{k}_drift": record[k] - before[k] for k in keys if k in record and k in before}
