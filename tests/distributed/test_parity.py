"""The README's multi-process command starts the processes the layout implies.

(Every layout's agreement with one process, in fp32 and bf16, with LoRA and full fine-tuning, is
tests/distributed/test_precision_matrix.py.)
"""

from tests.helpers.runs import train_metrics


def test_issue_command_runs_four_local_processes(tiny_model_dir, tmp_path):
    """`fgrpo launch recipes/tiny.py --parallelism.dp-shard 2 --parallelism.tp 2`: 4 processes inferred."""
    import json

    from tests.conftest import REPO, run_fgrpo

    res = run_fgrpo(
        "launch",
        str(REPO / "recipes" / "tiny.py"),
        "--parallelism.dp-shard",
        "2",
        "--parallelism.tp",
        "2",
        "--model.path",
        str(tiny_model_dir),
        "--logging.runs-dir",
        str(tmp_path),
        "--optim.max-steps",
        "2",
        "--eval.steps",
        "2",
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (run,) = [p for p in tmp_path.iterdir() if (p / "launch.json").exists()]
    assert json.loads((run / "launch.json").read_text())["world_size"] == 4
    assert len(train_metrics(run)) == 2 and (run / "samples" / "final.mp4").exists()
