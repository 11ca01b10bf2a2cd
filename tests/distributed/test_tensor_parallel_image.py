"""Tensor parallelism of Wan2.1 I2V's image cross-attention (fgrpo.models.wan.tensor_parallel), on
CPU with gloo: 2 ranks, tp=2, in float32. The TP model (its `attn2.add_k_proj` / `add_v_proj`
column-wise, `norm_added_k` head-sharded) must give the unsharded model's output and gradients; its
image attention is checked to matter (zeroing the image tokens changes the output), so a plan that
dropped it would fail too. tests/distributed/test_tensor_parallel.py covers the text-only blocks.
"""

from __future__ import annotations

import copy
import json
import os
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from tests.distributed.test_tensor_parallel import _grad_errors, _max_err, _tiny_transformer
from tests.helpers.spawn import spawn_ranks

WORLD = TP = 2
TOL = 1e-5
TEXT_TOKENS, IMAGE_TOKENS, IMAGE_DIM = 512, 6, 24  # diffusers' processor takes the last 512 as text


def _image_transformer(seed: int = 0):
    """test_tensor_parallel.py's transformer with Wan2.1 I2V's 36 input channels and image attention."""
    return _tiny_transformer(seed, in_channels=36, image_dim=IMAGE_DIM, added_kv_proj_dim=64)


def _inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(2, 36, 2, 4, 4, generator=g),
        timestep=torch.tensor([480.0, 530.0]),
        encoder_hidden_states=torch.randn(2, TEXT_TOKENS, 32, generator=g),
        encoder_hidden_states_image=torch.randn(2, IMAGE_TOKENS, IMAGE_DIM, generator=g),
    )


def _compare(mesh) -> dict:
    from torch.distributed.tensor import DTensor

    from fgrpo.models.wan.tensor_parallel import HeadShardedRMSNorm, apply_tensor_parallel

    model = _image_transformer()
    ref = copy.deepcopy(model)
    apply_tensor_parallel(model, mesh)
    inputs = _inputs()
    out, out_ref = model(**inputs).sample, ref(**inputs).sample
    no_image = dict(inputs, encoder_hidden_states_image=torch.zeros_like(inputs["encoder_hidden_states_image"]))
    with torch.no_grad():
        image_effect = _max_err(ref(**no_image).sample, out_ref)
    res: dict[str, Any] = {"model": _max_err(out, out_ref), "scale": float(out_ref.detach().abs().max())}
    res["image_effect"] = image_effect
    (out**2).mean().backward()
    (out_ref**2).mean().backward()
    res["grads"] = _grad_errors(model, ref)
    params = dict(model.named_parameters())
    res["add_k_sharded"] = all(
        isinstance(params[f"blocks.0.attn2.{p}.weight"], DTensor) for p in ("add_k_proj", "add_v_proj")
    )
    res["norm_added_k"] = isinstance(model.get_submodule("blocks.0.attn2.norm_added_k"), HeadShardedRMSNorm)
    return res


def _worker(rank: int, port: int, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120))
    try:
        result = _compare(init_device_mesh("cpu", (TP,), mesh_dim_names=("tp",)))
    except Exception:  # noqa: BLE001 - reported to the parent, which fails the test
        result = {"error": traceback.format_exc()}
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    return spawn_ranks(_worker, WORLD, tmp_path_factory.mktemp("tp-image"), "image tensor-parallel", timeout_s=300)


def test_image_attention_matches_unsharded(results):
    for r in results:
        assert "error" not in r, r["error"]
        assert r["add_k_sharded"] and r["norm_added_k"], r
        assert r["scale"] > 0.1 and r["image_effect"] > 1e-2, r  # the image tokens matter to the output
        assert r["model"] < TOL, r
        g = r["grads"]
        # per block: the text-only 24 DTensors + add_k/add_v (w+b) + norm_added_k -> 29
        assert g["n_sharded"] == 2 * 29, g
        tol = min(TOL, 1e-4 * g["ref_max"])
        assert g["sharded"] < tol and g["replicated"] < tol and g["param"] == 0.0, g
