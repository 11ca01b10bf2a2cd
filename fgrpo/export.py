"""Export a trained run as a plain diffusers transformer (LoRA merged) plus a diffusers LoRA file.

    out_dir/transformer/                      WanTransformer3DModel.from_pretrained(out_dir, subfolder="transformer")
    out_dir/lora/pytorch_lora_weights.safetensors   WanPipeline.load_lora_weights(out_dir / "lora")  (LoRA runs only)
    out_dir/export.json                       run, step, weights, LoRA rank/alpha

A two-expert model (Wan2.2 A14B) also gets `out_dir/transformer_2/` (the low-noise expert, merged
on its own; the frozen one as loaded), `out_dir/lora_2/` for a trained low-noise expert's adapter
(`load_lora_weights(..., load_into_transformer_2=True)`), and `experts` in export.json (its
boundary_ratio, which experts trained): `WanPipeline.from_pretrained(base, transformer=...,
transformer_2=...)` samples with them, switching at the base folder's boundary_ratio.

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
from typing import TYPE_CHECKING, Literal, cast

import torch

from fgrpo.run_folder import RunFolder

if TYPE_CHECKING:
    from diffusers import WanTransformer3DModel

Weights = Literal["ema", "model"]
ROTATION_RETRIES = 3  # times the newest checkpoint is looked up again after it went mid-read


class CheckpointRotated(RuntimeError):
    """The checkpoint went while it was read: a running job's rotation (checkpoint.keep_last)."""


def _find_checkpoint(folder: RunFolder, step: int | None) -> tuple[int, Path]:
    """The newest checkpoint its manifest vouches for (or `step`); skipped ones are said on stderr."""
    step, path, skipped = folder.usable_checkpoint(step)
    for note in skipped:
        print(f"fgrpo: {note}", file=sys.stderr)
    return step, path


def load_trained_transformer(run_dir: Path, step: int | None = None, weights: Weights = "ema"):
    """The run's transformer with its trained weights loaded (LoRA still attached, unmerged); for a
    two-expert model both experts as one `WanExperts` (fgrpo.models.wan.experts).

    Returns (transformer, recipe, step, weights actually used).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from fgrpo.distributed.precision import PrecisionPolicy
    from fgrpo.models.model_folder import model_folder
    from fgrpo.models.wan.experts import EXPERT_SUBFOLDERS, WanExperts, folder_boundary_ratio, trained_experts
    from fgrpo.models.wan.loading import load_transformer
    from fgrpo.models.wan.lora import add_lora

    folder = RunFolder(run_dir)
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', not {weights!r}")
    recipe = folder.read_recipe()  # FileNotFoundError when the folder has no recipe.json
    folder.usable_checkpoint(step)  # no checkpoint, or a damaged named one: said before the model is built
    base = model_folder(recipe.model)
    boundary = folder_boundary_ratio(base)
    trained = (0,) if boundary is None else trained_experts(recipe.lora.experts)

    def expert(e: int) -> torch.nn.Module:
        transformer = load_transformer(base, recipe.model.dtype, EXPERT_SUBFOLDERS[e])
        if e not in trained:  # a frozen expert: exported as loaded
            transformer.requires_grad_(False)
        elif recipe.lora.enabled:
            add_lora(transformer, recipe.lora.rank, recipe.lora.alpha, recipe.lora.target_modules)
            # Adapters in fp32, as trained (the merge into the base weights then rounds once).
            PrecisionPolicy.from_name(recipe.model.dtype).apply_storage(transformer)
        return transformer

    transformer = expert(0) if boundary is None else WanExperts(expert(0), expert(1), boundary)
    # What the run trained, named as its checkpoints name it: the adapters, or every weight (of the
    # trained experts: `transformer.<name>`, `transformer_2.<name>` for two).
    params = {n: p for n, p in transformer.named_parameters() if p.requires_grad}

    def read(ckpt: Path) -> Weights:
        """Load `ckpt`'s trained weights into `params`; returns which weights it had."""
        saved = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
        used: Weights = weights
        if used == "ema" and not any(k.startswith("ema.") for k in saved):
            warnings.warn(
                f"{ckpt} has no EMA weights (ema disabled in the recipe?); exporting the model weights instead",
                stacklevel=3,
            )
            used = "model"
        missing = [n for n in params if f"{used}.{n}" not in saved]
        if missing:
            raise RuntimeError(f"{ckpt} lacks {used} weights {missing[:5]}...: a checkpoint of another recipe?")
        # Full-shape tensors in the saved dtype (EMA is float32); DCP gathers every rank's shards into them.
        # A parameter's entry is a tensor's (the metadata's other kind is for pickled bytes).
        dtypes = {n: cast(TensorStorageMetadata, saved[f"{used}.{n}"]).properties.dtype for n in params}
        sd = {used: {n: torch.empty(p.shape, dtype=dtypes[n]) for n, p in params.items()}}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(sd, checkpoint_id=str(ckpt), no_dist=True)
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(sd[used][n])
        return used

    # A running job removes old checkpoints after each save (checkpoint.keep_last): the one being
    # read may go mid-read. Then the newest is found again; a step asked for by number is refused.
    for _ in range(ROTATION_RETRIES + 1):
        found, ckpt = _find_checkpoint(folder, step)
        try:
            return transformer.eval(), recipe, found, read(ckpt)
        except (Exception, CheckpointException) as e:  # DCP's error is a BaseException
            if ckpt.exists():
                raise
            note = (
                f"{ckpt} was removed while it was read: the running job rotates its checkpoints "
                f"(checkpoint.keep_last = {recipe.checkpoint.keep_last})"
            )
            if step is not None:
                raise CheckpointRotated(f"{note}; export a step it keeps, or the newest (no step)") from e
            print(f"fgrpo: {note}; reading the newest again", file=sys.stderr)
    raise CheckpointRotated(f"{run_dir}: the newest checkpoint was rotated away during {ROTATION_RETRIES + 1} reads")


