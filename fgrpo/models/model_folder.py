"""Where a recipe's model lives: its `model.path`, or the cached build of a preset fgrpo makes itself.

Apart from loading.py because the miniature model's build (fgrpo.miniature.pretrain) loads its
own result through loading.py to measure it.
"""

from __future__ import annotations

from pathlib import Path


def model_folder(model, build: bool = True) -> Path:
    """The recipe's `model` section -> its diffusers folder (the tiny and miniature presets' cached builds).

    `build=False`: where a preset's build is or will be, without building it (`fgrpo doctor`
    inspects it; the miniature's build is minutes of pre-training)."""
    if model.path is not None:
        return Path(model.path)
    if not build:
        from fgrpo.miniature.pretrain import miniature_cache_name
        from fgrpo.models.wan.random_build import cache_dir
        from fgrpo.models.wan.tiny import tiny_cache_name

        name = miniature_cache_name if model.preset == "miniature" else tiny_cache_name
        return cache_dir() / name(model.seed)
    if model.preset == "miniature":
        from fgrpo.miniature.pretrain import miniature_model_path

        return miniature_model_path(model.seed)
    from fgrpo.models.wan.tiny import tiny_model_path

    return tiny_model_path(model.seed)
