"""Parallelise the Wan transformer, torchtitan style: per block TP -> activation checkpointing ->
FSDP2, then the root. HSDP when dp_replicate > 1.

The text encoder and VAE are not parallelised: they run once per rollout batch without gradients
and are replicated on every rank (UMT5-XXL is ~11 GB in bf16; sharding it would make every rank
wait on every other rank's prompts for a few percent of the step time).
"""

from __future__ import annotations

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from fgrpo.trainer.parallel_dims import ParallelDims


def mixed_precision(device_type: str, dtype: torch.dtype) -> MixedPrecisionPolicy:
    """bf16 compute with fp32 gradient reductions on GPU; plain fp32 on CPU (gloo)."""
    if device_type == "cpu" or dtype == torch.float32:
        return MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def parallelize_wan(transformer, dims: ParallelDims, device_type: str, activation_checkpointing: bool,
                    dtype: torch.dtype) -> None:
    """In place. Order matters: TP changes the blocks' modules and parameters (DTensors on the TP
    mesh) before FSDP2 shards every parameter over the data-parallel mesh."""
    if dims.tp > 1:
        from .tensor_parallel import apply_tensor_parallel

        apply_tensor_parallel(transformer, dims.tp_mesh())
    if activation_checkpointing:
        # diffusers' own switch: recomputes each block in backward and keeps parameter names
        # unchanged (a checkpoint_wrapper would rename them and break checkpoint portability).
        transformer.enable_gradient_checkpointing()
    if dims.dp > 1:
        mesh = dims.fsdp_mesh()
        mp = mixed_precision(device_type, dtype)
        # Modules Wan keeps in fp32 (time embedder, norms) get their own fp32 FSDP group.
        fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
        # (`scale_shift_table`, a bare parameter of each block, is cast with its block; Wan adds it to
        # the fp32 time embedding, so only its storage is rounded.)
        fp32_modules = [transformer.condition_embedder.time_embedder]
        fp32_modules += [block.norm2 for block in transformer.blocks]
        for module in fp32_modules:
            if any(True for _ in module.parameters()):
                fully_shard(module, mesh=mesh, mp_policy=fp32)
        for block in transformer.blocks:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(transformer, mesh=mesh, mp_policy=mp)
