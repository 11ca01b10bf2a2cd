"""Attribute detectors of the miniature world: read a scene's attributes back from decoded frames.

Input: videos ``[B, F, 3, H, W]`` float in [0, 1] (any H, W >= 3 and F >= 1; F = 1 has no motion).
Pure torch, vectorised over the batch and the frames. The method, step by step:

1. **Background**: the per-channel median of the border pixels (outermost ring, every frame);
   its class is the nearest :data:`~fgrpo.miniature.world.BACKGROUNDS` colour (RGB distance).
2. **Foreground mask**: pixels farther than :data:`FG_THRESHOLD` (RGB Euclidean distance) from
   that measured background colour.
3. **Components**: connected components (8-connectivity) of each frame's mask, found by label
   propagation: every foreground pixel starts with its own label (its 1-based linear index), and
   a 3x3 maximum masked to the foreground, followed by a pointer jump (label ``L`` takes the
   label of pixel ``L - 1``), is iterated until nothing changes. Components under :data:`MIN_COMPONENT_AREA`
   pixels are specks and ignored. Per component: area ``A`` (pixels), bounding box ``w x h``,
   fill ratio ``A / (w h)``, half-extent ``sqrt(w h) / 2``, centroid.
4. **Colour**: the per-channel median of the *core* foreground pixels (those whose 3x3
   neighbourhood is all foreground, so anti-aliased edges do not tint it; all foreground pixels
   when a video has no core), over every frame; class = nearest :data:`COLOURS` entry.
5. **Count**: number of components per frame; the video's count is the median over frames.
6. **Shape**: fill ratio vs :data:`FILL_PROTOTYPES` (square 1, circle pi/4, triangle 1/2: an
   object's area over its bounding box's); class = the nearest prototype.
7. **Size**: half-extent vs :data:`SIZES`; class = the nearer in log space, i.e. above or below
   :data:`SIZE_THRESHOLD` ``= sqrt(6 * 11) ~ 8.1`` px. The bounding box does not depend on the
   shape (every shape of half-extent ``h`` fills a ``2h x 2h`` box), so a wrong shape does not
   bias the size; the area itself is kept (``area_min``/``area_max``/``object_area``) for the
   gold score to compare with :func:`expected_area`.
8. **Motion**: the foreground centroid per frame (over kept components) and its least-squares
   velocity ``v = sum_t (t - t_bar)(c_t - c_bar) / sum_t (t - t_bar)^2`` (px/frame, over frames
   that have an object); direction = the unit direction of :data:`DIRECTIONS` with the largest
   ``v . u``; speed = ``|v|`` vs :data:`SPEED_THRESHOLD`, the geometric mean of the two
   :data:`SPEEDS`. Image y grows downwards, as in the renderer.

Per-video statistics over frames are medians over the frames that have an object (NaN where a
video has none; ``has_object`` says which).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fgrpo.miniature.world import BACKGROUNDS, COLOURS, COUNTS, DIRECTIONS, SHAPES, SIZES, SPEEDS

__all__ = [
    "AREA_FACTOR",
    "BACKGROUND_NAMES",
    "COLOUR_NAMES",
    "COUNT_NAMES",
    "DIRECTION_NAMES",
    "Detections",
    "FG_THRESHOLD",
    "FILL_PROTOTYPES",
    "MIN_COMPONENT_AREA",
    "SIZE_NAMES",
    "SIZE_THRESHOLD",
    "SPEED_NAMES",
    "SPEED_THRESHOLD",
    "components",
    "detect",
    "detect_background",
    "detect_colour",
    "detect_motion",
    "expected_area",
    "foreground_mask",
]

FG_THRESHOLD = 0.3  # RGB distance from the background colour above which a pixel is foreground
MIN_COMPONENT_AREA = 6  # pixels; smaller components are specks
FILL_PROTOTYPES: dict[str, float] = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
AREA_FACTOR: dict[str, float] = {"circle": math.pi, "square": 4.0, "triangle": 2.0}  # area = factor * h^2
SPEED_THRESHOLD = math.sqrt(SPEEDS["slowly"] * SPEEDS["quickly"])  # px/frame between slowly and quickly
SIZE_THRESHOLD = math.sqrt(SIZES["small"] * SIZES["large"])  # half-extent (px) between small and large

COLOUR_NAMES, BACKGROUND_NAMES = tuple(COLOURS), tuple(BACKGROUNDS)
SIZE_NAMES, DIRECTION_NAMES, SPEED_NAMES = tuple(SIZES), tuple(DIRECTIONS), tuple(SPEEDS)
COUNT_NAMES = {n: word for word, n in COUNTS.items()}


def expected_area(shape: str, size: str) -> float:
    """Pixel area of one ground-truth object of this shape and size."""
    return AREA_FACTOR[shape] * SIZES[size] ** 2


def _table(d: dict[str, tuple[float, ...]], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(list(d.values()), dtype=like.dtype, device=like.device)


def _check(frames: torch.Tensor) -> torch.Tensor:
    if frames.ndim != 5 or frames.shape[2] != 3 or frames.shape[1] < 1 or min(frames.shape[-2:]) < 3:
        raise ValueError(f"frames must be [B, F>=1, 3, H>=3, W>=3], got {tuple(frames.shape)}")
    return frames.float() if frames.dtype != torch.float64 else frames


def detect_background(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(background RGB [B, 3], class index into BACKGROUND_NAMES [B]): median of the border pixels."""
    x = _check(frames)
    ring = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)  # [B, F, 3, P]
    rgb = ring.transpose(1, 2).flatten(2).median(dim=-1).values  # [B, 3]
    return rgb, torch.cdist(rgb, _table(BACKGROUNDS, rgb)).argmin(dim=-1)


