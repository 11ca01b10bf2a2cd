"""`fgrpo doctor`: each check's finding on a fake machine (fake GPUs, fake free memory, a PATH
without sbatch, broken model and reward folders), the exit status, and one end-to-end run on this
machine with its smoke run."""

import dataclasses
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from fgrpo.cli import doctor_smoke
from fgrpo.cli.doctor import cmd_doctor, guarded, run_checks
from fgrpo.cli.doctor_checks import (
    GIB,
    GpuInfo,
    attention_check,
    attention_checks,
    bf16_check,
    gpus_check,
    k8s_check,
    memory_check,
    plan_memory_check,
    recipe_check,
    slurm_check,
    torch_check,
)
from fgrpo.cli.doctor_files import model_folder_check, reward_check, reward_checks
from fgrpo.recipe.config import RewardSpec
from fgrpo.recipe.io import load_recipe_file
from tests.conftest import REPO, run_fgrpo

R = dataclasses.replace
H100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", 80 * GIB, 79 * GIB, (9, 0))
V100 = GpuInfo(1, "Tesla V100-SXM2-32GB", 32 * GIB, 31 * GIB, (7, 0))


def tiny_recipe(**model):
    r = load_recipe_file(REPO / "recipes" / "tiny.py")
    return R(r, model=R(r.model, **model)) if model else r


def write_model_folder(root: Path) -> Path:
    """A folder with every file the Wan loaders read (contents are not loaded by the checks)."""
    for sub in ("transformer", "vae", "text_encoder"):
        (root / sub).mkdir(parents=True)
        (root / sub / "config.json").write_text("{}")
    (root / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 100)
    (root / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 10)
    (root / "text_encoder" / "model.safetensors").write_bytes(b"x" * 10)
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    return root


# --- model folder -----------------------------------------------------------------------------------


def test_a_complete_model_folder_passes_with_sizes(tmp_path):
    folder = write_model_folder(tmp_path / "wan")
    check = model_folder_check(tiny_recipe(path=str(folder)).model)
    assert check.status == "ok", check
    assert "transformer 102 B" in check.detail and "every file readable" in check.detail


def test_missing_model_file_is_named(tmp_path):
    folder = write_model_folder(tmp_path / "wan")
    (folder / "vae" / "config.json").unlink()
    (folder / "text_encoder" / "model.safetensors").unlink()
    check = model_folder_check(tiny_recipe(path=str(folder)).model)
    assert check.status == "fail" and check.blocking
    assert f"{folder / 'vae' / 'config.json'} is missing" in check.detail
    assert f"{folder / 'text_encoder'} holds none of *.safetensors, *.bin" in check.detail


def test_a_shard_named_by_the_index_must_exist(tmp_path):
    folder = write_model_folder(tmp_path / "wan")
    (folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps(
            {
                "weight_map": {
                    "a": "diffusion_pytorch_model.safetensors",
                    "b": "diffusion_pytorch_model-00002.safetensors",
                }
            }
        )
    )
    check = model_folder_check(tiny_recipe(path=str(folder)).model)
    assert check.status == "fail"
    assert "diffusion_pytorch_model-00002.safetensors is missing (named in" in check.detail


def test_a_broken_config_is_reported(tmp_path):
    folder = write_model_folder(tmp_path / "wan")
    (folder / "transformer" / "config.json").write_text("{not json")
    check = model_folder_check(tiny_recipe(path=str(folder)).model)
    assert check.status == "fail" and "config.json is not valid JSON" in check.detail


def test_unreadable_model_folder(tmp_path, monkeypatch):
    folder = write_model_folder(tmp_path / "wan")
    locked = folder / "text_encoder"
    scandir = os.scandir

    def refuse(path="."):  # what the OS answers a non-root user for a folder without r/x (tests may run as root)
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    check = model_folder_check(tiny_recipe(path=str(folder)).model)
    assert check.status == "fail"
    assert f"{locked} is not readable (permission denied)" in check.detail


def test_missing_model_path(tmp_path):
    check = model_folder_check(tiny_recipe(path=str(tmp_path / "nowhere")).model)
    assert check.status == "fail" and f"model.path: {tmp_path / 'nowhere'} does not exist" == check.detail


def test_a_wan_preset_needs_a_model_path():
    check = model_folder_check(tiny_recipe(preset="wan2.1-t2v-1.3b").model)
    assert check.status == "fail" and check.detail.startswith("model.path is not set: preset wan2.1-t2v-1.3b needs")


