"""Run names say what a person compares; where the files live is a hash, never the readable part."""

import re
from dataclasses import replace
from pathlib import Path

from fgrpo.recipe.io import changed_fields, load_recipe_file, run_name
from tests.conftest import REPO, run_fgrpo


def _wan14b(model: str, qwen: str, ckpt: str, **optim):
    base = load_recipe_file(REPO / "recipes" / "wan14b.py")
    reward = replace(base.rewards[0], args={"model_path": qwen, "checkpoint": ckpt})
    return base, replace(
        base, model=replace(base.model, path=model), rewards=(reward,), optim=replace(base.optim, **optim)
    )


def test_paths_are_left_out_of_the_readable_name_but_tell_runs_apart():
    base, a = _wan14b("/data/Wan2.1-T2V-14B-Diffusers", "/models/Qwen2-VL-7B-Instruct", "/models/HPSv3.safetensors")
    name = run_name(base, a)
    assert name.startswith("wan14b__") and len(name) == len("wan14b__") + 10, name  # the recipe + a hash
    for word in ("data", "models", "Qwen", "HPSv3", "path"):
        assert word not in name, name
    # Other files: another folder, never the same one silently.
    _, moved = _wan14b("/scratch/Wan2.1-T2V-14B-Diffusers", "/models/Qwen2-VL-7B-Instruct", "/models/HPSv3.safetensors")
    _, other_ckpt = _wan14b(
        "/data/Wan2.1-T2V-14B-Diffusers", "/models/Qwen2-VL-7B-Instruct", "/models/other.safetensors"
    )
    assert len({name, run_name(base, moved), run_name(base, other_ckpt)}) == 3
    assert run_name(base, a) == name  # a pure function: a relaunch finds the same folder


def test_what_was_trained_differently_stays_readable_and_the_files_hash_is_shared():
    base, a = _wan14b("/data/W", "/models/Q", "/models/H.safetensors")
    _, b = _wan14b("/data/W", "/models/Q", "/models/H.safetensors", lr=3e-5)
    assert run_name(base, b) == f"wan14b__lr=3e-05__{run_name(base, a).rsplit('__', 1)[1]}"
    # The run's identity keeps the paths: a folder's recipe check still sees them.
    assert "model.path" in changed_fields(a, replace(a, model=replace(a.model, path="/data/V")))


def test_reward_args_naming_files_are_locations_other_args_are_not():
    base = load_recipe_file(REPO / "recipes" / "tiny.py")
    spec = base.rewards[0]
    custom = replace(base, rewards=(replace(spec, args={"weights_path": "/w/x.pt", "scale": 0.5}),))
    name = run_name(base, custom)
    assert name.startswith("tiny__rewards.0.args=scale-0.5__") and "x.pt" not in name, name
    prompts = replace(base, prompts=replace(base.prompts, file="/data/prompts/vidprom.txt"))
    assert "vidprom" not in run_name(base, prompts) and run_name(base, prompts) != "tiny"


def test_show_prints_a_readable_run_folder_for_the_paper_recipe(tmp_path):
    """The issue's command: the run folder is wan14b plus a hash, not the paths."""
    models = tmp_path / "models"
    for sub in ("transformer", "vae", "text_encoder", "tokenizer"):
        (models / "Wan2.1-T2V-14B-Diffusers" / sub).mkdir(parents=True)
    (models / "Qwen2-VL-7B-Instruct").mkdir()
    (models / "HPSv3.safetensors").write_bytes(b"")
    res = run_fgrpo(
        "show",
        "recipes/wan14b.py",
        "--model.path",
        str(models / "Wan2.1-T2V-14B-Diffusers"),
        "--rewards.0.args",
        "model_path",
        str(models / "Qwen2-VL-7B-Instruct"),
        "checkpoint",
        str(models / "HPSv3.safetensors"),
        "--logging.runs-dir",
        str(tmp_path / "runs"),
    )
    assert res.returncode == 0, res.stderr
    folder = Path(res.stdout.strip().splitlines()[-1].removeprefix("run folder: "))
    assert folder.parent == tmp_path / "runs" and re.fullmatch(r"wan14b__[0-9a-f]{10}", folder.name), folder
