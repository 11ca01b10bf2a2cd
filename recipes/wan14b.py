"""Wan2.1-T2V-14B: the paper's settings with 12 rollout steps and its reward, HPSv3 per frame, mean
of the top 30 % of frames. Set the paths, which have no defaults (launch refuses a missing one and
names it):

    fgrpo launch recipes/wan14b.py --model.path /data/Wan2.1-T2V-14B-Diffusers \\
        --rewards.0.args model_path /models/Qwen2-VL-7B-Instruct checkpoint /models/HPSv3.safetensors
"""

from fgrpo.recipe.config import *  # noqa: F403

recipe = Recipe(
    name="wan14b",
    model=ModelConfig(preset="wan2.1-t2v-14b", path=None),  # --model.path: the diffusers folder
    parallelism=ParallelismConfig(compile=True),  # regional torch.compile of the blocks (not the paper's)
    # share_prefix and a 4-node deterministic sub-grid of the 12 steps (issue 22; as wan1_3b.py says):
    # 249.8 GPU-minutes per step on 32 x 80 GB against the exact rollout's 458.5 (`fgrpo plan
    # recipes/wan14b.py --rollout-options`).
    rollout=RolloutConfig(steps=12, micro_batch=1, share_prefix=True, ode_steps=4),
    timesteps=TimestepConfig(window=(0, 6)),  # the high-noise half, as for 1.3B
    # The paper's reward. args.model_path (Qwen2-VL-7B-Instruct folder) and args.checkpoint
    # (HPSv3.safetensors) are yours to set: --rewards.0.args model_path DIR checkpoint FILE
    rewards=(RewardSpec(name="hpsv3", frame_aggregation="topk:0.3"),),
    launch=LaunchConfig(nodes=4, procs_per_node=8, gpus_per_node=8),
)
