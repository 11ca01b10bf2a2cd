"""Where a recipe's model lives: its `model.path`, or the cached build of a preset fgrpo makes itself.

Apart from loading.py because the miniature model's build (fgrpo.miniature.pretrain) loads its
own result through loading.py to measure it.
"""

from __future__ import annotations

from pathlib import Path


def model_folder(model) -> Path:
    """The recipe's `model` section -> its diffusers folder (the tiny and miniature presets' cached builds)."""
    if model.path is not None:
        return Path(model.path)
    if model.preset == "miniature":
        from fgrpo.miniature.pretrain import miniature_model_path

        return miniature_model_path(model.seed)
    from fgrpo.models.wan.tiny import tiny_model_path

    return tiny_model_path(model.seed)
