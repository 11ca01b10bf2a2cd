"""Load the Wan transformer so that no rank ever holds the whole model: build on the meta device,
parallelise, allocate each rank's shards, then read only those shards from the diffusers
safetensors (torchtitan's recipe).

    transformer = build_on_meta(folder)            # no memory: shapes only
    prepare_on_meta(transformer, dims, policy, lora, ac)  # LoRA, storage dtypes, TP + FSDP2 on meta
    materialize(transformer, folder, device, seed)   # allocate shards, read them, init LoRA

Reading uses torch.distributed.checkpoint's `HuggingFaceStorageReader`: every rank asks for the
slices of each tensor it holds (safetensors `get_slice`, memory-mapped), so a rank at dp_shard=N
reads and keeps about 1/N of the weights. The alternative, rank 0 reading everything and
broadcasting (`set_model_state_dict(broadcast_from_rank0=True)`), peaks at the full model on rank 0.
Stored fp32 or bf16 weights are cast to each parameter's storage dtype on copy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader

if TYPE_CHECKING:
    from diffusers import WanTransformer3DModel

LORA_PARTS = (".lora_A.", ".lora_B.")


def build_on_meta(folder: str | Path, subfolder: str = "transformer") -> WanTransformer3DModel:
    """The transformer of a diffusers folder (or its `transformer_2`: Wan2.2 A14B's low-noise expert),
    built from its config on the meta device."""
    from diffusers import WanTransformer3DModel

    # cast: diffusers annotates load_config as a tuple, but it returns the dict alone without return_* flags
    config = WanTransformer3DModel.load_config(Path(folder), subfolder=subfolder, local_files_only=True)
    return meta_transformer(cast(dict[str, Any], config))


def meta_transformer(config: dict) -> WanTransformer3DModel:
    """A `WanTransformer3DModel` built from its config (a folder's or a preset's) on the meta device."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):  # cast: without return_unused_kwargs, from_config returns the model alone
        return cast(WanTransformer3DModel, WanTransformer3DModel.from_config(config))


def prepare_on_meta(
    transformer,
    dims,
    precision,
    lora: tuple[int, float, tuple[str, ...]] | None,
    activation_checkpointing: bool,
    compile: bool = False,
    trainable: bool = True,
):
    """What every rank does to the meta-device transformer before reading its shards (the trainer,
    the capacity planner and the layout tests share it): LoRA `(rank, alpha, target_modules)`
    attached, or every weight trainable when `lora` is None, or nothing trainable when not `trainable`
    (a frozen expert: lora.experts); storage dtypes from the precision
    policy; TP -> activation checkpointing -> regional compile -> FSDP2 (`parallelize_wan`; the
    capacity planner leaves `compile` off: it runs on fake tensors). Allocates nothing.
    Returns the transformer."""
    from .lora import add_lora
    from .parallelize import parallelize_wan

    if not trainable:
        transformer.requires_grad_(False)
    elif lora is not None:
        add_lora(transformer, *lora)
    else:
        transformer.requires_grad_(True)
    precision.apply_storage(transformer)
    parallelize_wan(transformer, dims, precision, activation_checkpointing, compile)
    return transformer


def checkpoint_key(param_name: str) -> str:
    """A parameter's key in the diffusers safetensors: peft inserts `.base_layer` into wrapped layers."""
    return param_name.replace(".base_layer.", ".")


def is_lora(param_name: str) -> bool:
    return any(part in param_name for part in LORA_PARTS)


def recompute_rope(transformer) -> None:
    """Wan's rotary tables are non-persistent buffers: garbage after `to_empty`, absent from files."""
    rope = transformer.rope
    fresh = type(rope)(rope.attention_head_dim, rope.patch_size, rope.max_seq_len)
    for name, buf in fresh.named_buffers():
        getattr(rope, name).copy_(buf)


def lora_init_tensors(transformer, seed: int) -> dict[str, torch.Tensor]:
    """Full-shape initial adapter weights, identical on every rank and layout: peft's default
    (A ~ kaiming-uniform(a=√5) = U(±1/√fan_in), B = 0), drawn from one seeded generator in
    parameter order, so placement never changes the initial adapter."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in transformer.named_parameters():
        if not is_lora(name):
            continue
        if ".lora_A." in name:
            bound = 1.0 / math.sqrt(p.shape[1])
            out[name] = torch.empty(p.shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen)
        else:
            out[name] = torch.zeros(p.shape, dtype=torch.float32)
    return out


def materialize(
    transformer, folder: str | Path, device: torch.device, lora_seed: int = 0, subfolder: str = "transformer"
) -> None:
    """Allocate this rank's shards on `device`, fill them from `folder/<subfolder>/*.safetensors`,
    initialise LoRA adapters (if any) and recompute the rotary tables. Collective (every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    transformer.to_empty(device=device)
    params = dict(transformer.named_parameters())
    base = {checkpoint_key(n): p for n, p in params.items() if not is_lora(n)}
    reader = HuggingFaceStorageReader(str(Path(folder) / subfolder))
    stored = set(reader.read_metadata().state_dict_metadata)
    missing = sorted(set(base) - stored)
    if missing:
        raise RuntimeError(f"{folder}/{subfolder} lacks weights {missing[:5]}: not a {type(transformer).__name__}?")
    with torch.no_grad():
        dcp.load(base, storage_reader=reader)
        recompute_rope(transformer)
    lora = lora_init_tensors(transformer, lora_seed)
    if lora:
        # cast: torch wants a dict of its state-dict value union (dicts are invariant); tensors are one member
        state = cast(dict[str, Any], lora)
        set_model_state_dict(transformer, state, options=StateDictOptions(full_state_dict=True, strict=False))
