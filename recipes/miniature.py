"""The miniature world on a CPU: Flash-GRPO aligns a pre-trained tiny text-to-video model.

The model (`preset miniature`, fgrpo/miniature/pretrain.py) draws coloured shapes moving over a
plain background; the prompts ask for attribute combinations it never saw in pre-training. It is
trained on the soft faithfulness reward; the strict gold metric scores every evaluation's held-out
videos (`eval.gold_rewards`, never trained on) and is what "aligned" is judged by:
`eval/miniature_gold`, and per attribute `eval/miniature_gold.colour`, `eval/miniature_gold.size`...
"""

from fgrpo.miniature.world import ATTRIBUTES
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
    rewards=(RewardSpec(name="miniature_faithfulness"),),
    prompts=PromptsConfig(file="prompts/miniature.txt", heldout=24),
    # Held-out gold, and each attribute's share of it: which attributes a run learns, which it loses.
    eval=EvalConfig(
        interval=10,
        steps=10,
        videos_per_prompt=2,
        gold_rewards=(
            RewardSpec(name="miniature_gold"),
            *(
                RewardSpec(name="miniature_gold", weight=0.0, args={"attribute": a}, label=f"miniature_gold.{a}")
                for a in ATTRIBUTES
            ),
        ),
    ),
    checkpoint=CheckpointConfig(interval=10, keep_last=2),
)
