"""Scores of the miniature world: how well videos show their prompts, from :mod:`.detect`.

Three measures, each per attribute of :data:`~fgrpo.miniature.world.ATTRIBUTES`, ``[B]`` float32:

* :func:`faithfulness_scores`: SOFT scores in [0, 1], graded so that GRPO sees an improvement
  before the attribute is right (``d`` = RGB distance, ``p`` = the prompt's class):

  - colour, background: ``softmax_c(-d_c^2 / COLOUR_TEMPERATURE)[p]`` over the palette;
  - shape: ``softmax_s(-(fill - proto_s)^2 / SHAPE_TEMPERATURE)[p]`` over FILL_PROTOTYPES;
  - size: ``sigmoid(+-ln(half_extent / SIZE_THRESHOLD) / SIZE_TEMPERATURE)`` (+ for large);
  - count: ``mean_frames exp(-|n_frame - n_target|)``;
  - direction: ``0.5 (1 + cos(v, u_p)) * min(1, |v| / MOTION_REFERENCE)``: a static video scores 0;
  - speed: ``exp(-0.5 (ln(|v| / speed_p) / SPEED_SIGMA)^2)``: a bump around the prompt's speed
    (a static video scores 0, and so does one much too fast).

  Colour, shape and size score 0 for a video with no object.
* :func:`gold_scores`: STRICT binary scores (the evaluation's ground truth): the detected class
  is the prompt's AND the measurement is within a tight tolerance:

  - colour, background: RGB distance to the prompt's colour < GOLD_COLOUR_DISTANCE;
  - count: exactly the prompt's number of objects in EVERY frame;
  - size: half-extent class right and, in the median frame, every object's area within
    GOLD_AREA_RANGE x :func:`~fgrpo.miniature.detect.expected_area` of the prompt's shape and size;
  - shape: in the median frame, every object's fill ratio within GOLD_FILL_TOLERANCE of the
    prompt's prototype;
  - direction: ``|v| >= MOTION_REFERENCE`` and ``cos(v, u_p) > GOLD_DIRECTION_COS``;
  - speed: ``|v|`` within GOLD_SPEED_RANGE x the prompt's speed.
* :func:`saturation`: mean HSV saturation, the hackable part of the proxy reward.

Chance levels (a video scored against a uniformly random prompt): gold 1/2 for count, size,
speed and background, 1/4 for colour and direction, 1/3 for shape (mean ~0.40).
"""

from __future__ import annotations

import math

import torch

from fgrpo.miniature.detect import (
    BACKGROUND_NAMES,
    COLOUR_NAMES,
    FILL_PROTOTYPES,
    SIZE_NAMES,
    SIZE_THRESHOLD,
    Detections,
    detect,
    expected_area,
)
from fgrpo.miniature.world import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    COUNTS,
    DIRECTIONS,
    SHAPES,
    SPEEDS,
    Scene,
    parse_prompt,
)

__all__ = [
    "COLOUR_TEMPERATURE",
    "GOLD_AREA_RANGE",
    "GOLD_COLOUR_DISTANCE",
    "GOLD_DIRECTION_COS",
    "GOLD_FILL_TOLERANCE",
    "GOLD_SPEED_RANGE",
    "MOTION_REFERENCE",
    "SHAPE_TEMPERATURE",
    "SIZE_TEMPERATURE",
    "SPEED_SIGMA",
    "all_correct",
    "faithfulness_scores",
    "gold_scores",
    "mean_score",
    "parse_prompts",
    "saturation",
]

COLOUR_TEMPERATURE = 0.05  # squared RGB distance; palette entries are >= 0.7 apart
SHAPE_TEMPERATURE = 0.004  # squared fill-ratio difference; prototypes are >= 0.2 apart
SIZE_TEMPERATURE = 0.06  # in ln(half-extent); the sizes are ln(11/6) ~ 0.6 apart
SPEED_SIGMA = 0.3  # in ln(speed); the speeds are ln(3.25/1.25) ~ 0.96 apart
MOTION_REFERENCE = SPEEDS["slowly"] / 2  # px/frame: slower is (partly) static for direction
GOLD_COLOUR_DISTANCE = 0.25
GOLD_FILL_TOLERANCE = 0.1
GOLD_AREA_RANGE = (0.6, 1.6)
GOLD_DIRECTION_COS = 0.9
GOLD_SPEED_RANGE = (0.5, 1.5)


