"""Regional compilation (`parallelism.compile`) on the layouts users launch, in bf16 on CPU.

Each case trains the tiny recipe three steps with every block compiled (inductor) and checks:
  * the compiled blocks ran: the run recorded compiled graphs;
  * no recompiles after the first step: the timestep, the SDE mask and the step index change
    every step, yet the graph count recorded after step 1 never grows;
  * on-policy exactness survives compilation: step 1's max |ratio - 1| is 0 at the paper's clip
    range (the recomputed log pi_old and the loss's log pi come from the same compiled graph);
  * the first rollout matches eager: step 1's rewards (before any update) agree with an eager run
    of the same layout to bf16 precision (inductor fuses, so roundings differ, never the math).

The same checks on the image-to-video and two-expert models (MODEL_CASES), one process, two steps
each: Wan2.1 I2V (36 input channels, CLIP image cross-attention), Wan2.2 TI2V's text+image mode
(per-token timesteps, the image's first frame at t = 0) and Wan2.2 A14B (each expert's blocks
compiled; the low-noise expert first trains at step 2, and adds no graph). Measured on 2 cores shared
with other jobs: 163 s (I2V, 512 text tokens), 108 s (TI2V), 92 s (A14B), mostly inductor compiling.
"""

from __future__ import annotations

import pytest

from tests.helpers.image_prompts import write_image_prompts
from tests.helpers.runs import launch_tiny, train_metrics

# (processes, arguments): FSDP2 full fine-tune with activation checkpointing; tensor parallel with
# LoRA; sequence parallel (Ulysses all-to-all inside the compiled block). A one-process LoRA +
# activation checkpointing case was dropped to keep the suite within 45 minutes: activation
# checkpointing stays covered by fsdp2-full-ac, LoRA by tp2-lora, one process by MODEL_CASES.
CASES = {
    "fsdp2-full-ac": (
        2,
        ["--parallelism.dp-shard", "2", "--lora.no-enabled", "--parallelism.activation-checkpointing"],
    ),
    "tp2-lora": (
        2,
        [
            "--parallelism.dp-shard",
            "1",
            "--parallelism.tp",
            "2",
            "--lora.enabled",
            "--lora.rank",
            "4",
            "--lora.alpha",
            "8",
        ],
    ),
    "sp2-full": (2, ["--parallelism.dp-shard", "1", "--parallelism.sp", "2", "--lora.no-enabled"]),
}
RUN = [
    "--model.dtype",
    "bfloat16",
    "--eval.interval",
    "1000",
    "--checkpoint.interval",
    "1000",
    "--algorithm.clip-range",
    "1e-3",
]
COMMON = [*RUN, "--rollout.micro-batch", "16"]


# (model folder fixture, image size of a prompt file with images or None, arguments). Smallest runs
# the models allow: the tiny recipe's 5 frames, its smallest sizes (TI2V's 16x VAE: 64).
MODEL_CASES = {
    "i2v-clip": (
        "tiny_i2v_model_dir",
        32,
        ["--model.preset", "tiny-i2v", "--model.max-text-tokens", "512", "--rollout.micro-batch", "16"],
    ),
    "ti2v-first-frame": (
        "tiny_ti2v_model_dir",
        64,
        [
            "--model.preset",
            "tiny-ti2v",
            "--rollout.height",
            "64",
            "--rollout.width",
            "64",
            "--rollout.micro-batch",
            "16",
        ],
    ),
    # micro-batch = group size: one timestep, so one expert, per micro-batch, as the A14B recipes'
    # micro_batch 1 (a micro-batch mixing both experts splits into batches of varying size).
    "a14b-experts": ("tiny_a14b_model_dir", None, ["--model.preset", "tiny-a14b", "--rollout.micro-batch", "4"]),
}
HIGH_NOISE_STEPS = 3  # tiny-a14b on the tiny recipe's grid: steps 0-2 are the high-noise expert's


def compiled_and_eager(model_dir, tmp_path, procs: int, steps: int, args) -> list[dict]:
    """`steps` compiled steps and one eager step of the same run, checked as the module docstring
    says; the compiled run's metrics."""
    compiled = train_metrics(
        launch_tiny(model_dir, tmp_path / "compiled", procs, steps, *args, "--parallelism.compile")
    )
    # inductor's cache lives in the runs folder (a resumed job on another node finds it)
    assert any(p.is_file() for p in (tmp_path / "compiled" / ".cache" / "inductor").rglob("*"))
    assert [m["step"] for m in compiled] == list(range(1, steps + 1))
    graphs = [m["compile/graphs"] for m in compiled]
    assert graphs[0] > 0, "nothing was compiled"
    assert graphs == [graphs[0]] * steps, f"recompiled after the first step: graphs per step {graphs}"
    assert all(abs(m["loss"]) < 1e3 and m["grad_norm"] == m["grad_norm"] for m in compiled)
    assert compiled[0]["ratio_dev_max"] == 0.0 and compiled[0]["clip_frac"] == 0.0
    eager = train_metrics(launch_tiny(model_dir, tmp_path / "eager", procs, 1, *args))
    assert "compile/graphs" not in eager[0]
    assert compiled[0]["reward_mean"] == pytest.approx(eager[0]["reward_mean"], rel=2e-2, abs=2e-3)
    return compiled


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_blocks_train_without_recompiles(case, tiny_model_dir, tmp_path):
    procs, args = CASES[case]
    compiled_and_eager(tiny_model_dir, tmp_path, procs, 3, [*COMMON, *args])


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_image_and_two_expert_models_compile_without_recompiles(case, request, tmp_path):
    fixture, image_size, args = MODEL_CASES[case]
    model_dir = request.getfixturevalue(fixture)
    if image_size is not None:
        prompts = write_image_prompts(tmp_path / "prompts", 6, (image_size, image_size))
        args = [*args, "--prompts.file", str(prompts)]
    compiled = compiled_and_eager(model_dir, tmp_path, 1, 2, [*RUN, *args])
    if case == "a14b-experts":
        first, second = (m["timestep_indices"] for m in compiled)
        # the low-noise expert's first training pass (forward and backward) is step 2's
        assert max(first) < HIGH_NOISE_STEPS <= max(second), (first, second)
