"""Export a trained run as a plain diffusers transformer (LoRA merged) plus a diffusers LoRA file.

    out_dir/transformer/                      WanTransformer3DModel.from_pretrained(out_dir, subfolder="transformer")
    out_dir/lora/pytorch_lora_weights.safetensors   WanPipeline.load_lora_weights(out_dir / "lora")  (LoRA runs only)
    out_dir/export.json                       run, step, weights, LoRA rank/alpha

The checkpoint is read with torch.distributed.checkpoint in this one process (no process group),
whatever number of ranks saved it; DCP gathers the shards into full tensors. The whole export is
written to a temporary sibling folder and renamed into place, so an interrupted export leaves
no half-written `out_dir`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import torch

from fgrpo.run_folder import RunFolder

Weights = Literal["ema", "model"]


def _find_checkpoint(folder: RunFolder, step: int | None) -> tuple[int, Path]:
    """The newest checkpoint its manifest vouches for (or `step`); skipped ones are said on stderr."""
    step, path, skipped = folder.usable_checkpoint(step)
    for note in skipped:
        print(f"fgrpo: {note}", file=sys.stderr)
    return step, path


def load_trained_transformer(run_dir: Path, step: int | None = None, weights: Weights = "ema"):
    """The run's transformer with its trained weights loaded (LoRA still attached, unmerged).

    Returns (transformer, recipe, step, weights actually used).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    from fgrpo.distributed.precision import PrecisionPolicy
    from fgrpo.models.model_folder import model_folder
    from fgrpo.models.wan.loading import load_transformer
    from fgrpo.models.wan.lora import add_lora

    folder = RunFolder(run_dir)
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', not {weights!r}")
    recipe = folder.read_recipe()  # FileNotFoundError when the folder has no recipe.json
    step, ckpt = _find_checkpoint(folder, step)
    saved = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    if weights == "ema" and not any(k.startswith("ema.") for k in saved):
        warnings.warn(f"{ckpt} has no EMA weights (ema disabled in the recipe?); exporting the model weights instead")
        weights = "model"

    transformer = load_transformer(model_folder(recipe.model), recipe.model.dtype)
    if recipe.lora.enabled:
        add_lora(transformer, recipe.lora.rank, recipe.lora.alpha, recipe.lora.target_modules)
        params = {n: p for n, p in transformer.named_parameters() if "lora_" in n}
        # Adapters in fp32, as trained (the merge into the base weights then rounds once).
        PrecisionPolicy.from_name(recipe.model.dtype).apply_storage(transformer)
    else:
        params = dict(transformer.named_parameters())
    missing = [n for n in params if f"{weights}.{n}" not in saved]
    if missing:
        raise RuntimeError(f"{ckpt} lacks {weights} weights {missing[:5]}...: a checkpoint of another recipe?")
    # Full-shape tensors in the saved dtype (EMA is float32); DCP gathers every rank's shards into them.
    sd = {weights: {n: torch.empty(p.shape, dtype=saved[f"{weights}.{n}"].properties.dtype) for n, p in params.items()}}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(sd, checkpoint_id=str(ckpt), no_dist=True)
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(sd[weights][n])
    return transformer.eval(), recipe, step, weights


def export_run(run_dir: Path, out_dir: Path, step: int | None = None, weights: Weights = "ema") -> Path:
    """Export checkpoint `step` (newest complete if None) of `run_dir` to `out_dir`; returns `out_dir`.

    `out_dir` may exist only if it is empty or a previous export (it is then replaced whole).
    """
    from diffusers import WanPipeline
    from peft import get_peft_model_state_dict

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "export.json").is_file():
        raise FileExistsError(f"{out_dir} exists and is not an fgrpo export; refusing to replace it")
    transformer, recipe, step, weights = load_trained_transformer(run_dir, step, weights)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the export is meant to be shared
    try:
        lora = recipe.lora
        if lora.enabled:
            # The adapter on its own, in diffusers' LoRA format. The metadata carries lora_alpha
            # (without it diffusers would assume alpha = rank and scale the update wrongly).
            WanPipeline.save_lora_weights(
                tmp / "lora",
                transformer_lora_layers=get_peft_model_state_dict(transformer),
                transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
            )
            transformer.fuse_lora()  # W += (alpha / r) B A, through peft's merge
            transformer.unload_lora()  # drop the adapter modules, keep the merged base layers
        transformer.save_pretrained(tmp / "transformer")
        info = {
            "run": str(run_dir.resolve()),
            "step": step,
            "weights": weights,
            "base_model": recipe.model.path,
            "dtype": recipe.model.dtype,
            "lora": {"rank": lora.rank, "alpha": lora.alpha, "target_modules": list(lora.target_modules)}
            if lora.enabled
            else None,
        }
        (tmp / "export.json").write_text(json.dumps(info, indent=2) + "\n")  # tmp is renamed into place whole
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
