"""What a Wan diffusers-format folder must hold, checked without importing torch (the CLI checks a
recipe's model folder before anything is submitted: fgrpo.recipe.validate)."""

from __future__ import annotations

from pathlib import Path

REQUIRED_SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer")


def check_model_folder(path: str | Path) -> list[str]:
    """Problems that make `path` unusable as a Wan diffusers folder (empty list = fine)."""
    path = Path(path)
    if not path.is_dir():
        return [f"{path} is not a directory"]
    return [f"{path / sub} is missing" for sub in REQUIRED_SUBFOLDERS if not (path / sub).is_dir()]