def test_an_unbuilt_preset_is_not_a_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("FGRPO_CACHE", str(tmp_path))
    tiny = model_folder_check(tiny_recipe().model)
    assert tiny.status == "ok" and "not built yet" in tiny.detail and str(tmp_path) in tiny.detail
    # The released miniature build (seed 0) is copied in seconds; another seed is pre-trained (minutes).
    mini = model_folder_check(tiny_recipe(preset="miniature").model)
    assert mini.status == "ok" and "copies the released build" in mini.detail, mini
    mini = model_folder_check(tiny_recipe(preset="miniature", seed=7).model)
    assert mini.status == "warn" and "fgrpo make-miniature" in mini.detail
    assert not (tmp_path / "tiny-wan-v1-seed0").exists()  # the doctor never builds


# --- reward files ------------------------------------------------------------------------------------


def test_reward_required_path_not_set():
    check = reward_check(0, RewardSpec(name="hpsv3", args={"model_path": "/nowhere/qwen"}))
    assert check.status == "fail"
    assert "rewards.0.args.checkpoint is not set (the HPSv3.safetensors file)" in check.detail
    assert "args.model_path: /nowhere/qwen does not exist" in check.detail


def test_reward_folder_missing_what_its_loader_reads(tmp_path):
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    (qwen / "config.json").write_text("{}")
    ckpt = tmp_path / "HPSv3.safetensors"
    ckpt.write_bytes(b"x" * 2048)
    check = reward_check(1, RewardSpec(name="hpsv3", args={"model_path": str(qwen), "checkpoint": str(ckpt)}))
    assert check.status == "fail"
    assert f"args.model_path: {qwen} holds none of tokenizer.json" in check.detail
    (qwen / "tokenizer.json").write_text("{}")
    check = reward_check(1, RewardSpec(name="hpsv3", args={"model_path": str(qwen), "checkpoint": str(ckpt)}))
    assert check.status == "ok" and f"checkpoint {ckpt} (2.0 KiB)" in check.detail, check


def test_videoalign_checkpoint_folder_needs_a_step(tmp_path):
    qwen, release = tmp_path / "qwen", tmp_path / "VideoReward"
    for d in (qwen, release):
        d.mkdir()
    (qwen / "config.json").write_text("{}")
    (qwen / "vocab.json").write_text("{}")
    spec = RewardSpec(name="videoalign", args={"model_path": str(qwen), "checkpoint": str(release)})
    assert f"{release}/checkpoint-*/model.pth is missing" in reward_check(0, spec).detail
    (release / "checkpoint-10").mkdir()
    (release / "checkpoint-10" / "model.pth").write_bytes(b"x")
    assert reward_check(0, spec).status == "ok"


def test_programmatic_and_served_rewards_have_no_files():
    assert reward_check(0, RewardSpec(name="brightness")).detail == "no model files"
    r = tiny_recipe()
    served = R(r, rewards=(RewardSpec(name="hpsv3"),), reward_server=R(r.reward_server, url="http://rm:8000"))
    (check,) = reward_checks(served)
    assert check.status == "ok" and "http://rm:8000" in check.detail
    assert reward_check(0, RewardSpec(name="no_such_reward")).status == "fail"


# --- machine -------------------------------------------------------------------------------------------


def test_no_gpu_is_a_warning_not_a_failure():
    check = gpus_check([], "local", 1, torch_has_cuda=False)
    assert check.status == "warn" and check.detail.startswith("no GPU: training here runs on the CPU")
    assert "CPU build" in check.detail
    assert "torch has CUDA but sees no GPU" in gpus_check([], "local", 1, torch_has_cuda=True).detail
    assert "cluster's nodes" in gpus_check([], "slurm", 8, torch_has_cuda=False).detail


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks this CPU-only machine")
def test_this_machine_reports_no_gpu():
    from fgrpo.cli.doctor_checks import detect_gpus

    assert detect_gpus() == []
    check = torch_check()
    assert check.status == "ok" and f"torch {torch.__version__}" in check.detail and "gloo" in check.detail


def test_gpus_one_per_local_process():
    assert gpus_check([H100], "local", 1, True).status == "ok"
    check = gpus_check([H100, V100], "local", 4, True)
    assert check.status == "fail" and "runs 4 processes, one per GPU, on 2 GPUs here" in check.detail
    assert gpus_check([H100], "slurm", 16, True).status == "ok"  # the job's GPUs are elsewhere


