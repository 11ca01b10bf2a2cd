"""`--backend slurm` where Slurm is not installed (a laptop previewing the sbatch script before
copying it to the cluster): the dry run prints submitit's script and writes nothing; a real launch
fails with one line. The suite's machine has Slurm, so its commands are hidden from PATH."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.conftest import REPO, run_fgrpo

SLURM_COMMANDS = {"sbatch", "srun", "squeue", "scontrol", "sacct", "scancel", "sinfo", "salloc", "sattach"}
NO_SBATCH = (
    "fgrpo: error: sbatch not found on PATH: the slurm backend submits from a Slurm login node; "
    "use --dry-run to preview"
)


@pytest.fixture
def no_slurm_path(tmp_path) -> str:
    """This PATH less Slurm's commands: a folder on it that holds one is replaced by a folder of
    links to everything else in it."""
    dirs = []
    for i, d in enumerate(os.environ.get("PATH", "").split(os.pathsep)):
        if not os.path.isdir(d) or not SLURM_COMMANDS & set(os.listdir(d)):
            dirs.append(d)
            continue
        farm = tmp_path / "path" / str(i)
        farm.mkdir(parents=True)
        for name in set(os.listdir(d)) - SLURM_COMMANDS:
            (farm / name).symlink_to(os.path.join(d, name))
        dirs.append(str(farm))
    path = os.pathsep.join(dirs)
    assert not [c for c in SLURM_COMMANDS if shutil.which(c, path=path)]
    return path


@pytest.fixture
def wan14b_args(tmp_path) -> list[str]:
    """recipes/wan14b.py with stand-ins for its weights (validation only checks they exist)."""
    models = tmp_path / "models"
    for sub in ("transformer", "vae", "text_encoder", "tokenizer"):
        (models / "Wan2.1-T2V-14B-Diffusers" / sub).mkdir(parents=True)
    (models / "Qwen2-VL-7B-Instruct").mkdir()
    (models / "HPSv3.safetensors").write_bytes(b"")
    return [
        str(REPO / "recipes" / "wan14b.py"),
        "--backend",
        "slurm",
        "--logging.runs-dir",
        str(tmp_path / "runs"),
        "--model.path",
        str(models / "Wan2.1-T2V-14B-Diffusers"),
        "--rewards.0.args",
        "model_path",
        str(models / "Qwen2-VL-7B-Instruct"),
        "checkpoint",
        str(models / "HPSv3.safetensors"),
        "--no-preflight",
    ]  # planning 14B takes a minute per launch; the pre-flight has tests/planner


def sbatch_text(stdout: str) -> str:
    return stdout[stdout.index("#!/bin/bash") :]


def test_dry_run_prints_the_sbatch_script_without_slurm(tmp_path, no_slurm_path, wan14b_args):
    res = run_fgrpo("launch", *wan14b_args, "--dry-run", cwd=tmp_path, env={"PATH": no_slurm_path})
    assert res.returncode == 0, res.stderr
    recipe = json.loads(res.stdout[: res.stdout.index("run folder:")])
    assert recipe["launch"]["nodes"] == 4 and recipe["launch"]["gpus_per_node"] == 8
    script = sbatch_text(res.stdout)
    for line in (
        "--nodes=4",
        "--gpus-per-node=8",
        "--ntasks-per-node=8",
        "--time=1440",
        "--requeue",
        "--signal=USR2@180",
        "--job-name=wan14b_",
    ):
        assert f"\n#SBATCH {line}" in script, script
    assert "\nsrun --unbuffered " in script and "-m submitit.core._submit" in script
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "path"]  # no run folder, nothing else


def test_launch_without_slurm_fails_with_one_line(tmp_path, no_slurm_path, wan14b_args):
    res = run_fgrpo("launch", *wan14b_args, cwd=tmp_path, env={"PATH": no_slurm_path})
    assert res.returncode == 2 and res.stderr.strip() == NO_SBATCH, res.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert not (run / "submitit").exists() and not (run / "jobs.jsonl").exists()


def test_the_previewed_script_is_the_one_submitted(tmp_path, no_slurm_path, wan14b_args):
    """Submitted through stand-ins for sbatch and srun: the file submitit hands sbatch is, byte for
    byte, what the dry run printed."""
    fake = tmp_path / "fake-slurm"
    fake.mkdir()
    (fake / "sbatch").write_text(f'#!/bin/sh\necho "$@" > {fake}/sbatch.args\necho "Submitted batch job 4242"\n')
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    env = {"PATH": os.pathsep.join([str(fake), no_slurm_path])}
    args = [*wan14b_args, "--logging.run-name", "r"]
    preview = run_fgrpo("launch", *args, "--dry-run", cwd=tmp_path, env=env)
    assert preview.returncode == 0, preview.stderr
    res = run_fgrpo("launch", *args, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert "submitted Slurm job 4242" in res.stdout
    submitted = tmp_path / "runs" / "r" / "submitit" / "4242_submission.sh"
    assert (fake / "sbatch.args").read_text().split()[0].endswith(".sh")
    assert sbatch_text(preview.stdout) == submitted.read_text() + "\n"  # print's newline