def foreground_mask(frames: torch.Tensor, background: torch.Tensor | None = None) -> torch.Tensor:
    """[B, F, H, W] bool: pixels farther than FG_THRESHOLD from the (detected) background colour."""
    x = _check(frames)
    if background is None:
        background = detect_background(x)[0]
    return (x - background[:, None, :, None, None]).square().sum(dim=2).sqrt() > FG_THRESHOLD


def _dilate(labels: torch.Tensor) -> torch.Tensor:
    """3x3 maximum of [N, H, W] (zero outside the image), as two separable shifted maxima."""
    out = labels.clone()
    torch.maximum(out[:, :, 1:], labels[:, :, :-1], out=out[:, :, 1:])
    torch.maximum(out[:, :, :-1], labels[:, :, 1:], out=out[:, :, :-1])
    rows = out.clone()
    torch.maximum(out[:, 1:], rows[:, :-1], out=out[:, 1:])
    torch.maximum(out[:, :-1], rows[:, 1:], out=out[:, :-1])
    return out


def components(mask: torch.Tensor) -> torch.Tensor:
    """8-connected component labels of binary images ``[N, H, W]``: 0 for background, else the
    largest 1-based linear index of a pixel of the component (int64).

    Each step takes the 3x3 maximum of the labels within the foreground, then jumps: a label ``L``
    names pixel ``L - 1`` of the same component, whose own label is at least ``L``, so taking it
    propagates labels along chains in a logarithmic number of steps."""
    n, h, w = mask.shape
    keep = mask.reshape(n, h * w)
    zero = torch.zeros((), dtype=torch.int32, device=mask.device)
    labels = torch.where(keep, torch.arange(1, h * w + 1, dtype=torch.int32, device=mask.device), zero)
    while True:
        new = torch.where(keep, _dilate(labels.view(n, h, w)).view(n, h * w), zero)
        new = torch.where(keep, torch.maximum(new, new.gather(1, (new.long() - 1).clamp(min=0))), zero)
        if torch.equal(new, labels):
            return labels.view(n, h, w).long()
        labels = new


def detect_colour(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, 3] median RGB of the core foreground pixels (NaN for a video with no foreground)."""
    x = _check(frames)
    b, f, _, h, w = x.shape
    m = mask.reshape(b * f, 1, h, w).float()
    core = (-F.max_pool2d(-m, 3, stride=1, padding=1)).bool().view(b, f, h, w) & mask
    use = torch.where(core.flatten(1).any(dim=1)[:, None, None, None], core, mask)  # [B, F, H, W]
    px = x.permute(0, 2, 1, 3, 4).flatten(2)  # [B, 3, F*H*W]
    px = torch.where(use.flatten(1)[:, None, :], px, torch.full_like(px, float("nan")))
    return px.nanmedian(dim=-1).values


def detect_motion(centroid: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Least-squares velocity [B, 2] (px/frame, x right, y down) of centroids [B, F, 2] over the
    frames where ``present`` [B, F]; zero with fewer than two such frames."""
    wgt = present.to(centroid.dtype)
    t = torch.arange(centroid.shape[1], dtype=centroid.dtype, device=centroid.device).expand_as(wgt)
    n = wgt.sum(dim=1).clamp(min=1)
    t_bar = (wgt * t).sum(dim=1) / n
    c = torch.nan_to_num(centroid)
    c_bar = (wgt[..., None] * c).sum(dim=1) / n[:, None]
    dt = (t - t_bar[:, None]) * wgt
    var = (dt * dt).sum(dim=1)
    cov = (dt[..., None] * (c - c_bar[:, None])).sum(dim=1)
    return torch.where(var[:, None] > 0, cov / var.clamp(min=1e-12)[:, None], torch.zeros_like(cov))


