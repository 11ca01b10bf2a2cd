"""FSDP2 / HSDP / TP layouts on 4 processes train exactly like one process on the same global batch.

Tolerance: fp32 on CPU, same global batch, same noise (per-video generators); the only
differences are the order of floating-point sums (sharded matmuls, gradient reduce-scatter), about
1e-7 relative per operation, so after two Adam steps weights agree to 1e-5.
"""

import pytest
import torch

from tests.distributed.helpers import launch_tiny, train_metrics, trained_weights

LAYOUTS = {
    "dp_shard=4": ["--parallelism.dp-shard", "4"],
    "dp_shard=2,tp=2": ["--parallelism.dp-shard", "2", "--parallelism.tp", "2"],
    "dp_replicate=2,dp_shard=2": ["--parallelism.dp-replicate", "2", "--parallelism.dp-shard", "2"],
    "tp=4": ["--parallelism.dp-shard", "1", "--parallelism.tp", "4"],
}


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("ref") / "runs"
    run = launch_tiny(tiny_model_dir, runs, 1, 2)
    return train_metrics(run), trained_weights(run), train_metrics(run, "eval")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_process(tiny_model_dir, tmp_path, reference, layout):
    ref_metrics, ref_weights, ref_evals = reference
    run = launch_tiny(tiny_model_dir, tmp_path / "runs", 4, 2, *LAYOUTS[layout])
    metrics = train_metrics(run)
    for a, b in zip(ref_metrics, metrics):
        assert a["timestep_indices"] == b["timestep_indices"]
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)  # ~0: on-policy ratio 1, zero-mean advantages
        assert b["reward_mean"] == pytest.approx(a["reward_mean"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)  # one norm over all shards
    weights = trained_weights(run)
    for name, w in ref_weights.items():
        torch.testing.assert_close(weights[name], w, rtol=1e-5, atol=1e-5, msg=f"{layout}: {name}")
    assert len(weights) == len(ref_weights)
    # Held-out evaluation is split over the data-parallel ranks (2 videos over 4 ranks: padded),
    # scored by TP rank 0 of each slice and gathered: the same per-video rewards as one process.
    evals = train_metrics(run, "eval")
    assert [e["tag"] for e in evals] == [e["tag"] for e in ref_evals] == ["before", "final"]
    for a, b in zip(ref_evals, evals):
        assert b["eval_rewards"] == pytest.approx(a["eval_rewards"], abs=1e-5)
    assert (run / "samples" / "final.gif").exists()
    if layout == "dp_shard=4":  # parameters + gradients + optimizer state, local shards only
        assert metrics[-1]["state_bytes_per_rank"] <= 0.3 * ref_metrics[-1]["state_bytes_per_rank"]


def test_lora_under_fsdp_and_tp(tiny_model_dir, tmp_path):
    """LoRA adapters train the same at dp_shard=2 x tp=2 as on one process; only they train."""
    lora = ["--lora.enabled", "--lora.rank", "4", "--lora.alpha", "8"]
    ref = launch_tiny(tiny_model_dir, tmp_path / "ref" / "runs", 1, 2, *lora)
    run = launch_tiny(tiny_model_dir, tmp_path / "tp" / "runs", 4, 2, "--parallelism.dp-shard", "2",
                      "--parallelism.tp", "2", *lora)
    a, b = trained_weights(ref), trained_weights(run)
    assert a.keys() == b.keys() and all("lora_" in k for k in a) and len(a) > 0
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-5, msg=name)
    # the optimizer holds only the adapters: far less state than full fine-tuning
    full = train_metrics(launch_tiny(tiny_model_dir, tmp_path / "full" / "runs", 1, 1))[-1]["state_bytes_per_rank"]
    assert train_metrics(ref)[-1]["state_bytes_per_rank"] < 0.5 * full


def test_issue_command_runs_four_local_processes(tiny_model_dir, tmp_path):
    """`fgrpo launch recipes/tiny.py --parallelism.dp-shard 2 --parallelism.tp 2`: 4 processes inferred."""
    import json

    from tests.conftest import REPO, run_fgrpo

    res = run_fgrpo("launch", str(REPO / "recipes" / "tiny.py"), "--parallelism.dp-shard", "2", "--parallelism.tp", "2",
                    "--model.path", str(tiny_model_dir), "--logging.runs-dir", str(tmp_path), "--optim.max-steps", "2",
                    "--eval.steps", "2", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (run,) = [p for p in tmp_path.iterdir() if (p / "launch.json").exists()]
    assert json.loads((run / "launch.json").read_text())["world_size"] == 4
    assert len(train_metrics(run)) == 2 and (run / "samples" / "final.gif").exists()
