"""Wan2.1-T2V-1.3B with the paper's main settings (the Recipe defaults); point model.path at the weights."""

from fgrpo.recipe.config import *  # noqa: F403

recipe = Recipe(
    name="wan1_3b",
    model=ModelConfig(preset="wan2.1-t2v-1.3b", path=None),  # --model.path /data/Wan2.1-T2V-1.3B-Diffusers
    rewards=(RewardSpec(name="colour", frame_aggregation="topk:0.3"),),  # paper: HPSv3 per frame, top 30 %
    launch=LaunchConfig(nodes=1, procs_per_node=8, gpus_per_node=8),
)
