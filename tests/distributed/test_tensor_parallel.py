"""Tensor parallelism of the Wan transformer (fgrpo.models.wan.tensor_parallel), on CPU with gloo.

One spawn of 4 processes runs every scenario (importing torch + diffusers dominates the cost, so
one world is much faster than one per degree): tp=4 on a 1-D mesh of the 4 ranks, tp=2 on the
`tp` dimension of a (dp=2, tp=2) mesh (both dp replicas check themselves), and tp=3 on a mesh of
ranks 0-2. Each rank compares its TP model against an unsharded copy of the same seeded model
and writes its measurements to a JSON file that the tests below assert on.
"""

from __future__ import annotations

import copy
import json
import os
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import torch
import torch.distributed as dist

from tests.helpers.spawn import spawn_ranks
from tests.helpers.wan import wan_blocks

WORLD = 4
TOL = 1e-5
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
JOBS = [("plain", 2), ("plain", 4), ("lora", 2), ("lora", 4), ("naive", 2), ("naive", 4), ("bad_degree", 3)]


# ---------------------------------------------------------------- run inside the child processes


def _tiny_transformer(seed: int = 0, **config):
    """A 2-layer Wan transformer; `config` overrides its diffusers config (the image variant's
    channels and image attention: test_tensor_parallel_image.py)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    defaults = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=4,
        attention_head_dim=16,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=128,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    model = WanTransformer3DModel(**{**defaults, **config}).float()
    # Non-trivial norm weights: a q/k (or norm_added_k) weight sharded differently from the heads would show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.5 * torch.randn_like(p))
    return model


def _inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(2, 16, 2, 4, 4, generator=g),
        timestep=torch.tensor([480.0, 530.0]),
        encoder_hidden_states=torch.randn(2, 8, 32, generator=g),
    )


def _block_inputs(model, inputs, seed: int = 2) -> tuple:
    """Inputs of one block: tokens [2, 8, 64], text [2, 8, 64], temb [2, 6, 64], rotary embedding."""
    g = torch.Generator().manual_seed(seed)
    x, ctx = torch.randn(2, 8, 64, generator=g), torch.randn(2, 8, 64, generator=g)
    temb = 0.3 * torch.randn(2, 6, 64, generator=g)
    return x, ctx, temb, model.rope(inputs["hidden_states"])


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max())


def _grad_errors(tp_model, ref_model) -> dict:
    """Max |grad_tp - grad_ref| over sharded (DTensor) and replicated parameters, and their counts.

    A q/k norm whose all-reduce did not carry gradients would still give the right forward but
    gradients off by ~4e-4 here (checked when writing this test), so the gradient check matters.
    """
    from torch.distributed.tensor import DTensor

    ref = dict(ref_model.named_parameters())
    out = {"sharded": 0.0, "replicated": 0.0, "n_sharded": 0, "n_replicated": 0, "param": 0.0, "ref_max": 0.0}
    for name, p in tp_model.named_parameters():  # same order on every rank: collectives line up
        if p.grad is None:
            assert ref[name].grad is None, f"{name}: no TP grad but a reference grad"
            continue
        kind = "sharded" if isinstance(p, DTensor) else "replicated"
        assert isinstance(p.grad, DTensor) == (kind == "sharded"), name
        full = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
        out[kind] = max(out[kind], _max_err(full, ref[name].grad))
        out[f"n_{kind}"] += 1
        out["ref_max"] = max(out["ref_max"], float(ref[name].grad.abs().max()))
        out["param"] = max(out["param"], _max_err(p.full_tensor() if kind == "sharded" else p, ref[name]))
    return out


def _scenario_plain(mesh) -> dict:
    from torch.distributed.tensor import DTensor

    from fgrpo.models.wan.tensor_parallel import apply_tensor_parallel

    model = _tiny_transformer()
    ref = copy.deepcopy(model)
    apply_tensor_parallel(model, mesh)
    inputs = _inputs()
    blk_in = _block_inputs(ref, inputs)
    res: dict[str, Any] = {"block": _max_err(model.blocks[0](*blk_in), ref.blocks[0](*blk_in))}
    out, out_ref = model(**inputs).sample, ref(**inputs).sample
    res["model"], res["scale"] = _max_err(out, out_ref), float(out_ref.detach().abs().max())
    (out**2).mean().backward()
    (out_ref**2).mean().backward()
    res["grads"] = _grad_errors(model, ref)
    attn = wan_blocks(model)[0].attn1
    res["heads"], res["inner_dim"] = attn.heads, attn.inner_dim
    norm_q_weight = attn.norm_q.weight
    assert isinstance(norm_q_weight, DTensor), type(norm_q_weight)
    res["norm_q_placements"] = str(norm_q_weight.placements)
    res["norm_q_local_shape"] = list(norm_q_weight.to_local().shape)
    return res


def _scenario_lora(mesh) -> dict:
    from peft.tuners.lora import Linear as LoraLinear
    from torch.distributed.tensor import DTensor

    from fgrpo.models.wan.lora import add_lora
    from fgrpo.models.wan.tensor_parallel import apply_tensor_parallel

    model = _tiny_transformer()
    add_lora(model, rank=4, alpha=8.0, target_modules=LORA_TARGETS)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # peft initialises lora_B to zero: make LoRA change the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    ref = copy.deepcopy(model)
    apply_tensor_parallel(model, mesh)
    inputs = _inputs()
    out, out_ref = model(**inputs).sample, ref(**inputs).sample
    with torch.no_grad():
        ref.disable_adapters()
        no_lora = ref(**inputs).sample
        ref.enable_adapters()
    (out**2).mean().backward()
    (out_ref**2).mean().backward()
    a1, a2 = wan_blocks(model)[0].attn1, wan_blocks(model)[0].attn2
    q, out_proj = cast(LoraLinear, a1.to_q), cast(LoraLinear, a2.to_out[0])  # add_lora replaced them
    is_dt = lambda m: isinstance(m.weight, DTensor)  # noqa: E731
    return {
        "model": _max_err(out, out_ref),
        "lora_effect": _max_err(out_ref, no_lora),
        "grads": _grad_errors(model, ref),
        "layout": {
            "q.base": is_dt(q.base_layer),
            "q.A": is_dt(q.lora_A["default"]),
            "q.B": is_dt(q.lora_B["default"]),
            "out.base": is_dt(out_proj.base_layer),
            "out.A": is_dt(out_proj.lora_A["default"]),
            "out.B": is_dt(out_proj.lora_B["default"]),
        },
    }


def _scenario_naive(mesh) -> dict:
    """What a plain colwise/rowwise plan gives, and what a wrongly sharded norm weight gives."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

    from fgrpo.models.wan.tensor_parallel import apply_tensor_parallel

    tp, inputs = mesh.size(), _inputs()
    naive = _tiny_transformer()
    out_ref = naive(**inputs).sample
    col, row = ColwiseParallel, RowwiseParallel
    plan: dict[str, ParallelStyle] = {f"attn{i}.{p}": col() for i in (1, 2) for p in ("to_q", "to_k", "to_v")}
    plan.update({"attn1.to_out.0": row(), "attn2.to_out.0": row(), "ffn.net.0.proj": col(), "ffn.net.2": row()})
    for block in wan_blocks(naive):
        parallelize_module(block, mesh, plan)
        for attn in (block.attn1, block.attn2):
            attn.heads //= tp
            for norm_name in ("norm_q", "norm_k"):  # per-rank RMSNorm over the local heads only
                full = getattr(attn, norm_name)
                local = torch.nn.RMSNorm(full.normalized_shape[0] // tp, eps=full.eps)
                local.weight.data.copy_(full.weight.data.chunk(tp)[mesh.get_local_rank()])
                setattr(attn, norm_name, local)
    res = {"naive": _max_err(naive(**inputs).sample, out_ref)}

    wrong = _tiny_transformer()
    apply_tensor_parallel(wrong, mesh)
    with torch.no_grad():  # every rank uses the first shard of the norm weight
        for m in wrong.modules():
            if type(m).__name__ == "HeadShardedRMSNorm":
                weight = m.weight
                assert isinstance(weight, DTensor), type(weight)
                weight.to_local().copy_(weight.full_tensor().chunk(tp)[0])
    res["wrong_norm_shard"] = _max_err(wrong(**inputs).sample, out_ref)
    return res


def _scenario_bad_degree(mesh) -> dict:
    from fgrpo.models.wan.tensor_parallel import apply_tensor_parallel

    model = _tiny_transformer()
    try:
        apply_tensor_parallel(model, mesh)
    except ValueError as e:
        return {"raised": "ValueError", "message": str(e), "heads_untouched": wan_blocks(model)[0].attn1.heads}
    return {"raised": None}


def _mesh(tp: int):
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

    if tp == WORLD:
        return init_device_mesh("cpu", (tp,), mesh_dim_names=("tp",))
    if WORLD % tp == 0:
        return init_device_mesh("cpu", (WORLD // tp, tp), mesh_dim_names=("dp", "tp"))["tp"]
    return DeviceMesh("cpu", list(range(tp)), mesh_dim_names=("tp",))  # ranks >= tp are outside it


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120))
    results = {}
    try:
        scenarios = {
            "plain": _scenario_plain,
            "lora": _scenario_lora,
            "naive": _scenario_naive,
            "bad_degree": _scenario_bad_degree,
        }
        for scenario, tp in JOBS:
            mesh = _mesh(tp)  # every rank creates every mesh (group creation is collective)
            if rank >= tp * (WORLD // tp):
                continue
            try:
                results[f"{scenario}/tp{tp}"] = scenarios[scenario](mesh)
            except Exception:  # noqa: BLE001 - reported to the parent, which fails the test
                results[f"{scenario}/tp{tp}"] = {"error": traceback.format_exc()}
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()


# ---------------------------------------------------------------- parent side


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("tp")
    return spawn_ranks(_worker, WORLD, out_dir, "tensor-parallel", timeout_s=300)


def _per_rank(results, key):
    got = [r[key] for r in results if key in r]
    assert got, f"no rank reported {key}"
    for r in got:
        assert "error" not in r, r["error"]
    return got


@pytest.mark.parametrize("tp", [2, 4])
def test_forward_matches_unsharded(results, tp):
    for r in _per_rank(results, f"plain/tp{tp}"):
        assert r["block"] < TOL and r["model"] < TOL, r
        assert r["scale"] > 0.1  # the comparison is not between two near-zero outputs
        assert (r["heads"], r["inner_dim"]) == (4 // tp, 64 // tp)
        assert r["norm_q_placements"] == "(Shard(dim=0),)" and r["norm_q_local_shape"] == [64 // tp]


@pytest.mark.parametrize("tp", [2, 4])
def test_gradients_match_unsharded(results, tp):
    for r in _per_rank(results, f"plain/tp{tp}"):
        g = r["grads"]
        # per block: q/k/v/out of two attentions (w+b), 4 q/k norms, ffn (w+b) x2 -> 24 DTensors
        assert g["n_sharded"] == 2 * 24 and g["n_replicated"] > 10, g
        tol = min(TOL, 1e-4 * g["ref_max"])  # gradients are ~1e-2: also a relative bound
        assert g["sharded"] < tol and g["replicated"] < tol and g["param"] == 0.0, g


@pytest.mark.parametrize("tp", [2, 4])
def test_lora_forward_and_grads_match_unsharded(results, tp):
    for r in _per_rank(results, f"lora/tp{tp}"):
        assert r["lora_effect"] > 1e-2, r  # LoRA is not a no-op
        assert r["model"] < TOL, r
        g = r["grads"]
        # only LoRA trains: 2 blocks x 2 attentions x 4 targets x (A, B); sharded: B of q/k/v, A of out
        assert g["n_sharded"] + g["n_replicated"] == 32 and g["n_sharded"] == 16, g
        tol = min(TOL, 1e-4 * g["ref_max"])
        assert g["sharded"] < tol and g["replicated"] < tol, g
        assert r["layout"] == {
            "q.base": True,
            "q.A": False,
            "q.B": True,
            "out.base": True,
            "out.A": True,
            "out.B": False,
        }


@pytest.mark.parametrize("tp", [2, 4])
def test_naive_plan_is_wrong(results, tp):
    """The check above can fail: a plan without the across-head norm, or a misplaced weight, is off."""
    for r in _per_rank(results, f"naive/tp{tp}"):
        assert r["naive"] > 1e-3 and r["wrong_norm_shard"] > 1e-3, r


def test_degree_not_dividing_heads_is_refused(results):
    got = _per_rank(results, "bad_degree/tp3")
    assert len(got) == 3
    for r in got:
        assert r["raised"] == "ValueError", r
        assert "parallelism.tp=3" in r["message"] and "(4)" in r["message"], r
        assert r["heads_untouched"] == 4
