"""`fgrpo plan` and `fgrpo launch`'s pre-flight check, as a user runs them. That a paper recipe plans
without --model.path and the reward's files is checked by tests/planner/test_plan_model_recipes.py."""

from __future__ import annotations

import json

from tests.conftest import run_fgrpo


def test_plan_json_never_touches_model_path(tmp_path):
    """A model folder whose configs are garbage: a plan that read anything there would fail."""
    garbage = tmp_path / "model"
    for sub in ("transformer", "vae", "text_encoder", "tokenizer"):
        (garbage / sub).mkdir(parents=True)
        (garbage / sub / "config.json").write_text("not json")
    res = run_fgrpo("plan", "recipes/tiny.py", "--model.path", str(garbage), "--json", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    plan = json.loads(res.stdout)
    assert plan["model"] == "preset tiny"
    assert [p["name"] for p in plan["phases"]] == ["text encoding", "rollout", "VAE decode", "training", "evaluation"]
    assert all(p["peak_bytes"] > 0 and p["fits"] for p in plan["phases"])
    assert plan["flops_per_rank"]["training"] > 0 and plan["gpu_hours"] > 0
    assert plan["world"] == 1 and plan["sizes"]["videos"] == 32


def test_preflight_refuses_a_recipe_that_does_not_fit(tmp_path):
    runs = tmp_path / "runs"
    args = (
        "launch",
        "recipes/tiny.py",
        "--backend",
        "slurm",
        "--dry-run",
        "--logging.runs-dir",
        str(runs),
        "--launch.gpu-memory-gb",
        "0.01",
    )
    res = run_fgrpo(*args, timeout=300)
    assert res.returncode == 2, (res.stdout, res.stderr[-3000:])
    assert "pre-flight: this recipe will not fit in launch.gpu_memory_gb=0.01" in res.stderr
    assert "VAE decode needs" in res.stderr and "--rollout.micro-batch" in res.stderr
    assert not runs.exists() and "run folder" not in res.stdout
    res = run_fgrpo(*args, "--no-preflight", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "pre-flight" not in res.stderr and "run folder" in res.stdout
    assert not runs.exists()  # a dry run writes nothing


def test_local_launch_has_no_preflight(tmp_path):
    res = run_fgrpo(
        "launch",
        "recipes/tiny.py",
        "--dry-run",
        "--logging.runs-dir",
        str(tmp_path / "runs"),
        "--launch.gpu-memory-gb",
        "0.01",
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "pre-flight" not in res.stderr
