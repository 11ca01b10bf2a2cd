"""Wan2.2-I2V-A14B: the 14B recipe's Flash-GRPO settings (12 rollout steps, high-noise steps only)
at the model's official sampling settings (720 x 1280, 81 frames, flow shift 5, guidance 3.5 for both experts;
sources in fgrpo/models/wan/presets.py) and the paper's reward, HPSv3 per frame, top 30 %.

It is two experts switched at boundary_ratio 0.9 (fgrpo/models/wan/experts.py). Like Wan2.1 I2V it
needs a JSONL prompt file with an `image` per prompt (prompts.file; the default text-only file is
refused). `fgrpo plan` plans it as it would run. At shift 5 only the first 5 of the 12 steps are the
high-noise expert's (sigma >= 0.9), hence the window (0, 5) and lora.experts=high (the low-noise expert
frozen, sampling the other 7 steps). The paths have no defaults:

    fgrpo plan recipes/wan2_2_i2v_a14b.py --gpus 8
    fgrpo launch recipes/wan2_2_i2v_a14b.py --model.path /data/Wan2.2-I2V-A14B-Diffusers \\
        --rewards.0.args model_path /models/Qwen2-VL-7B-Instruct checkpoint /models/HPSv3.safetensors
"""

from fgrpo.recipe.config import *  # noqa: F403

recipe = Recipe(
    name="wan2_2_i2v_a14b",
    model=ModelConfig(preset="wan2.2-i2v-a14b", path=None),  # --model.path: the diffusers folder
    # Ulysses sp 4, as for T2V-A14B (the same blocks and tokens): at 720p training needs 59 GiB per GPU
    # with it (`fgrpo plan --gpus 8`); compile: regional torch.compile of the blocks (not the paper's).
    parallelism=ParallelismConfig(sp=4, compile=True),
    # Guidance per expert: Wan2.2's wan/configs/wan_i2v_A14B.py sample_guide_scale (3.5, 3.5) = (low noise,
    # high noise) (the preset's Sampling.guidance, fgrpo/models/wan/presets.py): the same for both experts,
    # stated for each as diffusers' guidance_scale (cfg_scale) and guidance_scale_2 (cfg_scale_2).
    rollout=RolloutConfig(
        steps=12, height=720, width=1280, frames=81, flow_shift=5.0, cfg_scale=3.5, cfg_scale_2=3.5, micro_batch=1
    ),
    timesteps=TimestepConfig(window=(0, 5)),  # the high-noise expert's steps
    lora=LoraConfig(experts="high"),  # the expert the window reaches; transformer_2 frozen
    # The paper's reward. args.model_path (Qwen2-VL-7B-Instruct folder) and args.checkpoint
    # (HPSv3.safetensors) are yours to set: --rewards.0.args model_path DIR checkpoint FILE
    rewards=(RewardSpec(name="hpsv3", frame_aggregation="topk:0.3"),),
    launch=LaunchConfig(nodes=4, procs_per_node=8, gpus_per_node=8),
)
