"""Wan2.1-T2V-14B: the paper's settings with 12 rollout steps; point model.path at the weights."""

from fgrpo.recipe.config import *  # noqa: F403

recipe = Recipe(
    name="wan14b",
    model=ModelConfig(preset="wan2.1-t2v-14b", path=None),  # --model.path /data/Wan2.1-T2V-14B-Diffusers
    rollout=RolloutConfig(steps=12, micro_batch=1),
    timesteps=TimestepConfig(window=(0, 6)),  # the high-noise half, as for 1.3B
    rewards=(RewardSpec(name="colour", frame_aggregation="topk:0.3"),),
    launch=LaunchConfig(nodes=4, procs_per_node=8, gpus_per_node=8),
)
