"""Small recipes for in-process trainer tests."""

import dataclasses

from fgrpo.recipe.io import load_recipe_file
from tests.conftest import REPO


def small_recipe(tiny_model_dir, **optim):
    r = load_recipe_file(REPO / "recipes" / "tiny.py")
    R = dataclasses.replace
    return R(
        r,
        model=R(r.model, path=str(tiny_model_dir)),
        rollout=R(r.rollout, prompts_per_step=2, group_size=4, steps=4),
        timesteps=R(r.timesteps, window=(0, 3)),
        lora=R(r.lora, enabled=True, rank=4, alpha=4.0),  # the LoRA path, as real Wan runs use
        optim=R(r.optim, **optim),
        ema=R(r.ema, interval=2),
        eval=R(r.eval, interval=100, steps=2, videos_per_prompt=1),
        prompts=R(r.prompts, heldout=2),
        checkpoint=R(r.checkpoint, interval=2, keep_last=2),
    )
