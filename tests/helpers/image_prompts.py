"""Image-to-video prompt files for tests: tiny PNGs written beside a JSONL file that names them."""

from __future__ import annotations

import json
from pathlib import Path

# Distinct colours, so the image conditions (and the videos they start) differ between prompts.
COLOURS = [(220, 30, 30), (30, 200, 40), (30, 40, 220), (230, 220, 40), (240, 240, 240), (20, 20, 20)]


def write_image(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    """A `size` (width, height) PNG: `colour` with its complement in the middle quarter (some structure)."""
    from PIL import Image

    width, height = size
    image = Image.new("RGB", size, colour)
    inverse = tuple(255 - c for c in colour)
    image.paste(inverse, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_image_prompts(folder: Path, count: int, size: tuple[int, int], name: str = "prompts.jsonl") -> Path:
    """`folder/name`: `count` records {"prompt", "image"} with images in `folder/images/`, paths relative."""
    lines = []
    for i in range(count):
        image = write_image(folder / "images" / f"{i}.png", size, COLOURS[i % len(COLOURS)])
        lines.append({"prompt": f"a ball, scene {i}", "image": image.relative_to(folder).as_posix()})
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path