def export_run(run_dir: Path, out_dir: Path, step: int | None = None, weights: Weights = "ema") -> Path:
    """Export checkpoint `step` (newest complete if None) of `run_dir` to `out_dir`; returns `out_dir`.

    `out_dir` may exist only if it is empty or a previous export (it is then replaced whole).
    """
    from diffusers import WanPipeline
    from peft import get_peft_model_state_dict

    from fgrpo.models.wan.experts import EXPERT_NAMES, EXPERT_SUBFOLDERS, WanExperts, experts_of

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "export.json").is_file():
        raise FileExistsError(f"{out_dir} exists and is not an fgrpo export; refusing to replace it")
    transformer, recipe, step, weights = load_trained_transformer(run_dir, step, weights)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the export is meant to be shared
    try:
        lora = recipe.lora
        experts = None  # two experts: the boundary and which trained (before merging drops the adapters)
        if isinstance(transformer, WanExperts):
            trained = [EXPERT_NAMES[e] for e in range(2) if transformer.trains(e)]
            experts = {"boundary_ratio": transformer.boundary_ratio, "trained": trained}
        for e, module in enumerate(experts_of(transformer)):
            expert = cast("WanTransformer3DModel", module)  # diffusers' PEFT integration and saving
            if lora.enabled and getattr(expert, "_hf_peft_config_loaded", False):
                # The adapter on its own, in diffusers' LoRA format. The metadata carries lora_alpha
                # (without it diffusers would assume alpha = rank and scale the update wrongly).
                WanPipeline.save_lora_weights(
                    tmp / ("lora" if e == 0 else f"lora_{e + 1}"),
                    # dict(): diffusers types this dict's values as modules or tensors (a dict is invariant).
                    transformer_lora_layers=dict(get_peft_model_state_dict(expert)),
                    transformer_lora_adapter_metadata=expert.peft_config["default"].to_dict(),
                )
                expert.fuse_lora()  # W += (alpha / r) B A, through peft's merge
                expert.unload_lora()  # drop the adapter modules, keep the merged base layers
            expert.save_pretrained(tmp / EXPERT_SUBFOLDERS[e])
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
        if experts is not None:
            info["experts"] = experts
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
