"""The miniature world: a grammar of scene attributes, its prompts, and a renderer of ground truth.

A scene is one or two identical objects (shape, colour, size) moving in one direction at one
speed over a plain background. Its prompt names every attribute, e.g.
``"two large red triangles moving left quickly on a black background"``; :func:`parse_prompt`
reads it back. :func:`render` draws the scene's video deterministically from a seed (the seed
places the objects; everything else is the prompt's), at the size the CPU trains:
:data:`FRAMES` frames of :data:`SIZE` x :data:`SIZE` pixels, RGB in [0, 1].

Compositional hold-out: the colour/shape pairs in :data:`UNSEEN_PAIRS` never appear in
pre-training (every colour and every shape does, in other pairs), so held-out prompts ask the
pretrained model for combinations it has never seen: room for alignment.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import asdict, dataclass

import torch

WORLD_VERSION = 1  # bump when the grammar, the renderer or the prompt sets change
FRAMES, SIZE = 9, 64

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.12),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 7.0, "large": 13.0}  # half-extent in pixels
COUNTS: dict[str, int] = {"a": 1, "two": 2}
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEEDS: dict[str, float] = {"slowly": 1.25, "quickly": 3.25}  # pixels per frame
BACKGROUNDS: dict[str, tuple[float, float, float]] = {"black": (0.04, 0.04, 0.04), "white": (0.93, 0.93, 0.93)}
ATTRIBUTES = ("count", "size", "colour", "shape", "direction", "speed", "background")
UNSEEN_PAIRS = frozenset({("red", "triangle"), ("green", "square"), ("blue", "circle"), ("yellow", "triangle")})
GAP = 3.0  # pixels between two objects


@dataclass(frozen=True)
class Scene:
    """One point of the grammar: the attributes a prompt names."""

    count: str
    size: str
    colour: str
    shape: str
    direction: str
    speed: str
    background: str

    @property
    def prompt(self) -> str:
        noun = self.shape + ("s" if COUNTS[self.count] > 1 else "")
        return (
            f"{self.count} {self.size} {self.colour} {noun} moving {self.direction} {self.speed} "
            f"on a {self.background} background"
        )

    @property
    def seen_in_pretraining(self) -> bool:
        return (self.colour, self.shape) not in UNSEEN_PAIRS

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def all_scenes() -> list[Scene]:
    """Every scene of the grammar, in a fixed order (2 x 2 x 4 x 3 x 4 x 2 x 2 = 768)."""
    return [
        Scene(*values) for values in itertools.product(COUNTS, SIZES, COLOURS, SHAPES, DIRECTIONS, SPEEDS, BACKGROUNDS)
    ]


_PROMPT = re.compile(
    rf"^(?P<count>{'|'.join(COUNTS)}) (?P<size>{'|'.join(SIZES)}) (?P<colour>{'|'.join(COLOURS)}) "
    rf"(?P<shape>{'|'.join(SHAPES)})s? moving (?P<direction>{'|'.join(DIRECTIONS)}) "
    rf"(?P<speed>{'|'.join(SPEEDS)}) on a (?P<background>{'|'.join(BACKGROUNDS)}) background$"
)


def parse_prompt(prompt: str) -> Scene:
    """The scene a prompt of this world describes; ValueError for any other text."""
    match = _PROMPT.match(prompt.strip().lower())
    if match is None:
        raise ValueError(f"not a miniature-world prompt: {prompt!r} (expected e.g. {all_scenes()[0].prompt!r})")
    return Scene(**match.groupdict())


def _object_mask(
    shape: str, half: float, cx: torch.Tensor, cy: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor
) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] of one object per frame: [F, H, W] from centres [F]."""
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    if shape == "circle":
        sdf = (dx.square() + dy.square()).sqrt() - half
    elif shape == "square":
        sdf = torch.maximum(dx.abs(), dy.abs()) - half
    else:  # an upward triangle: base 2*half at the bottom, apex at the top, inside the same box
        # Inside when |dx| <= half * (dy + half) / (2 * half), -half <= dy <= half.
        edge = (2.0 * dx.abs() - (dy + half)) / 5.0**0.5  # distance to a slanted side (slope 2)
        sdf = torch.maximum(torch.maximum(edge, dy - half), -half - dy)
    return (0.5 - sdf).clamp(0.0, 1.0)


