"""Regional compilation (`parallelism.compile`) on the layouts users launch, in bf16 on CPU.

Each case trains the tiny recipe three steps with every block compiled (inductor) and checks:
  * the compiled blocks ran: the run recorded compiled graphs;
  * no recompiles after the first step: the timestep, the SDE mask and the step index change
    every step, yet the graph count recorded after step 1 never grows;
  * on-policy exactness survives compilation: step 1's max |ratio - 1| is 0 at the paper's clip
    range (the recomputed log pi_old and the loss's log pi come from the same compiled graph);
  * the first rollout matches eager: step 1's rewards (before any update) agree with an eager run
    of the same layout to bf16 precision (inductor fuses, so roundings differ, never the math).
"""

from __future__ import annotations

import pytest

from tests.helpers.runs import launch_tiny, train_metrics

# (processes, arguments): LoRA + activation checkpointing on one rank; FSDP2 full fine-tune;
# tensor parallel; sequence parallel (Ulysses all-to-all inside the compiled block).
CASES = {
    "one-lora-ac": (
        1,
        ["--lora.enabled", "--lora.rank", "4", "--lora.alpha", "8", "--parallelism.activation-checkpointing"],
    ),
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
COMMON = [
    "--model.dtype",
    "bfloat16",
    "--rollout.micro-batch",
    "16",
    "--eval.interval",
    "1000",
    "--checkpoint.interval",
    "1000",
    "--algorithm.clip-range",
    "1e-3",
]


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_blocks_train_without_recompiles(case, tiny_model_dir, tmp_path):
    procs, args = CASES[case]
    compiled = train_metrics(
        launch_tiny(tiny_model_dir, tmp_path / "compiled", procs, 3, *COMMON, *args, "--parallelism.compile")
    )
    # inductor's cache lives in the runs folder (a resumed job on another node finds it)
    assert any(p.is_file() for p in (tmp_path / "compiled" / ".cache" / "inductor").rglob("*"))
    assert [m["step"] for m in compiled] == [1, 2, 3]
    graphs = [m["compile/graphs"] for m in compiled]
    assert graphs[0] > 0, "nothing was compiled"
    assert graphs == [graphs[0]] * 3, f"recompiled after the first step: graphs per step {graphs}"
    assert all(abs(m["loss"]) < 1e3 and m["grad_norm"] == m["grad_norm"] for m in compiled)
    assert compiled[0]["ratio_dev_max"] == 0.0 and compiled[0]["clip_frac"] == 0.0
    eager = train_metrics(launch_tiny(tiny_model_dir, tmp_path / "eager", procs, 1, *COMMON, *args))
    assert "compile/graphs" not in eager[0]
    assert compiled[0]["reward_mean"] == pytest.approx(eager[0]["reward_mean"], rel=2e-2, abs=2e-3)
