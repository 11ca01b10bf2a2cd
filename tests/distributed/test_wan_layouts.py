"""The real Wan architectures built on the meta device and parallelised with torch's fake
process-group backend (as torchtitan plans layouts): every parameter's shard has the shape the
layout implies, and no memory is allocated. Sequence-parallel layouts shard FSDP over dp_shard x sp
and give each block's self-attention the Ulysses processor.

- Wan2.1-T2V-14B at 8, 16 and 32 ranks (`LAYOUTS`), one tuning per layout (LoRA or full
  fine-tuning, alternating, so that both run on a TP layout and on an SP layout).
- Wan2.2-TI2V-5B, Wan2.2-T2V-A14B and I2V-A14B (two experts), Wan2.1-I2V-14B-480P/720P (CLIP image
  cross-attention: `attn2.add_k_proj` / `add_v_proj` / `norm_added_k`, the image embedder) at 8
  ranks (`PRESET_CASES`): the layouts their recipes launch, and one with tp > 1 each, so the TP
  plans of the image projections are checked. Two experts are built and parallelised each on its
  own, as `fgrpo.trainer.policy.build_transformer` does (`prepare_on_meta`, the expert lora.experts
  leaves out frozen), and checked as the one `WanExperts` module the trainer holds.

Every parameter's full shape comes from the preset's numbers (`expected_full_shapes`), its local
shard from the layout (`expected_local`). Each test runs in a fresh subprocess (a preset's layouts in
one, sharing its imports), which creates and destroys each rank's default process group in turn: a
process can hold one at a time.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from fgrpo.models.wan.presets import PRESETS, WanPreset
from tests.conftest import REPO

LORA_RANK = 16
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # LoraConfig's default target_modules

SCRIPT = r"""
import json, sys
import torch, torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.testing._internal.distributed.fake_pg import FakeStore
from fgrpo.distributed.parallel_dims import ParallelDims
from fgrpo.distributed.precision import PrecisionPolicy
from fgrpo.models.wan.experts import WanExperts, experts_of, trained_experts
from fgrpo.models.wan.presets import PRESETS
from fgrpo.models.wan.sharded_loading import meta_transformer, prepare_on_meta

name, cases = sys.argv[1], json.loads(sys.argv[2])  # cases: [world, rep, shard, tp, sp, lora_rank, experts]
targets = tuple(sys.argv[3].split(","))
preset = PRESETS[name]


def report(case, world, rep, shard, tp, sp, lora_rank, experts_setting):
    dims = ParallelDims.from_config(rep, shard, tp, world, sp=sp)
    dims.build_mesh("cpu")
    policy = PrecisionPolicy(torch.bfloat16)
    # As build_transformer: each expert built on meta and prepared on its own; the untrained one frozen.
    trained = (0,) if preset.experts == 1 else trained_experts(experts_setting)
    built = [
        prepare_on_meta(
            meta_transformer(preset.transformer_config()),
            dims,
            policy,
            (lora_rank, 2.0 * lora_rank, targets) if lora_rank else None,
            activation_checkpointing=True,
            trainable=e in trained,
        )
        for e in range(preset.experts)
    ]
    model = built[0] if preset.experts == 1 else WanExperts(*built, preset.boundary_ratio)
    blocks = [b for m in experts_of(model) for b in m.blocks]
    out = {"case": case, "coord": dims.mesh.get_coordinate(), "params": {},
           "heads": sorted({a.heads for b in blocks for a in (b.attn1, b.attn2)}),
           "processors": sorted({type(b.attn1.processor).__name__ for b in blocks}),
           "fsdp_roots": [isinstance(m, FSDPModule) for m in experts_of(model)],
           "fsdp_mesh": list(dims.fsdp_mesh().shape)}
    for n, p in model.named_parameters():
        assert isinstance(p, DTensor), n
        local = p.to_local()
        out["params"][n] = [list(p.shape), list(local.shape), str(local.dtype), str(local.device), p.requires_grad]
    print("RESULT" + json.dumps(out))


for case, (world, *layout) in enumerate(cases):
    for rank in (0, world - 1):  # one default process group at a time
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
        report(case, world, *layout)
        dist.destroy_process_group()
