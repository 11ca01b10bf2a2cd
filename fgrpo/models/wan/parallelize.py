"""Parallelise the Wan transformer, torchtitan style: TP -> sequence parallel (Ulysses) ->
activation checkpointing -> regional compile -> FSDP2 per block, then the root. HSDP when dp_replicate > 1; with
sp > 1 FSDP2 shards over dp_shard x sp (fgrpo.distributed.parallel_dims).

FSDP2 is applied on every layout, a one-rank mesh included: it is what carries the precision
policy (fp32 masters, compute in the recipe dtype, fp32 reductions; see
fgrpo.distributed.precision), so one process computes what every rank of a larger layout computes.
The text encoder and VAE are not parallelised (they run without gradients; prompts are encoded
once at start and the encoder is freed, see fgrpo.models.wan.text_cache).
"""

from __future__ import annotations

import os
from pathlib import Path

from torch.distributed.fsdp import fully_shard

from fgrpo.distributed.parallel_dims import ParallelDims
from fgrpo.distributed.precision import PrecisionPolicy, keep_fp32_modules


def parallelize_wan(
    transformer, dims: ParallelDims, policy: PrecisionPolicy, activation_checkpointing: bool, compile: bool = False
) -> None:
    """In place, on real or meta parameters. Order matters: TP changes the blocks' modules and
    parameters (DTensors on the TP mesh) before FSDP2 shards every parameter over the dp mesh.
    Call `policy.apply_storage` first: FSDP2 keeps each parameter's storage dtype as its master.
    Sequence parallelism (dims.sp > 1) comes after TP: it splits each TP rank's heads further."""
    if dims.tp > 1:
        from .tensor_parallel import apply_tensor_parallel

        apply_tensor_parallel(transformer, dims.tp_mesh())
    if getattr(dims, "sp", 1) > 1:
        from .sequence_parallel import apply_sequence_parallel

        apply_sequence_parallel(transformer, dims.sp_mesh())
    if activation_checkpointing:
        # diffusers' own switch: recomputes each block in backward and keeps parameter names
        # unchanged (a checkpoint_wrapper would rename them and break checkpoint portability).
        transformer.enable_gradient_checkpointing()
    if compile:
        apply_compile(transformer)
    mesh = dims.fsdp_mesh()
    # Modules Wan keeps in fp32 (time embedder, affine norms) get FSDP groups of their own that
    # compute in fp32; FSDP2 also needs one master dtype per group among trainable parameters.
    for module in keep_fp32_modules(transformer):
        fully_shard(module, mesh=mesh, mp_policy=policy.fsdp(keep_fp32=True))
    for block in transformer.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy.fsdp())
    fully_shard(transformer, mesh=mesh, mp_policy=policy.fsdp())


def apply_compile(transformer) -> None:
    """Regional compilation, as torchtitan does it: `torch.compile` each transformer block in place
    (`nn.Module.compile`: parameter names, hence checkpoints, are unchanged), not the whole model.

    Why per block: Wan's blocks are identical, and dynamo treats their parameters as inputs
    (`inline_inbuilt_nn_modules`), so one compiled graph per input shape and grad mode serves all
    30 or 40 of them; compile time is a block's, not the model's. FSDP2's hooks run eagerly around
    the compiled region (`skip_fsdp_hooks`). `dynamic=False`: the rollout, the training pass and
    evaluation each have fixed shapes; the timestep and the SDE mask are tensor data, never guards,
    so steps after the first never recompile (tests/distributed/test_compile.py holds it to that).
    Activation checkpointing (diffusers' switch) wraps the compiled block and reruns it in backward.
    Self-attention gets a rotary embedding inductor vectorizes, bitwise diffusers' (fgrpo.models.wan.rotary).
    """
    from .rotary import use_vectorized_rope

    use_vectorized_rope(transformer)
    for block in transformer.blocks:
        block.compile(dynamic=False)


def compiled_graph_count() -> int:
    """Graphs dynamo has compiled in this process so far (recorded per step when compiling: a
    count that grows after the first step is a recompile)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def place_inductor_cache(runs_dir: str | os.PathLike) -> None:
    """Inductor's caches in `<runs_dir>/.cache/inductor`, beside the text encodings on the runs
    folder's filesystem: a requeued or resumed job, on whatever node, loads the compiled blocks
    instead of compiling again (torch's default is the node-local /tmp). A user's
    TORCHINDUCTOR_CACHE_DIR wins. Call it before anything imports torch._dynamo: that import
    fixes the folder (fgrpo.trainer.entry does, first thing after reading the recipe)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(runs_dir) / ".cache" / "inductor"))