@dataclass
class Detections:
    """What :func:`detect` reads from a batch of B videos of F frames. Class fields index the
    ``*_NAMES`` tuples; ``[B, F]`` fields are per frame, NaN where a frame has no object."""

    background_rgb: torch.Tensor  # [B, 3]
    background_class: torch.Tensor  # [B] long
    colour_rgb: torch.Tensor  # [B, 3], NaN without foreground
    colour_class: torch.Tensor  # [B] long, -1 without foreground
    frame_count: torch.Tensor  # [B, F] long: components per frame
    count: torch.Tensor  # [B] long: median over frames
    area_min: torch.Tensor  # [B, F] smallest / largest component area of the frame (pixels)
    area_max: torch.Tensor
    fill_min: torch.Tensor  # [B, F] smallest / largest fill ratio of the frame's components
    fill_max: torch.Tensor
    object_area: torch.Tensor  # [B] median over frames of the mean component area
    fill_ratio: torch.Tensor  # [B] median over frames of the mean fill ratio
    half_extent: torch.Tensor  # [B] median over frames of the mean sqrt(w h) / 2
    shape_class: torch.Tensor  # [B] long into SHAPES, -1 without an object
    size_class: torch.Tensor  # [B] long into SIZE_NAMES, -1 without an object
    centroid: torch.Tensor  # [B, F, 2] (x, y) pixels
    velocity: torch.Tensor  # [B, 2] px/frame
    speed: torch.Tensor  # [B] |velocity|
    direction_class: torch.Tensor  # [B] long into DIRECTION_NAMES
    speed_class: torch.Tensor  # [B] long into SPEED_NAMES
    foreground_fraction: torch.Tensor  # [B] share of foreground pixels over all frames
    has_object: torch.Tensor  # [B] bool: some frame has a kept component

    def attributes(self, i: int) -> dict[str, str | None]:
        """Video i's detected attributes by name (None where undetectable), as a Scene's fields."""

        def pick(names, k):
            return names[k] if k >= 0 else None

        n = int(self.count[i])
        return {
            "count": COUNT_NAMES.get(n, str(n)),
            "size": pick(SIZE_NAMES, int(self.size_class[i])),
            "colour": pick(COLOUR_NAMES, int(self.colour_class[i])),
            "shape": pick(SHAPES, int(self.shape_class[i])),
            "direction": DIRECTION_NAMES[int(self.direction_class[i])],
            "speed": SPEED_NAMES[int(self.speed_class[i])],
            "background": BACKGROUND_NAMES[int(self.background_class[i])],
        }