def test_bf16_blocks_only_a_bf16_recipe():
    assert bf16_check([H100], "bfloat16", None).status == "ok"
    check = bf16_check([H100, V100], "bfloat16", None)
    assert check.status == "fail" and "GPU 1 (Tesla V100-SXM2-32GB, sm_70) lack bf16" in check.detail
    assert bf16_check([V100], "float32", None).status == "warn"
    assert bf16_check([], "float32", None).detail == "no GPU; bf16 matmuls run on this CPU"
    assert bf16_check([], "bfloat16", "RuntimeError: no").status == "fail"


def test_unknown_attention_backend():
    check = attention_check("model.attention_backend", "nonsense", True, "cpu", "float32", 16, must_run_here=True)
    assert check.status == "fail" and "model.attention_backend: unknown backend 'nonsense'" in check.detail
    check = attention_check("model.attention_backend", "sage", True, "cpu", "float32", 16, must_run_here=True)
    assert check.status == "fail" and "'sage' is forward-only" in check.detail


def test_attention_backend_runs_here_or_warns_for_a_cluster():
    ok = attention_check("model.attention_backend", "native", True, "cpu", "bfloat16", 16, must_run_here=True)
    assert ok.status == "ok"
    assert ok.detail == "model.attention_backend=native: forward and backward ran on cpu in bfloat16"
    # flex has no backward on CPU: blocking where the run computes here, a warning for a cluster's job
    here = attention_check("model.attention_backend", "flex", True, "cpu", "float32", 16, must_run_here=True)
    assert here.status == "fail" and "backend 'flex' cannot run attention (forward and backward) on cpu" in here.detail
    r = tiny_recipe(attention_backend="flex", rollout_attention_backend="native")
    train, rollout = attention_checks(r, [], "slurm")
    assert train.status == "warn" and "the slurm job checks it again" in train.detail
    assert (rollout.name, rollout.status) == ("rollout attention", "ok")


def test_memory_short_of_the_plans_peak():
    check = memory_check([H100, R(V100, free=10 * GIB)], 2, 20 * GIB, "training")
    assert check.status == "fail" and check.blocking
    assert "the plan's peak, 20.0 GiB per GPU in training, exceeds GPU 1 (10.0 GiB free)" in check.detail
    assert memory_check([H100], 1, 78 * GIB, "rollout").status == "warn"  # under 2 GiB of headroom
    assert memory_check([H100, R(V100, free=10 * GIB)], 1, 20 * GIB, "training").status == "ok"  # GPU 1 unused
    assert memory_check([], 1, 0, "").detail == "no GPU: plan skipped"


def test_memory_plans_the_recipe_for_the_detected_gpu():
    """The real planner (as `fgrpo plan`) on the tiny recipe, against a fake GPU with 1 MiB free."""
    from fgrpo.distributed.process_group import shutdown

    # `fgrpo doctor` plans in a fresh process; in-process trainer tests before this one leave their
    # (one-rank) process group behind, which the planner refuses to run beside.
    shutdown()
    check = plan_memory_check(tiny_recipe(), [R(H100, free=2**20)])
    assert check.status == "fail" and "exceeds GPU 0 (1.0 MiB free)" in check.detail
    assert plan_memory_check(tiny_recipe(), []).status == "skip"


def test_recipe_problems_other_than_files(tmp_path):
    r = tiny_recipe(path=str(tmp_path / "nowhere"))
    assert recipe_check(r).status == "ok"  # the model folder's row reports the path
    bad = R(r, rollout=R(r.rollout, frames=6))
    assert "rollout.frames: (frames - 1) must be a multiple of 4" in recipe_check(bad).detail


# --- schedulers ---------------------------------------------------------------------------------------


def fake_tools(folder: Path, sinfo: str, *tools: str) -> Path:
    folder.mkdir()
    for tool in tools:
        (folder / tool).write_text("#!/bin/sh\n" + (sinfo if tool == "sinfo" else "exit 0") + "\n")
        (folder / tool).chmod(0o755)
    return folder


def test_slurm_without_sbatch(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_tools(tmp_path / "bin", "exit 0", "squeue", "scancel", "sinfo")))
    check = slurm_check()
    assert check.status == "fail" and check.detail.startswith("sbatch not on PATH")