"""

# ((world, dp_replicate, dp_shard, tp, sp), LoRA). One tuning per layout keeps the suite within 45
# minutes: LoRA on dp_shard=4 x tp=2 and full on tp=8 (both tunings under TP), full on sp=4 and LoRA
# on tp=2 x sp=2 (both under SP), LoRA on the 32-rank HSDP x TP layout.
LAYOUTS = [
    ((8, 1, 4, 2, 1), True),
    ((8, 1, 1, 8, 1), False),
    ((32, 2, 4, 4, 1), True),
    ((8, 1, 2, 1, 4), False),
    ((16, 2, 2, 2, 2), True),
]
# preset: its (layout, LoRA, lora.experts) at 8 ranks, all in one subprocess: its recipe's layout and
# training (recipes/wan2_2_*.py, recipes/wan2_1_i2v_14b_*.py: dp_shard inferred as 8, or sp=4 with
# lora.experts=high for A14B), and dp_shard=2 x tp=4 trained otherwise (full, or other experts).
# 480P and 720P are one architecture: 720P, whose recipe advises tp and sp, takes tp=4 and tp=2 x sp=2.
PRESET_CASES: dict[str, list[tuple[tuple[int, ...], bool, str]]] = {
    "wan2.2-ti2v-5b": [((8, 1, 8, 1, 1), True, "both"), ((8, 1, 2, 4, 1), False, "both")],
    "wan2.2-t2v-a14b": [((8, 1, 2, 1, 4), True, "high"), ((8, 1, 2, 4, 1), True, "both")],
    "wan2.2-i2v-a14b": [((8, 1, 2, 1, 4), True, "high"), ((8, 1, 2, 4, 1), False, "low")],
    "wan2.1-i2v-14b-480p": [((8, 1, 8, 1, 1), True, "both")],
    "wan2.1-i2v-14b-720p": [((8, 1, 2, 4, 1), False, "both"), ((8, 1, 2, 2, 2), True, "both")],
}
# diffusers' WanTransformer3DModel._keep_in_fp32_modules (its FP32LayerNorms, the image embedder's too)
KEPT_FP32 = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")


def _linear(out_features: int, in_features: int, prefix: str) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out_features, in_features), f"{prefix}.bias": (out_features,)}


def block_shapes(p: WanPreset) -> dict[str, tuple[int, ...]]:
    """A block's parameters (diffusers' WanTransformerBlock) from the preset: width d = heads x head_dim."""
    d = p.width
    shapes: dict[str, tuple[int, ...]] = {"scale_shift_table": (1, 6, d), "norm2.weight": (d,), "norm2.bias": (d,)}
    for attn in ("attn1", "attn2"):
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            shapes |= _linear(d, d, f"{attn}.{proj}")
        shapes |= {f"{attn}.norm_q.weight": (d,), f"{attn}.norm_k.weight": (d,)}
    if p.added_kv_proj_dim:  # Wan2.1 I2V's image cross-attention: key/value over the CLIP tokens
        for proj in ("add_k_proj", "add_v_proj"):
            shapes |= _linear(d, p.added_kv_proj_dim, f"attn2.{proj}")
        shapes["attn2.norm_added_k.weight"] = (d,)
    return shapes | _linear(p.ffn_dim, d, "ffn.net.0.proj") | _linear(d, p.ffn_dim, "ffn.net.2")


def model_shapes(p: WanPreset) -> dict[str, tuple[int, ...]]:
    """Every parameter of one transformer (diffusers' WanTransformer3DModel) from the preset's numbers."""
    d, cin, cout = p.width, p.in_channels or p.latent_channels, p.latent_channels * math.prod(p.patch)
    c = "condition_embedder"
    shapes = {
        "patch_embedding.weight": (d, cin, *p.patch),
        "patch_embedding.bias": (d,),
        "scale_shift_table": (1, 2, d),
    }
    shapes |= _linear(d, p.freq_dim, f"{c}.time_embedder.linear_1") | _linear(d, d, f"{c}.time_embedder.linear_2")
    shapes |= _linear(6 * d, d, f"{c}.time_proj")
    shapes |= _linear(d, p.text_dim, f"{c}.text_embedder.linear_1") | _linear(d, d, f"{c}.text_embedder.linear_2")
    if p.image_dim:  # WanImageEmbedding: LayerNorm, a 2-layer FFN (image_dim -> image_dim -> d), LayerNorm
        i, e = p.image_dim, f"{c}.image_embedder"
        shapes |= {
            f"{e}.norm1.weight": (i,),
            f"{e}.norm1.bias": (i,),
            f"{e}.norm2.weight": (d,),
            f"{e}.norm2.bias": (d,),
        }
        shapes |= _linear(i, i, f"{e}.ff.net.0.proj") | _linear(d, i, f"{e}.ff.net.2")
    shapes |= _linear(cout, d, "proj_out")
    block = block_shapes(p)
    for layer in range(p.num_layers):
        shapes |= {f"blocks.{layer}.{k}": v for k, v in block.items()}
    return shapes


def with_lora(shapes: dict[str, tuple[int, ...]], rank: int, targets: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """peft's names and shapes for LoRA on the linears named by `targets` (suffixes): W moves to
    `base_layer`, A is [rank, in], B is [out, rank]."""
    out = dict(shapes)
    for name, shape in shapes.items():
        linear = name.removesuffix(".weight")
        if name.endswith(".weight") and any(linear.endswith(f".{t}") for t in targets):
            for part in ("weight", "bias"):
                out[f"{linear}.base_layer.{part}"] = out.pop(f"{linear}.{part}")
            out[f"{linear}.lora_A.default.weight"] = (rank, shape[1])
            out[f"{linear}.lora_B.default.weight"] = (shape[0], rank)
    return out


def expected_full_shapes(name: str, lora_rank: int, trained: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Every parameter of the preset's model as the trainer holds it: one transformer, or two experts
    (`transformer.` and `transformer_2.`, LoRA only on the trained ones)."""
    preset = PRESETS[name]
    shapes = []
    for e in range(preset.experts):
        one = model_shapes(preset)
        shapes.append(with_lora(one, lora_rank, LORA_TARGETS) if lora_rank and e in trained else one)
    if preset.experts == 1:
        return shapes[0]
    return {f"{prefix}.{n}": s for prefix, one in zip(("transformer", "transformer_2"), shapes) for n, s in one.items()}


def tp_dim(name: str) -> int | None:
    """The dimension tensor parallelism shards (None: replicated), from the plan in tensor_parallel.py."""
    colwise = (
        any(f"{a}.{p}." in name for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v"))
        or any(f"attn2.{p}." in name for p in ("add_k_proj", "add_v_proj"))  # image keys/values: by heads
        or "ffn.net.0.proj." in name
    )
    rowwise = any(f"{a}.to_out.0." in name for a in ("attn1", "attn2")) or "ffn.net.2." in name
    if any(f".{n}." in name for n in ("norm_q", "norm_k", "norm_added_k")):
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


def expert_of(name: str) -> int:
    return 1 if name.startswith("transformer_2.") else 0


def check_layouts(name: str, cases: list[tuple[tuple[int, ...], bool, str]]) -> None:
    """Parallelise the preset's model on each (layout, LoRA, lora.experts) of `cases`, in one
    subprocess (one import), on ranks 0 and world - 1 each; check every shard."""
    preset = PRESETS[name]
    runs = [[*layout, LORA_RANK if lora else 0, experts] for layout, lora, experts in cases]
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, name, json.dumps(runs), ",".join(LORA_TARGETS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    results = [json.loads(line.removeprefix("RESULT")) for line in res.stdout.splitlines() if line.startswith("RESULT")]
    assert [out["case"] for out in results] == [c for c in range(len(cases)) for _ in range(2)]  # ranks 0, world - 1
    for out in results:
        (world, rep, shard, tp, sp), lora, experts = cases[out["case"]]
        where = f"{name} {layout_id((world, rep, shard, tp, sp))} lora={lora} experts={experts}"
        trained = (0,) if preset.experts == 1 else {"high": (0,), "low": (1,), "both": (0, 1)}[experts]
        expected = expected_full_shapes(name, LORA_RANK if lora else 0, trained)
        _, shard_rank, sp_rank, tp_rank = out["coord"]
        assert out["heads"] == [preset.num_heads // tp], where  # attn1 and attn2 of every block of every expert
        assert out["processors"] == ["UlyssesWanAttnProcessor" if sp > 1 else "WanAttnProcessor"], where
        assert out["fsdp_roots"] == [True] * preset.experts, where  # each expert its own FSDP2 root
        # FSDP shards over dp_shard x sp (flattened; sp innermost), replicated over dp_replicate
        assert out["fsdp_mesh"] == ([rep] if rep > 1 else []) + [shard * sp], where
        params = out["params"]
        assert sorted(params) == sorted(expected), where  # no parameter missing or unexpected
        for n, (full, local, dtype, device, trainable) in params.items():
            at = f"{where} rank {out['coord']}: {n}"
            assert tuple(full) == expected[n], at
            assert local == expected_local(full, n, tp, tp_rank, shard * sp, shard_rank * sp + sp_rank), at
            assert device == "meta", at  # planned without allocating
            assert trainable == (expert_of(n) in trained and ("lora_" in n if lora else True)), at
            kept_fp32 = any(k in n.split(".") for k in KEPT_FP32)
            assert dtype == ("torch.float32" if trainable or kept_fp32 else "torch.bfloat16"), at


def layout_id(layout) -> str:
    world, rep, shard, tp, sp = layout
    return f"world={world},dp_rep={rep},dp_shard={shard},tp={tp}" + (f",sp={sp}" if sp > 1 else "")


@pytest.mark.parametrize(
    ("layout", "lora"), LAYOUTS, ids=[f"{layout_id(layout)}-{'lora' if lora else 'full'}" for layout, lora in LAYOUTS]
)
def test_14b_shards(layout, lora):
    check_layouts("wan2.1-t2v-14b", [(layout, lora, "both")])


@pytest.mark.parametrize("name", sorted(PRESET_CASES))
def test_preset_shards(name):
    check_layouts(name, PRESET_CASES[name])