def _per_frame(frames: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Component statistics of each frame: ``{name: [B*F]}``."""
    n, h, w = mask.shape[0] * mask.shape[1], mask.shape[2], mask.shape[3]
    dev, dt = frames.device, frames.dtype
    labels = components(mask.reshape(n, h, w))
    img = torch.arange(n, device=dev)[:, None, None].expand(n, h, w)
    ys, xs = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    on = labels > 0
    gid = (img * (h * w) + labels - 1)[on]
    uniq, comp = torch.unique(gid, return_inverse=True)
    k = uniq.numel()
    x, y = xs.expand(n, h, w)[on].to(dt), ys.expand(n, h, w)[on].to(dt)

    def reduce(values, how):
        init = torch.zeros(k, dtype=dt, device=dev)
        return init.scatter_reduce(0, comp, values, reduce=how, include_self=False)

    area = torch.bincount(comp, minlength=k).to(dt)
    bw = reduce(x, "amax") - reduce(x, "amin") + 1
    bh = reduce(y, "amax") - reduce(y, "amin") + 1
    cimg = uniq // (h * w)
    kept = area >= MIN_COMPONENT_AREA
    area, bw, bh, cimg = area[kept], bw[kept], bh[kept], cimg[kept]
    sx, sy = reduce(x, "sum")[kept], reduce(y, "sum")[kept]
    fill, extent = area / (bw * bh), (bw * bh).sqrt() / 2

    nan = torch.full((n,), float("nan"), dtype=dt, device=dev)

    def per_image(values, how):
        return nan.scatter_reduce(0, cimg, values, reduce=how, include_self=False)

    count = torch.bincount(cimg, minlength=n)
    tot = torch.zeros(n, dtype=dt, device=dev).index_add(0, cimg, area)
    cnt = count.to(dt).where(count > 0, nan)
    centroid = torch.stack(
        [
            torch.zeros(n, dtype=dt, device=dev).index_add(0, cimg, sx),
            torch.zeros(n, dtype=dt, device=dev).index_add(0, cimg, sy),
        ],
        dim=-1,
    )
    return {
        "count": count,
        "area_min": per_image(area, "amin"),
        "area_max": per_image(area, "amax"),
        "fill_min": per_image(fill, "amin"),
        "fill_max": per_image(fill, "amax"),
        "area_mean": tot / cnt,
        "fill_mean": torch.zeros(n, dtype=dt, device=dev).index_add(0, cimg, fill) / cnt,
        "extent_mean": torch.zeros(n, dtype=dt, device=dev).index_add(0, cimg, extent) / cnt,
        "centroid": centroid / tot.where(count > 0, nan)[:, None] + 0.5,  # pixel centres
    }


def _nearest(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index of the nearest row of table [K, D] to each values [B, D]; -1 for a NaN row."""
    idx = torch.cdist(torch.nan_to_num(values), table).argmin(dim=-1)
    return idx.where(~values.isnan().any(dim=-1), torch.full_like(idx, -1))


def detect(frames: torch.Tensor) -> Detections:
    """Every attribute of every video of ``frames`` [B, F, 3, H, W] in [0, 1]."""
    x = _check(frames)
    b, f = x.shape[:2]
    bg_rgb, bg_class = detect_background(x)
    mask = foreground_mask(x, bg_rgb)
    colour_rgb = detect_colour(x, mask)
    stats = {key: v.view(b, f, *v.shape[1:]) for key, v in _per_frame(x, mask).items()}
    present = stats["count"] > 0
    has_object = present.any(dim=1)

    def over_frames(v):  # [B, F] -> [B]: median over frames with an object
        return v.nanmedian(dim=1).values

    velocity = detect_motion(stats["centroid"], present)
    units = torch.tensor(list(DIRECTIONS.values()), dtype=x.dtype, device=x.device)
    speed = velocity.norm(dim=-1)
    fill = over_frames(stats["fill_mean"])
    extent = over_frames(stats["extent_mean"])
    shape_table = torch.tensor([FILL_PROTOTYPES[s] for s in SHAPES], dtype=x.dtype, device=x.device)
    return Detections(
        background_rgb=bg_rgb,
        background_class=bg_class,
        colour_rgb=colour_rgb,
        colour_class=_nearest(colour_rgb, _table(COLOURS, x)),
        frame_count=stats["count"],
        count=stats["count"].median(dim=1).values,
        area_min=stats["area_min"],
        area_max=stats["area_max"],
        fill_min=stats["fill_min"],
        fill_max=stats["fill_max"],
        object_area=over_frames(stats["area_mean"]),
        fill_ratio=fill,
        half_extent=extent,
        shape_class=_nearest(fill[:, None], shape_table[:, None]),
        size_class=torch.where(extent > SIZE_THRESHOLD, SIZE_NAMES.index("large"), SIZE_NAMES.index("small")).where(
            ~extent.isnan(), -1
        ),
        centroid=stats["centroid"],
        velocity=velocity,
        speed=speed,
        direction_class=(velocity @ units.T).argmax(dim=-1),
        speed_class=torch.where(speed > SPEED_THRESHOLD, SPEED_NAMES.index("quickly"), SPEED_NAMES.index("slowly")),
        foreground_fraction=mask.flatten(1).float().mean(dim=1),
        has_object=has_object,
    )
