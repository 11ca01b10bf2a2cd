"""Tiny Wan-architecture model on CPU: Flash-GRPO learns each prompt's brightness in a few minutes."""

from fgrpo.recipe.config import *  # noqa: F403

recipe = Recipe(
    name="tiny",
    model=ModelConfig(preset="tiny", dtype="float32", max_text_tokens=16),
    parallelism=ParallelismConfig(activation_checkpointing=False),
    # A uniform grid (shift 1) and a larger constant SDE noise give the single SDE step enough
    # influence on a 5-frame 32x32 video for the group baseline to see it.
    rollout=RolloutConfig(
        steps=8,
        flow_shift=1.0,
        height=32,
        width=32,
        frames=5,
        group_size=8,
        prompts_per_step=4,
        micro_batch=32,
        cfg_scale=2.0,
        noise_schedule="dance-grpo",
        noise_constant=1.0,
    ),
    timesteps=TimestepConfig(window=(1, 6)),
    algorithm=AlgorithmConfig(clip_range=0.2),
    optim=OptimConfig(lr=4e-3, max_steps=50),
    lora=LoraConfig(enabled=False),  # full fine-tune: the tiny model is 0.15M parameters
    ema=EmaConfig(decay=0.5, interval=1),
    rewards=(RewardSpec(name="brightness"),),
    prompts=PromptsConfig(file="prompts/tiny.txt", heldout=8),
    eval=EvalConfig(interval=10, steps=8, videos_per_prompt=4),
    checkpoint=CheckpointConfig(interval=10, keep_last=2),
)
