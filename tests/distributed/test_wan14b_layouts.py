"""Wan2.1-T2V-14B built on the meta device and parallelised for 8, 16 and 32 ranks with torch's
fake process-group backend (as torchtitan plans layouts): every parameter's shard has the shape the
layout implies, and no memory is allocated. Sequence-parallel layouts shard FSDP over dp_shard x sp
and give each block's self-attention the Ulysses processor.

Each case runs in a fresh subprocess: a process can hold one default process group at a time.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = r"""
import json, sys
import torch, torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.testing._internal.distributed.fake_pg import FakeStore
from diffusers import WanTransformer3DModel
from fgrpo.distributed.parallel_dims import ParallelDims
from fgrpo.distributed.precision import PrecisionPolicy
from fgrpo.models.wan.lora import add_lora
from fgrpo.models.wan.parallelize import parallelize_wan
from fgrpo.models.wan.presets import PRESETS

world, rep, shard, tp, sp, lora = (int(a) for a in sys.argv[1:7])


def report(rank):
    dims = ParallelDims.from_config(rep, shard, tp, world, sp=sp)
    dims.build_mesh("cpu")
    with torch.device("meta"):
        model = WanTransformer3DModel(**PRESETS["wan2.1-t2v-14b"].transformer_config())
    if lora:
        add_lora(model, 16, 32, ("to_q", "to_k", "to_v", "to_out.0"))
    else:
        model.requires_grad_(True)
    full = {n: tuple(p.shape) for n, p in model.named_parameters()}
    policy = PrecisionPolicy(torch.bfloat16)
    policy.apply_storage(model)
    parallelize_wan(model, dims, policy, activation_checkpointing=True)
    out = {"coord": dims.mesh.get_coordinate(), "params": {}, "heads": sorted({b.attn1.heads for b in model.blocks}),
           "processors": sorted({type(b.attn1.processor).__name__ for b in model.blocks}),
           "fsdp_mesh": list(dims.fsdp_mesh().shape)}
    for n, p in model.named_parameters():
        assert isinstance(p, DTensor), n
        out["params"][n] = [list(full[n]), list(p.to_local().shape), str(p.to_local().dtype),
                            str(p.to_local().device), p.requires_grad]
    print("RESULT" + json.dumps(out))


for rank in (0, world - 1):  # one default process group at a time
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    report(rank)
    dist.destroy_process_group()
"""

# (world, dp_replicate, dp_shard, tp, sp)
LAYOUTS = [(8, 1, 4, 2, 1), (8, 1, 1, 8, 1), (32, 2, 4, 4, 1), (8, 1, 2, 1, 4), (16, 2, 2, 2, 2)]


def tp_dim(name: str) -> int | None:
    """The dimension tensor parallelism shards (None: replicated), from the plan in tensor_parallel.py."""
    colwise = (
        any(f"{a}.{p}." in name for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v"))
        or "ffn.net.0.proj." in name
    )
    rowwise = any(f"{a}.to_out.0." in name for a in ("attn1", "attn2")) or "ffn.net.2." in name
    if ".norm_q." in name or ".norm_k." in name:
        return 0
    if ".lora_A." in name:
        return 1 if rowwise else None  # A shards its input on a row-wise layer
    if ".lora_B." in name:
        return 0 if colwise else None  # B shards its output on a column-wise layer
    if colwise:
        return 0
    if rowwise:
        return 1 if name.endswith("weight") else None  # the row-wise bias is added after the all-reduce
    return None


def expected_local(shape: list[int], name: str, tp: int, tp_rank: int, shard: int, shard_rank: int) -> list[int]:
    s = list(shape)
    d = tp_dim(name)
    if d is not None and tp > 1:
        assert s[d] % tp == 0, name
        s[d] //= tp
    # FSDP2 shards dim 0 as torch.chunk does: ceil(n / shard) rows per rank, the last ranks get the rest
    rows = -(-s[0] // shard)
    s[0] = max(0, min(rows, s[0] - shard_rank * rows))
    return s


def layout_id(layout) -> str:
    world, rep, shard, tp, sp = layout
    return f"world={world},dp_rep={rep},dp_shard={shard},tp={tp}" + (f",sp={sp}" if sp > 1 else "")


@pytest.mark.parametrize("lora", [1, 0], ids=["lora", "full"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=layout_id)
def test_14b_shards(layout, lora):
    world, rep, shard, tp, sp = layout
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, *(str(v) for v in (world, rep, shard, tp, sp, lora))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    results = [json.loads(line.removeprefix("RESULT")) for line in res.stdout.splitlines() if line.startswith("RESULT")]
    assert len(results) == 2  # ranks 0 and world - 1
    for out in results:
        _, shard_rank, sp_rank, tp_rank = out["coord"]
        assert out["heads"] == [40 // tp]
        assert out["processors"] == ["UlyssesWanAttnProcessor" if sp > 1 else "WanAttnProcessor"]
        # FSDP shards over dp_shard x sp (flattened; sp innermost), replicated over dp_replicate
        assert out["fsdp_mesh"] == ([rep] if rep > 1 else []) + [shard * sp]
        params = out["params"]
        total = sum(_numel(full) for full, *_ in params.values())
        assert 14.28e9 < total - (_lora_numel(params) if lora else 0) < 14.30e9
        for name, (full, local, dtype, device, trainable) in params.items():
            assert local == expected_local(full, name, tp, tp_rank, shard * sp, shard_rank * sp + sp_rank), name
            assert device == "meta", name  # planned without allocating
            kept_fp32 = any(k in name.split(".") for k in ("time_embedder", "scale_shift_table", "norm2"))
            assert dtype == ("torch.float32" if trainable or kept_fp32 else "torch.bfloat16"), name
            assert trainable == (("lora_" in name) if lora else True), name


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _lora_numel(params) -> int:
    return sum(_numel(full) for name, (full, *_) in params.items() if "lora_" in name)
