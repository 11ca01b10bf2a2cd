"""Prompt files of image-to-video models: JSONL records with a `prompt` and an `image`.

`image` is a path relative to the prompt file's folder (or absolute). Before launch every record is
checked (`image_prompt_problems`): the field is there, the file exists and reads as an image, and it
is exactly rollout.width x rollout.height pixels, so the pipeline's resize to that size changes
nothing (why not resize: docs/design.md, "Image-to-video"). Conditions are cached by prompt text
(fgrpo.models.wan.image_cache), so one text cannot stand for two images.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

IMAGE_FIELD = "image"
MAX_LISTED = 10  # problems listed one by one; the rest are counted
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def image_path(prompt_file: str | Path, value: str) -> Path:
    """A record's `image` value as a path: relative ones are in the prompt file's folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(prompt_file).parent / path


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the image as `load_image` gives it (EXIF orientation applied), from its
    header and a check of its data (PIL's verify); raises OSError for a file PIL cannot read."""
    from PIL import Image

    with Image.open(path) as im:
        try:
            im.verify()  # chunk checksums and structure, without decoding every pixel
        except (SyntaxError, ValueError) as e:  # PIL reports broken PNG chunks as SyntaxError
            raise OSError(str(e)) from e
    with Image.open(path) as im:  # verify() leaves the image unusable: read the header again
        width, height = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (height, width) if orientation in _ROTATED else (width, height)


def load_image(path: str | Path) -> Image.Image:
    """The image in RGB, upright: what diffusers.utils.load_image gives WanImageToVideoPipeline."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        upright = ImageOps.exif_transpose(im)
        return upright.convert("RGB")


def prompt_images(prompt_file: str | Path, lines: list[tuple[int, dict]]) -> dict[str, Path]:
    """Prompt text -> its image's path, for the records that have an `image` (none in a text file)."""
    return {r["prompt"]: image_path(prompt_file, str(r[IMAGE_FIELD])) for _, r in lines if IMAGE_FIELD in r}


def _record_problem(prompt_file: Path, record: dict, width: int, height: int) -> str | None:
    value = record.get(IMAGE_FIELD)
    if value is None:
        return f"no `{IMAGE_FIELD}` field (a path to the conditioning image, relative to the file's folder)"
    if not isinstance(value, str) or not value:
        return f"`{IMAGE_FIELD}` must be a path (a non-empty string), got {value!r}"
    path = image_path(prompt_file, value)
    if not path.is_file():
        return f"image {path} does not exist" if not path.exists() else f"image {path} is not a file"
    try:
        size = image_size(path)
    except OSError as e:
        return f"image {path} cannot be read as an image ({e})"
    if size != (width, height):
        return (
            f"image {path} is {size[0]}x{size[1]} pixels, but videos are rollout.width x rollout.height = "
            f"{width}x{height}: resize or crop it to that size (fgrpo does not stretch images)"
        )
    return None


def image_prompt_problems(prompt_file: str | Path, lines: list[tuple[int, dict]], width: int, height: int) -> list[str]:
    """Each record whose image cannot condition a `width` x `height` video, as "FILE:LINE: why";
    also a prompt text given twice with different images. The first MAX_LISTED, then a count."""
    prompt_file = Path(prompt_file)
    problems: list[str] = []
    first_seen: dict[str, tuple[int, Path | None]] = {}
    for lineno, record in lines:
        why = _record_problem(prompt_file, record, width, height)
        image = image_path(prompt_file, record[IMAGE_FIELD]) if why is None else None
        seen = first_seen.setdefault(record["prompt"], (lineno, image))
        if why is None and seen[1] is not None and seen[1] != image:
            why = (
                f"the prompt of line {seen[0]} again, with another image: conditions are looked up by prompt "
                "text, so each text needs one image (reword one of them)"
            )
        if why is not None:
            problems.append(f"{prompt_file}:{lineno}: {why}")
    if len(problems) > MAX_LISTED:
        return [*problems[:MAX_LISTED], f"{prompt_file}: and {len(problems) - MAX_LISTED} more records like these"]
    return problems
