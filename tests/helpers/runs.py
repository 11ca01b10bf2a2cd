"""Shared helpers for multi-process tests: launch the tiny recipe, read trained weights back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from tests.conftest import REPO, run_fgrpo

# Small and quick, identical for every layout; checkpoint every step.
BASE_ARGS = [
    "--rollout.prompts-per-step",
    "2",
    "--rollout.group-size",
    "4",
    "--rollout.micro-batch",
    "4",
    "--eval.interval",
    "1000",
    "--checkpoint.interval",
    "1",
    "--checkpoint.keep-last",
    "10",
    "--prompts.heldout",
    "2",
    "--eval.steps",
    "2",
    "--eval.videos-per-prompt",
    "1",
]


def recipe_with_eval(tmp_path: Path, base: str, gold_rewards: str) -> str:
    """A recipe file in `tmp_path`: `recipes/<base>.py` with its `eval.gold_rewards` set to the
    Python expression `gold_rewards` (RewardSpec is in scope), launched as users launch a recipe file."""
    path = tmp_path / f"{base}_gold_changed.py"
    path.write_text(
        "import dataclasses\n"
        "from fgrpo.recipe.config import RewardSpec\n"
        "from fgrpo.recipe.io import load_recipe_file\n"
        f"base = load_recipe_file({str(REPO / 'recipes' / f'{base}.py')!r})\n"
        f"recipe = dataclasses.replace(base, eval=dataclasses.replace(base.eval, gold_rewards={gold_rewards}))\n"
    )
    return str(path)


# Relative L2 difference of a two-step update between a parallel layout and one process, in bf16:
# tests/distributed/test_precision_matrix.py explains the size (Wan2.1 tiny: TP layouts 6.4-8.4 %).
BF16_LAYOUT_TOLERANCE = 0.15
EXPERTS = ("transformer", "transformer_2")  # a two-expert folder's transformers, high noise first


def launch_tiny(
    tiny_model_dir: Path, runs: Path, procs: int, steps: int, *extra: str, name: str = "run", env: dict | None = None
):
    runs.mkdir(parents=True, exist_ok=True)
    res = run_fgrpo(
        "launch",
        str(REPO / "recipes" / "tiny.py"),
        "--model.path",
        str(tiny_model_dir),
        "--logging.runs-dir",
        str(runs),
        "--logging.run-name",
        name,
        "--launch.procs-per-node",
        str(procs),
        "--optim.max-steps",
        str(steps),
        *BASE_ARGS,
        *extra,
        cwd=runs.parent,
        timeout=500,
        env=env,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return runs / name


def trained_weights(run_dir: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    """The full (unsharded) trained weights of a checkpoint, read back in this one process."""
    from fgrpo.export import load_trained_transformer

    transformer = load_trained_transformer(run_dir, step, weights="model")[0]
    # requires_grad marks what the recipe trains (the adapters with LoRA, everything without)
    return {n: p.detach().clone() for n, p in transformer.named_parameters() if p.requires_grad}


def train_metrics(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def tiny_launch_args(tiny_model_dir: Path, runs: Path, steps: int, *extra: str, name: str = "run") -> list[str]:
    """`fgrpo launch` arguments of a small tiny-recipe run, without periodic checkpoints."""
    return [
        "launch",
        str(REPO / "recipes" / "tiny.py"),
        "--model.path",
        str(tiny_model_dir),
        "--logging.runs-dir",
        str(runs),
        "--logging.run-name",
        name,
        "--optim.max-steps",
        str(steps),
        *BASE_ARGS,
        "--checkpoint.interval",
        "1000",
        *extra,
    ]


def wait_for(predicate, timeout: float = 240, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def checkpoint_state(run_dir, step: int, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor under `prefix` in checkpoint step-N, gathered into full tensors in this process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = run_dir / "checkpoints" / f"step-{step}"
    meta = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    full = {
        k: torch.empty(m.size, dtype=m.properties.dtype)
        for k, m in meta.items()
        if k.startswith(prefix) and isinstance(m, TensorStorageMetadata)
    }
    dcp.load(full, checkpoint_id=str(path), no_dist=True)
    return full


def initial_weights(tiny_model_dir, names) -> dict[str, torch.Tensor]:
    """The model folder's weights under a run's parameter names, in fp32. A two-expert folder's names
    are `transformer.<name>` and `transformer_2.<name>` (fgrpo.models.wan.experts.WanExperts)."""
    from safetensors.torch import load_file

    from fgrpo.models.wan.sharded_loading import checkpoint_key

    def load(expert: str) -> dict[str, torch.Tensor]:
        return load_file(str(tiny_model_dir / expert / "diffusion_pytorch_model.safetensors"))

    if not (tiny_model_dir / "transformer_2").is_dir():
        base = load("transformer")
        return {n: base[checkpoint_key(n)].float() for n in names if checkpoint_key(n) in base}
    experts = {e: load(e) for e in EXPERTS}
    split = {n: n.partition(".")[::2] for n in names}
    return {n: experts[e][checkpoint_key(rest)].float() for n, (e, rest) in split.items()}


def launch_stop_and_resume(model_dir: Path, runs: Path, procs: int, *extra: str) -> Path:
    """Launch one step (it checkpoints and exits), then launch again: it resumes and trains step 2."""
    run = launch_tiny(model_dir, runs, procs, 1, *extra)
    assert (run / "checkpoints" / "step-1" / ".metadata").is_file()
    launch_tiny(model_dir, runs, procs, 2, *extra)
    return run


def runs_by_layout(model_dir: Path, tmp_path_factory, name: str, layouts: dict, *args: str):
    """`get(layout)`: per layout of `layouts` (name -> (procs, extra args)), on first use, a run
    launched for step 1 (checkpoint, exit), then launched again to step 2, which resumes from it."""
    runs: dict[str, Path] = {}

    def get(layout: str) -> Path:
        if layout not in runs:
            procs, extra = layouts[layout]
            folder = tmp_path_factory.mktemp(f"{name}-{procs}") / "runs"
            runs[layout] = launch_stop_and_resume(model_dir, folder, procs, *args, *extra)
        return runs[layout]

    return get


def assert_resumed_on_policy(metrics: list[dict]) -> None:
    """Steps 1 and 2, the second after a resume; finite; the first step exactly on-policy."""
    assert [m["step"] for m in metrics] == [1, 2], "the second launch did not resume from step 1"
    for m in metrics:
        assert all(torch.isfinite(torch.tensor([m["loss"], m["grad_norm"], m["reward_mean"]])))
    assert metrics[0]["ratio_dev_max"] == 0.0 and metrics[0]["clip_frac"] == 0.0  # on-policy first step


def update_since(run: Path, start: dict[str, torch.Tensor], step: int = 2) -> torch.Tensor:
    """The trained update (checkpoint `step`'s `model.<name>` minus `start[name]`), flattened over
    `start`'s names."""
    weights = checkpoint_state(run, step, "model.")
    return torch.cat([(weights[f"model.{k}"] - start[k]).flatten() for k in sorted(start)])


def assert_update_matches(run: Path, reference: Path, start: dict[str, torch.Tensor], label: str) -> float:
    """A parallel layout's two-step update against one process's (`reference`), and the same
    timesteps drawn: within BF16_LAYOUT_TOLERANCE (relative L2). Returns the difference."""
    ref = update_since(reference, start)
    rel = float((update_since(run, start) - ref).norm() / ref.norm())
    print(f"\n{label} bf16: relative difference of the update to one process = {rel:.3g}")
    assert rel <= BF16_LAYOUT_TOLERANCE
    timesteps = [m["timestep_indices"] for m in train_metrics(run)]
    assert timesteps == [m["timestep_indices"] for m in train_metrics(reference)]
    return rel
