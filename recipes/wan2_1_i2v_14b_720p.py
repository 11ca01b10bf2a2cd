"""Wan2.1-I2V-14B-720P: the 14B recipe's Flash-GRPO settings (12 rollout steps, window of the
high-noise half) at the checkpoint's official sampling settings (720 x 1280, 81 frames, flow shift
5.0, guidance 5; sources in fgrpo/models/wan/presets.py) and the paper's reward, HPSv3 per frame,
mean of the top 30 %. One recipe per checkpoint: the 480P and 720P models are separate weights
sampled at different sizes and shifts, which must change together.

The model conditions every video on an image (its VAE latent as the first frame and its CLIP
features), so `prompts.file` must be a JSONL file whose records have `prompt` and `image` (a path
relative to the file's folder, each image exactly 1280 x 720: docs/design.md, "Image-to-video");
the default text-only file is refused. With FSDP2 alone 720p does not fit 80 GB GPUs (`fgrpo plan
--gpus 8 --parallelism.sp 1`: training needs 132 GiB per GPU, most of it activations), so the recipe
splits every video's tokens over 4 ranks (Ulysses sequence parallelism, as the A14B recipes at the
same size; the image cross-attention runs on each rank's tokens). Tensor parallelism
(`--parallelism.tp`) shards the blocks and their activations instead, image cross-attention included.
The paths have no defaults:

    fgrpo plan recipes/wan2_1_i2v_14b_720p.py --gpus 8
    fgrpo launch recipes/wan2_1_i2v_14b_720p.py --model.path /data/Wan2.1-I2V-14B-720P-Diffusers \\
        --prompts.file /data/i2v-prompts/prompts.jsonl \\
        --rewards.0.args model_path /models/Qwen2-VL-7B-Instruct checkpoint /models/HPSv3.safetensors
"""

from fgrpo.recipe.config import *  # noqa: F403

recipe = Recipe(
    name="wan2_1_i2v_14b_720p",
    model=ModelConfig(preset="wan2.1-i2v-14b-720p", path=None),  # --model.path: the diffusers folder
    # Ulysses sp 4: 720p's activations (`fgrpo plan --gpus 8`); compile: regional torch.compile of the blocks.
    parallelism=ParallelismConfig(sp=4, compile=True),
    rollout=RolloutConfig(steps=12, height=720, width=1280, frames=81, flow_shift=5.0, cfg_scale=5.0, micro_batch=1),
    timesteps=TimestepConfig(window=(0, 6)),  # the high-noise half, as for Wan2.1-T2V-14B
    # The paper's reward. args.model_path (Qwen2-VL-7B-Instruct folder) and args.checkpoint
    # (HPSv3.safetensors) are yours to set: --rewards.0.args model_path DIR checkpoint FILE
    rewards=(RewardSpec(name="hpsv3", frame_aggregation="topk:0.3"),),
    launch=LaunchConfig(nodes=4, procs_per_node=8, gpus_per_node=8),
)
