"""{fp32, bf16} x {5 layouts} x {LoRA, full fine-tune}: the configurations users launch, on CPU
(7 of the 20 cells, to keep the suite within 45 minutes: see CELLS).

Each cell trains the tiny recipe for one optimizer step, stops, resumes from its checkpoint and
trains a second step (so save and resume are exercised on every layout), then checks:
  * finite losses, and trained weights that changed;
  * trained weights and AdamW state stored in fp32 (the precision policy's masters);
  * on the first, on-policy step: max |ratio - 1| = 0 and clip fraction 0 at the paper's clip range
    1e-3 (log pi_old is recomputed by the training pass's own batches);
  * agreement with one process trained straight through two steps.

Tolerances (relative error of the trained update w2 - w0 against one process, in L2 norm):
  * fp32: 1e-4 (measured: at most 1.3e-5). Only the order of floating-point sums differs (sharded
    matmuls, reduce-scatter), ~1e-7 relative per operation; Adam's normalisation m/√v amplifies it
    on near-zero gradients.
  * bf16: 0.15 (measured on this CPU: data-parallel layouts 1.8-3.3 %, TP layouts 6.4-8.4 %).
    In bf16 a forward's result depends on how it is batched and sharded at bf16 rounding (2^-8
    relative): a rank of a data-parallel layout runs other batch shapes than one process (other
    GEMM kernels), and TP rounds each rank's partial sums to bf16 before the all-reduce where one
    process rounds once after an fp32 accumulation. The rollouts then differ slightly, so do the
    rewards, the advantages (normalised by the std of only 8 rewards) and, through two Adam steps
    (update ~ lr·m/√v, which magnifies small gradients), the update. A layout bug (a wrong TP norm,
    a missing gradient reduction, a wrong shard) moves the update by O(1), far above 0.15.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.runs import checkpoint_state, initial_weights, launch_tiny, train_metrics

LAYOUTS = {
    "1": (1, []),
    "dp_shard=2": (2, ["--parallelism.dp-shard", "2"]),
    "dp_replicate=2,dp_shard=2": (4, ["--parallelism.dp-replicate", "2", "--parallelism.dp-shard", "2"]),
    "dp_shard=2,tp=2": (4, ["--parallelism.dp-shard", "2", "--parallelism.tp", "2"]),
    "tp=4": (4, ["--parallelism.dp-shard", "1", "--parallelism.tp", "4"]),
}
TUNING = {"lora": ["--lora.enabled", "--lora.rank", "4", "--lora.alpha", "8"], "full": ["--lora.no-enabled"]}
TOLERANCE = {"float32": 1e-4, "bfloat16": 0.15}


def cell_args(dtype: str, tuning: str) -> list[str]:
    # the paper's clip range: any on-policy drift would show as clipping
    return ["--model.dtype", dtype, "--algorithm.clip-range", "1e-3", "--rollout.micro-batch", "3", *TUNING[tuning]]


@pytest.fixture(scope="module")
def references(tiny_model_dir, tmp_path_factory):
    """One process, two steps straight through, per (dtype, tuning): computed on first use."""
    cache = {}

    def get(dtype, tuning):
        if (dtype, tuning) not in cache:
            runs = tmp_path_factory.mktemp(f"ref-{dtype}-{tuning}") / "runs"
            run = launch_tiny(tiny_model_dir, runs, 1, 2, *cell_args(dtype, tuning))
            metrics = train_metrics(run) + train_metrics(run, "eval")
            cache[dtype, tuning] = (metrics, checkpoint_state(run, 2, "model."))
        return cache[dtype, tuning]

    return get


# 7 of the 20 cells, to keep the suite within 45 minutes: every layout still runs in bf16 (the users'
# dtype) with save and resume; both tunings on the FSDP2+TP layout; the strict fp32 comparison of a
# whole run on the layout that shards most ways (FSDP2 and TP at once). A layout bug moves the update
# by O(1), far above the bf16 tolerance, so the bf16 cells catch it on every layout; a tuning's layout
# code is the same in both dtypes, and LoRA's tensor-parallel forward and gradients are compared in
# fp32 directly (tests/distributed/test_tensor_parallel.py::test_lora_forward_and_grads_match_unsharded).
CELLS = [
    ("1", "bfloat16", "lora"),
    ("dp_shard=2", "bfloat16", "full"),
    ("dp_replicate=2,dp_shard=2", "bfloat16", "lora"),
    ("dp_shard=2,tp=2", "bfloat16", "lora"),
    ("dp_shard=2,tp=2", "bfloat16", "full"),
    ("tp=4", "bfloat16", "full"),
    ("dp_shard=2,tp=2", "float32", "full"),
]


@pytest.mark.parametrize(("layout", "dtype", "tuning"), CELLS, ids=["-".join(c) for c in CELLS])
def test_cell(tiny_model_dir, tmp_path, references, layout, dtype, tuning):
    procs, extra = LAYOUTS[layout]
    args = [*cell_args(dtype, tuning), *extra]
    runs = tmp_path / "runs"
    run = launch_tiny(tiny_model_dir, runs, procs, 1, *args)  # step 1, checkpoint, exit
    assert (run / "checkpoints" / "step-1" / ".metadata").is_file()
    launch_tiny(tiny_model_dir, runs, procs, 2, *args)  # resumes from step 1, trains step 2
    metrics = train_metrics(run)
    assert [m["step"] for m in metrics] == [1, 2], "the second launch did not resume from step 1"

    for m in metrics:
        assert all(torch.isfinite(torch.tensor([m["loss"], m["grad_norm"], m["reward_mean"]])))
    first = metrics[0]
    print(
        f"\n{layout} {dtype} {tuning}: max|ratio-1| on-policy = {first['ratio_dev_max']:.3g}, "
        f"rollout-vs-training log-prob drift = {first['old_log_prob_drift']:.3g}"
    )
    assert first["ratio_dev_max"] == 0.0 and first["clip_frac"] == 0.0

    weights = checkpoint_state(run, 2, "model.")
    optim = checkpoint_state(run, 2, "optim.state.")
    assert weights and all(w.dtype == torch.float32 for w in weights.values()), "trained weights are not fp32"
    assert optim and all(v.dtype == torch.float32 for k, v in optim.items() if k.endswith(("exp_avg", "exp_avg_sq")))
    names = [k.removeprefix("model.") for k in weights]
    if tuning == "lora":
        assert all("lora_" in n for n in names)
        start = {n: torch.zeros_like(w) for n, w in weights.items() if ".lora_B." in n}
        start.update({n: weights[n] for n in weights if ".lora_A." in n})  # only B is compared below
    else:
        init = initial_weights(tiny_model_dir, names)
        assert len(init) == len(names)
        start = {f"model.{n}": w for n, w in init.items()}
    changed = [k for k in start if not torch.equal(weights[k], start[k])]
    assert changed, "no trained weight changed"

    ref_metrics, ref_weights = references(dtype, tuning)
    assert ref_weights.keys() == weights.keys()
    ref_train = [m for m in ref_metrics if m["kind"] == "train"]
    assert [m["timestep_indices"] for m in metrics] == [m["timestep_indices"] for m in ref_train]
    keys = [k for k in start if ".lora_A." not in k]
    update = torch.cat([(weights[k] - start[k]).flatten() for k in keys])
    ref_update = torch.cat([(ref_weights[k] - start[k]).flatten() for k in keys])
    rel = float((update - ref_update).norm() / ref_update.norm())
    print(f"{layout} {dtype} {tuning}: relative difference of the update to one process = {rel:.3g}")
    assert rel <= TOLERANCE[dtype]

    # Held-out evaluation is split over the data-parallel ranks (2 videos, padded when there are
    # more ranks), scored by TP rank 0 of each slice and gathered: the same per-video rewards.
    # (The first launch, which stops at step 1, evaluates "final" too: compare first and last.)
    evals, ref_evals = train_metrics(run, "eval"), [m for m in ref_metrics if m["kind"] == "eval"]
    evals = [evals[0], evals[-1]]
    assert [e["tag"] for e in evals] == ["before", "final"] and (run / "samples" / "final.mp4").exists()
    if dtype == "float32":
        for a, b in zip(ref_evals, evals):
            assert b["eval_rewards"] == pytest.approx(a["eval_rewards"], abs=1e-5)
    if layout == "dp_shard=2":  # parameters + gradients + optimizer state: local shards only
        assert metrics[-1]["state_bytes_per_rank"] <= 0.6 * ref_train[-1]["state_bytes_per_rank"]
