"""Where a recipe's model lives: its `model.path`, or the cached build of a preset fgrpo makes itself.

Apart from loading.py because the miniature model's build (fgrpo.miniature.pretrain) loads its
own result through loading.py to measure it.
"""

from __future__ import annotations

from pathlib import Path

# presets whose folder fgrpo builds itself when model.path is None
BUILT_PRESETS = ("tiny", "tiny-ti2v", "tiny-i2v", "tiny-a14b", "tiny-i2v-a14b", "miniature")


def model_folder(model, build: bool = True) -> Path:
    """The recipe's `model` section -> its diffusers folder (the BUILT_PRESETS' cached builds).

    `build=False`: where a preset's build is or will be, without building it (`fgrpo doctor`
    inspects it; the miniature's build is minutes of pre-training)."""
    if model.path is not None:
        return Path(model.path)
    if not build:
        from fgrpo.miniature.pretrain import miniature_cache_name
        from fgrpo.models.wan.random_build import cache_dir
        from fgrpo.models.wan.tiny import tiny_cache_name
        from fgrpo.models.wan.tiny_a14b import tiny_a14b_cache_name
        from fgrpo.models.wan.tiny_i2v import tiny_i2v_cache_name
        from fgrpo.models.wan.tiny_i2v_a14b import tiny_i2v_a14b_cache_name
        from fgrpo.models.wan.tiny_ti2v import tiny_ti2v_cache_name

        names = {
            "miniature": miniature_cache_name,
            "tiny-ti2v": tiny_ti2v_cache_name,
            "tiny-i2v": tiny_i2v_cache_name,
            "tiny-a14b": tiny_a14b_cache_name,
            "tiny-i2v-a14b": tiny_i2v_a14b_cache_name,
        }
        return cache_dir() / names.get(model.preset, tiny_cache_name)(model.seed)
    if model.preset == "miniature":
        from fgrpo.miniature.pretrain import miniature_model_path

        return miniature_model_path(model.seed)
    if model.preset == "tiny-ti2v":
        from fgrpo.models.wan.tiny_ti2v import tiny_ti2v_model_path

        return tiny_ti2v_model_path(model.seed)
    if model.preset == "tiny-i2v":
        from fgrpo.models.wan.tiny_i2v import tiny_i2v_model_path

        return tiny_i2v_model_path(model.seed)
    if model.preset == "tiny-a14b":
        from fgrpo.models.wan.tiny_a14b import tiny_a14b_model_path

        return tiny_a14b_model_path(model.seed)
    if model.preset == "tiny-i2v-a14b":
        from fgrpo.models.wan.tiny_i2v_a14b import tiny_i2v_a14b_model_path

        return tiny_i2v_a14b_model_path(model.seed)
    from fgrpo.models.wan.tiny import tiny_model_path

    return tiny_model_path(model.seed)
