"""A samples folder: held-out sample videos of each evaluation, and the index that captions them.

    samples/<tag>.mp4                 the captioned grid: one cell per prompt, its text and reward
                                      (before -> after); .gif where no MP4 writer is installed
    samples/<tag>/prompt-NN.mp4       one video per held-out prompt (its seeds side by side)
    samples/<tag>.json                the index: prompts, rewards, the reward before training, files

A run's is `RUN/samples/`; `fgrpo eval` writes one under `RUN/eval/<name>/samples/`. Tags are
`before`, `step-NNNNNN` and `final` for a run, `videos` for `fgrpo eval`. Paths in the index are
relative to the samples folder, so a run folder can be moved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fgrpo.fileio import atomic_write_json, read_json

VIDEO_EXTS = ("mp4", "gif")


def tag_order(tag: str) -> tuple:
    """before < step-1 < step-2 < ... < final < anything else (alphabetically)."""
    m = re.fullmatch(r"step-(\d+)", tag)
    if tag == "before":
        return (0, 0, "")
    if m:
        return (1, int(m.group(1)), "")
    if tag == "final":
        return (2, 0, "")
    return (3, 0, tag)


@dataclass(frozen=True)
class SampleFolder:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    def grid(self, tag: str, ext: str = "mp4") -> Path:
        return self.path / f"{tag}.{ext}"

    def video(self, tag: str, index: int, ext: str = "mp4") -> Path:
        return self.path / tag / f"prompt-{index:02d}.{ext}"

    def index_file(self, tag: str) -> Path:
        return self.path / f"{tag}.json"

    def write_index(self, tag: str, index: dict) -> None:
        """Written last, after the videos it names (atomic): an index names only whole files."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.index_file(tag), index)

    def read_index(self, tag: str) -> dict | None:
        found = read_json(self.index_file(tag))
        return found if isinstance(found, dict) else None

    def tags(self) -> list[str]:
        """Tags with an index, in training order (before, step-N..., final)."""
        if not self.path.is_dir():
            return []
        return sorted((p.stem for p in self.path.glob("*.json")), key=tag_order)

    def resolve(self, relative: str) -> Path:
        return self.path / relative

    def find_grid(self, tag: str) -> Path | None:
        """The grid video of `tag` as written (MP4, or the GIF fallback); None when there is none."""
        for ext in VIDEO_EXTS:
            if self.grid(tag, ext).is_file():
                return self.grid(tag, ext)
        return None
