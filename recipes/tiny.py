"""Tiny Wan-architecture model on CPU: watch Flash-GRPO learn a prompt's colour in a few minutes."""

from fgrpo.recipe.config import *  # noqa: F403

recipe = Recipe(
    name="tiny",
    model=ModelConfig(preset="tiny", dtype="float32", max_text_tokens=16),
    rollout=RolloutConfig(steps=8, height=32, width=32, frames=5, group_size=4, prompts_per_step=8,
                          micro_batch=16, cfg_scale=2.0),
    timesteps=TimestepConfig(window=(0, 4)),
    algorithm=AlgorithmConfig(clip_range=0.2),
    optim=OptimConfig(lr=3e-3, max_steps=40),
    lora=LoraConfig(rank=8, alpha=8.0),
    ema=EmaConfig(decay=0.5, interval=1),
    rewards=(RewardSpec(name="colour"),),
    prompts=PromptsConfig(file="prompts/tiny.txt", heldout=8),
    eval=EvalConfig(interval=10, steps=8),
    checkpoint=CheckpointConfig(interval=10, keep_last=2),
)
