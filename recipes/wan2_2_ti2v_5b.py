"""Wan2.2-TI2V-5B as a text-to-video model, at its official sampling settings (704 x 1280, 121
frames, flow shift 5, guidance 5; fgrpo/models/wan/presets.py names the source of each) with the
paper's 1.3B settings (the Recipe defaults: 20 rollout steps, window of the first 10) and its
reward, HPSv3 per frame, mean of the top 30 % of frames. Its VAE compresses 16x (48 channels), so
height and width are multiples of 32. Set the paths, which have no defaults (launch refuses a
missing one and names it):

    fgrpo launch recipes/wan2_2_ti2v_5b.py --model.path /data/Wan2.2-TI2V-5B-Diffusers \\
        --rewards.0.args model_path /models/Qwen2-VL-7B-Instruct checkpoint /models/HPSv3.safetensors
"""

from fgrpo.recipe.config import *  # noqa: F403

recipe = Recipe(
    name="wan2_2_ti2v_5b",
    model=ModelConfig(preset="wan2.2-ti2v-5b", path=None),  # --model.path: the diffusers folder
    parallelism=ParallelismConfig(compile=True),  # regional torch.compile of the blocks (not the paper's)
    # The model's own size, length, shift and guidance (Wan2.2's wan/configs/wan_ti2v_5B.py).
    # Micro-batch 2: at the default 4 decoding and training need 97 and 106 GiB per GPU (`fgrpo plan`).
    rollout=RolloutConfig(height=704, width=1280, frames=121, flow_shift=5.0, cfg_scale=5.0, micro_batch=2),
    # The paper's reward. args.model_path (Qwen2-VL-7B-Instruct folder) and args.checkpoint
    # (HPSv3.safetensors) are yours to set: --rewards.0.args model_path DIR checkpoint FILE
    rewards=(RewardSpec(name="hpsv3", frame_aggregation="topk:0.3"),),
    launch=LaunchConfig(nodes=1, procs_per_node=8, gpus_per_node=8),
)