def test_slurm_sinfo_must_answer(tmp_path, monkeypatch):
    tools = ("sbatch", "squeue", "scancel", "sinfo")
    down = fake_tools(
        tmp_path / "down", "echo 'slurm_load_partitions: Unable to contact slurm controller' >&2; exit 1", *tools
    )
    monkeypatch.setenv("PATH", str(down))
    check = slurm_check()
    assert check.status == "fail"
    assert check.detail == "sinfo failed (exit 1): slurm_load_partitions: Unable to contact slurm controller"
    monkeypatch.setenv("PATH", str(fake_tools(tmp_path / "up", "echo 'gpu*'; echo debug", *tools)))
    assert slurm_check().detail.endswith("sinfo answered: partitions gpu*, debug")
    check = slurm_check(partition="h100")
    assert check.status == "warn" and "launch.partition 'h100' is not among sinfo's partitions" in check.detail


def test_k8s_without_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    check = k8s_check()
    assert check.status == "fail" and "cannot load Kubernetes credentials" in check.detail


def test_k8s_api_server_answers(tmp_path, monkeypatch):
    class Version(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = json.dumps(
                {
                    "major": "1",
                    "minor": "31",
                    "gitVersion": "v1.31.2",
                    "gitCommit": "abc",  # as /version
                    "gitTreeState": "clean",
                    "buildDate": "2024-10-22T20:28:14Z",
                    "goVersion": "go1.22.8",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                }
            ).encode()
            self.send_response(200 if self.path == "/version/" or self.path == "/version" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = HTTPServer(("127.0.0.1", 0), Version)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "lab",
                "clusters": [{"name": "lab", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
                "users": [{"name": "me", "user": {"token": "t"}}],
                "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "me"}}],
            }
        )
    )
    for var in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "KUBERNETES_SERVICE_HOST",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(config))
    try:
        check = k8s_check()
    finally:
        server.shutdown()
    assert check.status == "ok" and check.detail.startswith("API server v1.31.2 answered (context lab)"), check


# --- the command ---------------------------------------------------------------------------------------


def test_a_raising_check_is_a_failed_row():
    def broken():
        raise RuntimeError("driver/library version mismatch\nmore")

    assert guarded("GPUs", broken)[0].detail == "RuntimeError: driver/library version mismatch"


def test_blocking_problem_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(fake_tools(tmp_path / "bin", "exit 0", "squeue", "scancel", "sinfo")))
    monkeypatch.setenv("COLUMNS", "300")
    assert cmd_doctor(["--backend", "slurm", "--no-smoke"]) == 1
    out = capsys.readouterr().out
    assert "sbatch not on PATH" in out and "blocking: slurm" in out


def test_missing_model_folder_exits_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    code = cmd_doctor([str(REPO / "recipes" / "tiny.py"), "--no-smoke", "--model.path", str(tmp_path / "wan")])
    out = capsys.readouterr().out
    assert code == 1, out
    assert f"model.path: {tmp_path / 'wan'} does not exist" in out and "blocking: model folder" in out


def test_smoke_failure_names_the_error(monkeypatch):
    monkeypatch.setattr(doctor_smoke, "SMOKE_ARGS", ("--rollout.frames", "6"))
    check = doctor_smoke.smoke_check([])
    assert check.status == "fail"
    assert (
        "exited 2, run not started: fgrpo: error: invalid recipe: rollout.frames: (frames - 1) must be a multiple of 4"
    ) in check.detail


def test_smoke_processes_split_the_batch():
    assert [doctor_smoke.smoke_processes(n) for n in (0, 1, 2, 3, 4, 8)] == [1, 1, 2, 2, 4, 4]


def test_machine_only_checks_skip_the_recipe_rows():
    rows = {r.name: r for r in run_checks(None, "local", smoke=False)}
    assert rows["recipe"].status == "skip" and rows["smoke run"].status == "skip"
    assert "memory" not in rows and "model folder" not in rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks this CPU-only machine")
def test_doctor_tiny_recipe_end_to_end():
    res = run_fgrpo("doctor", "recipes/tiny.py", env={"COLUMNS": "300"})
    assert res.returncode == 0, res.stdout + res.stderr
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in res.stdout.splitlines()
        if line.startswith("│") and line.split("│")[1].strip()
    }
    assert rows["GPUs"] == "warning" and "no GPU: training here runs on the CPU" in res.stdout
    assert rows["memory"] == "skipped" and "no GPU: plan skipped" in res.stdout
    for name in ("torch", "bf16", "recipe", "attention", "model folder", "reward 0 (brightness)", "smoke run"):
        assert rows[name] == "ok", (name, res.stdout)
    assert "1 step of the tiny model (tiny.py) on the CPU" in res.stdout
    assert "no blocking problem; warnings (not blocking): GPUs" in res.stdout