def parse_prompts(prompts: list[str]) -> list[Scene]:
    """The scene of each prompt; ValueError naming the first prompt that is not of this world."""
    return [parse_prompt(p) for p in prompts]


def _checked(frames: torch.Tensor, prompts: list[str]) -> list[Scene]:
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames must be [B, F, 3, H, W], got {tuple(frames.shape)}")
    if len(prompts) != frames.shape[0]:
        raise ValueError(f"got {len(prompts)} prompts for {frames.shape[0]} videos")
    return parse_prompts(list(prompts))


def _targets(scenes: list[Scene], attribute: str, names: tuple[str, ...], device) -> torch.Tensor:
    return torch.tensor([names.index(getattr(s, attribute)) for s in scenes], dtype=torch.long, device=device)


def _palette_score(
    rgb: torch.Tensor, palette: dict[str, tuple[float, float, float]], target: torch.Tensor
) -> torch.Tensor:
    table = torch.tensor(list(palette.values()), dtype=rgb.dtype, device=rgb.device)
    logits = -(torch.nan_to_num(rgb)[:, None] - table).square().sum(-1) / COLOUR_TEMPERATURE
    return logits.softmax(dim=-1).gather(1, target[:, None])[:, 0]


def _per_scene(scenes: list[Scene], fn, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([fn(s) for s in scenes], dtype=like.dtype, device=like.device)


def _direction_cos(det: Detections, scenes: list[Scene]) -> torch.Tensor:
    unit = torch.tensor([DIRECTIONS[s.direction] for s in scenes], dtype=det.velocity.dtype, device=det.velocity.device)
    return (det.velocity * unit).sum(-1) / det.speed.clamp(min=1e-6)


def faithfulness_scores(
    frames: torch.Tensor, prompts: list[str], det: Detections | None = None
) -> dict[str, torch.Tensor]:
    """Soft per-attribute scores ``{attribute: [B]}`` in [0, 1] (see the module docstring)."""
    scenes = _checked(frames, prompts)
    det = detect(frames) if det is None else det
    dev, obj = frames.device, det.has_object
    zero = torch.zeros_like(det.speed)
    out = {}
    out["background"] = _palette_score(
        det.background_rgb, BACKGROUNDS, _targets(scenes, "background", BACKGROUND_NAMES, dev)
    )
    out["colour"] = _palette_score(det.colour_rgb, COLOURS, _targets(scenes, "colour", COLOUR_NAMES, dev))
    protos = torch.tensor([FILL_PROTOTYPES[s] for s in SHAPES], dtype=zero.dtype, device=dev)
    shape_logits = -(torch.nan_to_num(det.fill_ratio)[:, None] - protos).square() / SHAPE_TEMPERATURE
    out["shape"] = shape_logits.softmax(-1).gather(1, _targets(scenes, "shape", SHAPES, dev)[:, None])[:, 0]
    sign = _per_scene(scenes, lambda s: 1.0 if s.size == "large" else -1.0, zero)
    log_extent = torch.nan_to_num(det.half_extent, nan=SIZE_THRESHOLD).log() - math.log(SIZE_THRESHOLD)
    out["size"] = torch.sigmoid(sign * log_extent / SIZE_TEMPERATURE)
    n = _per_scene(scenes, lambda s: COUNTS[s.count], zero)
    out["count"] = torch.exp(-(det.frame_count.to(zero.dtype) - n[:, None]).abs()).mean(dim=1)
    moving = (det.speed / MOTION_REFERENCE).clamp(max=1.0)
    out["direction"] = 0.5 * (1 + _direction_cos(det, scenes)) * moving
    target_speed = _per_scene(scenes, lambda s: SPEEDS[s.speed], zero)
    log_ratio = det.speed.clamp(min=1e-6).log() - target_speed.log()
    out["speed"] = torch.exp(-0.5 * (log_ratio / SPEED_SIGMA).square())
    for key in ("colour", "shape", "size"):
        out[key] = out[key].where(obj, zero)
    return {a: out[a].float().clamp(0, 1) for a in ATTRIBUTES}


def gold_scores(frames: torch.Tensor, prompts: list[str], det: Detections | None = None) -> dict[str, torch.Tensor]:
    """Strict binary per-attribute scores ``{attribute: [B]}`` of 0. / 1. (see the module docstring)."""
    scenes = _checked(frames, prompts)
    det = detect(frames) if det is None else det
    dev, obj = frames.device, det.has_object
    like = det.speed
    out = {}
    bg_rgb = _per_scene(scenes, lambda s: BACKGROUNDS[s.background], like)
    out["background"] = (det.background_class == _targets(scenes, "background", BACKGROUND_NAMES, dev)) & (
        (det.background_rgb - bg_rgb).norm(dim=-1) < GOLD_COLOUR_DISTANCE
    )
    fg_rgb = _per_scene(scenes, lambda s: COLOURS[s.colour], like)
    out["colour"] = (
        obj
        & (det.colour_class == _targets(scenes, "colour", COLOUR_NAMES, dev))
        & ((torch.nan_to_num(det.colour_rgb, nan=9.0) - fg_rgb).norm(dim=-1) < GOLD_COLOUR_DISTANCE)
    )
    n = _per_scene(scenes, lambda s: COUNTS[s.count], like).long()
    out["count"] = (det.frame_count == n[:, None]).all(dim=1)
    expected = _per_scene(scenes, lambda s: expected_area(s.shape, s.size), like)[:, None]
    lo, hi = GOLD_AREA_RANGE
    area_ok = ((det.area_min / expected >= lo) & (det.area_max / expected <= hi)).float()
    present = det.frame_count > 0
    area_ok = area_ok.where(present, torch.full_like(area_ok, float("nan"))).nanmedian(dim=1).values == 1
    out["size"] = obj & area_ok & (det.size_class == _targets(scenes, "size", SIZE_NAMES, dev))
    proto = _per_scene(scenes, lambda s: FILL_PROTOTYPES[s.shape], like)[:, None]
    worst = torch.maximum((det.fill_min - proto).abs(), (det.fill_max - proto).abs())  # NaN without object
    out["shape"] = (
        obj
        & (det.shape_class == _targets(scenes, "shape", SHAPES, dev))
        & (torch.nan_to_num(worst.nanmedian(dim=1).values, nan=9.0) < GOLD_FILL_TOLERANCE)
    )
    out["direction"] = (det.speed >= MOTION_REFERENCE) & (_direction_cos(det, scenes) > GOLD_DIRECTION_COS)
    target_speed = _per_scene(scenes, lambda s: SPEEDS[s.speed], like)
    out["speed"] = (det.speed >= GOLD_SPEED_RANGE[0] * target_speed) & (det.speed <= GOLD_SPEED_RANGE[1] * target_speed)
    return {a: out[a].float() for a in ATTRIBUTES}


def mean_score(scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B] mean over the attributes of :func:`faithfulness_scores` or :func:`gold_scores`."""
    return torch.stack([scores[a] for a in ATTRIBUTES]).mean(dim=0)


def all_correct(gold: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B] 1. where every attribute's gold score is 1 (the "all attributes right" rate's terms)."""
    return torch.stack([gold[a] for a in ATTRIBUTES]).amin(dim=0)


def saturation(frames: torch.Tensor) -> torch.Tensor:
    """[B] mean HSV saturation ``(max - min) / max`` (0 where max = 0) over all pixels and frames."""
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames must be [B, F, 3, H, W], got {tuple(frames.shape)}")
    x = frames.float().clamp(0, 1)
    hi, lo = x.amax(dim=2), x.amin(dim=2)
    return torch.where(hi > 0, (hi - lo) / hi.clamp(min=1e-8), torch.zeros_like(hi)).flatten(1).mean(dim=1)
