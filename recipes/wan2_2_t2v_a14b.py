"""Wan2.2-T2V-A14B: the 14B recipe's Flash-GRPO settings (12 rollout steps, the high-noise half)
at the model's official sampling settings (720 x 1280, 81 frames, flow shift 12; sources in
fgrpo/models/wan/presets.py) and the paper's reward, HPSv3 per frame, mean of the top 30 %.

The model is two experts (transformer for high noise, transformer_2 for low noise, switched at
boundary_ratio 0.875; fgrpo/models/wan/experts.py). At shift 12 the first 8 of the 12 steps are the
high-noise expert's (sigma >= 0.875), so the window trains that expert only (lora.experts=high: the
low-noise one frozen, sampling the last 4 steps), each expert at its official guidance: 4.0 on the
high-noise steps (rollout.cfg_scale), 3.0 on the low-noise ones (rollout.cfg_scale_2). `fgrpo plan`
plans it (one expert trained, the other's frozen weights resident). The paths have no defaults:

    fgrpo plan recipes/wan2_2_t2v_a14b.py --gpus 8
    fgrpo launch recipes/wan2_2_t2v_a14b.py --model.path /data/Wan2.2-T2V-A14B-Diffusers \\
        --rewards.0.args model_path /models/Qwen2-VL-7B-Instruct checkpoint /models/HPSv3.safetensors
"""

from fgrpo.recipe.config import *  # noqa: F403

recipe = Recipe(
    name="wan2_2_t2v_a14b",
    model=ModelConfig(preset="wan2.2-t2v-a14b", path=None),  # --model.path: the diffusers folder
    # Ulysses sp 4: at 720p (75,600 tokens a video) training needs 133 GiB per GPU with sp 1, 81 with sp 2,
    # 59 with sp 4 (`fgrpo plan --gpus 8`); compile: regional torch.compile of the blocks (not the paper's).
    parallelism=ParallelismConfig(sp=4, compile=True),
    # Guidance per expert: Wan2.2's wan/configs/wan_t2v_A14B.py sample_guide_scale (3.0, 4.0) = (low noise,
    # high noise) (the preset's Sampling.guidance, fgrpo/models/wan/presets.py): cfg_scale the high-noise
    # expert's, cfg_scale_2 the low-noise one's, as diffusers' guidance_scale and guidance_scale_2.
    rollout=RolloutConfig(
        steps=12, height=720, width=1280, frames=81, flow_shift=12.0, cfg_scale=4.0, cfg_scale_2=3.0, micro_batch=1
    ),
    timesteps=TimestepConfig(window=(0, 6)),  # within the high-noise expert's first 8 steps
    lora=LoraConfig(experts="high"),  # the expert the window reaches; transformer_2 frozen
    # The paper's reward. args.model_path (Qwen2-VL-7B-Instruct folder) and args.checkpoint
    # (HPSv3.safetensors) are yours to set: --rewards.0.args model_path DIR checkpoint FILE
    rewards=(RewardSpec(name="hpsv3", frame_aggregation="topk:0.3"),),
    launch=LaunchConfig(nodes=4, procs_per_node=8, gpus_per_node=8),
)
