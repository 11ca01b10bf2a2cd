"""The miniature world on a CPU: Flash-GRPO aligns a pre-trained tiny text-to-video model.

The model (`preset miniature`, fgrpo/miniature/pretrain.py) draws coloured shapes moving over a
plain background; the prompts ask for attribute combinations it never saw in pre-training. It is
trained on the soft faithfulness reward; the strict gold metric is recorded beside it with weight 0
(never trained on) and is what "aligned" is judged by: held-out `eval/miniature_gold`.
"""

from fgrpo.recipe.config import *  # noqa: F403

recipe = Recipe(
    name="miniature",
    model=ModelConfig(preset="miniature", dtype="float32", max_text_tokens=16),
    parallelism=ParallelismConfig(activation_checkpointing=False),
    # Wan's sampler in miniature: 10 steps (Wan: 20) on the shift-3 grid, the SDE window the first half
    # of the steps, as in the paper. Without classifier-free guidance (one forward per step): guided
    # sampling (CFG 4) is what the model follows its prompts best with, and under it no run raised
    # held-out gold; unguided, the policy gradient learns what guidance adds (colour, motion) and every
    # run raised it (docs/miniature.md, runs n-s). Flow-GRPO's noise schedule: with Wan's, the SDE
    # step moves a group's rewards by a third of what the initial noise does (reward std 0.013 vs
    # 0.044, docs/miniature.md); with flow-grpo's a = 0.7, at step 0 by as much (0.041).
    rollout=RolloutConfig(
        steps=10,
        flow_shift=3.0,
        height=64,
        width=64,
        frames=9,
        group_size=8,
        prompts_per_step=4,
        micro_batch=32,
        cfg_scale=1.0,
        noise_schedule="flow-grpo",
        noise_constant=0.7,
    ),
    timesteps=TimestepConfig(window=(0, 5)),
    algorithm=AlgorithmConfig(clip_range=0.01),
    # 40 steps: where the runs at this learning rate stood highest (docs/miniature.md, runs n-s).
    optim=OptimConfig(lr=1e-4, max_steps=40, weight_decay=0.0),
    lora=LoraConfig(enabled=False),  # full fine-tune: the transformer is 1.1M parameters
    ema=EmaConfig(decay=0.9, interval=1),  # evaluated weights average ~10 updates' noise
    rewards=(RewardSpec(name="miniature_faithfulness"), RewardSpec(name="miniature_gold", weight=0.0)),
    prompts=PromptsConfig(file="prompts/miniature.txt", heldout=24),
    eval=EvalConfig(interval=10, steps=10, videos_per_prompt=2),
    checkpoint=CheckpointConfig(interval=10, keep_last=2),
)