def trajectory(scene: Scene, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Centre (x [F], y [F]) of each object, in pixels: a seeded start that keeps the whole path in frame."""
    rng = random.Random(f"{WORLD_VERSION}:{seed}")
    half, n = SIZES[scene.size], COUNTS[scene.count]
    ux, uy = DIRECTIONS[scene.direction]
    travel = SPEEDS[scene.speed] * (FRAMES - 1)
    margin = half + 2.0  # the anti-aliased edge (a triangle's acute corners reach ~1.5 px out) stays inside
    # Along the motion: start anywhere the whole path fits.
    lo_along, hi_along = margin, SIZE - margin - travel
    along0 = rng.uniform(lo_along, hi_along)
    # Across the motion: the group of n objects (spaced 2*half + GAP) fits.
    spread = (n - 1) * (2 * half + GAP)
    across0 = rng.uniform(margin, SIZE - margin - spread)
    t = torch.arange(FRAMES, dtype=torch.float32)
    along = along0 + travel * t / (FRAMES - 1)
    if ux + uy < 0:  # left or up: run the same path backwards
        along = SIZE - along
    centres = []
    for i in range(n):
        across = torch.full_like(t, across0 + i * (2 * half + GAP))
        centres.append((along, across) if ux else (across, along))
    return centres


def coverage(scene: Scene, seed: int) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] of the scene's objects: [FRAMES, SIZE, SIZE] float32."""
    ys, xs = torch.meshgrid(
        torch.arange(SIZE, dtype=torch.float32) + 0.5, torch.arange(SIZE, dtype=torch.float32) + 0.5, indexing="ij"
    )
    cover = torch.zeros(FRAMES, SIZE, SIZE)
    for cx, cy in trajectory(scene, seed):
        cover = torch.maximum(cover, _object_mask(scene.shape, SIZES[scene.size], cx, cy, ys, xs))
    return cover


def render(scene: Scene, seed: int) -> torch.Tensor:
    """The ground-truth video of `scene`: [FRAMES, 3, SIZE, SIZE] float32 in [0, 1]."""
    bg = torch.tensor(BACKGROUNDS[scene.background]).view(1, 3, 1, 1)
    fg = torch.tensor(COLOURS[scene.colour]).view(1, 3, 1, 1)
    a = coverage(scene, seed)[:, None]
    return bg * (1 - a) + fg * a


def render_batch(scenes: list[Scene], seeds: list[int]) -> torch.Tensor:
    """[B, FRAMES, 3, SIZE, SIZE] ground truth of each (scene, seed)."""
    return torch.stack([render(s, seed) for s, seed in zip(scenes, seeds)])


@dataclass(frozen=True)
class PromptSets:
    """The prompt sets of the world: pre-training scenes, RL training prompts, held-out prompts."""

    pretrain: list[Scene]
    rl_train: list[Scene]
    heldout: list[Scene]


def prompt_sets(rl_train: int = 96, heldout: int = 24, seed: int = 0) -> PromptSets:
    """Pre-training uses every scene with a seen colour/shape pair. Held-out prompts all ask for an
    unseen pair; RL training prompts are half unseen-pair, half seen-pair scenes; the three sets'
    prompts are disjoint (RL and held-out never share a scene)."""
    scenes = all_scenes()
    seen = [s for s in scenes if s.seen_in_pretraining]
    unseen = [s for s in scenes if not s.seen_in_pretraining]
    rng = random.Random(f"{WORLD_VERSION}:prompts:{seed}")
    rng.shuffle(unseen)
    held = unseen[:heldout]
    rest_unseen = unseen[heldout:]
    n_unseen = rl_train // 2
    train = rest_unseen[:n_unseen] + rng.sample(seen, rl_train - n_unseen)
    rng.shuffle(train)
    return PromptSets(pretrain=seen, rl_train=train, heldout=held)


def prompt_file_text(sets: PromptSets | None = None) -> str:
    """prompts/miniature.txt: the RL training prompts, then the held-out ones (a recipe's
    `prompts.heldout` = len(sets.heldout) holds out exactly those)."""
    sets = sets or prompt_sets()
    return "".join(s.prompt + "\n" for s in [*sets.rl_train, *sets.heldout])
