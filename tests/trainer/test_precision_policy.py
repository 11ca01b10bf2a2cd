"""The precision policy on one process in bf16 (what a GPU runs): storage, compute and gradient
dtypes of every kind of parameter, and the dtype each module is fed."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.distributed.tensor import DTensor

from fgrpo.trainer.rollout import velocity
from tests.helpers.recipes import small_recipe
from tests.helpers.wan import wan_blocks, wan_transformer

R = dataclasses.replace


def bf16_trainer(tiny_model_dir, tmp_path, lora: bool):
    from fgrpo.trainer.trainer import Trainer

    r = small_recipe(tiny_model_dir, max_steps=1)
    r = R(r, model=R(r.model, dtype="bfloat16"), lora=R(r.lora, enabled=lora))
    return Trainer(r, tmp_path / "run")


def local(p):
    return p.to_local() if isinstance(p, DTensor) else p


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_storage_compute_and_gradient_dtypes(tiny_model_dir, tmp_path, lora):
    t = bf16_trainer(tiny_model_dir, tmp_path, lora)
    tr = wan_transformer(t.policy.transformer)
    for name, p in tr.named_parameters():
        kept = any(k in name.split(".") for k in ("time_embedder", "scale_shift_table", "norm2"))
        expected = torch.float32 if p.requires_grad or kept else torch.bfloat16
        assert local(p).dtype == expected, name
    assert all(("lora_" in n) == lora or not lora for n in t.params)

    seen = {}

    def record(name):
        def hook(module, args, kwargs):
            flat = [y for a in (*args, *kwargs.values()) for y in (a if isinstance(a, tuple) else (a,))]
            tensors = [a for a in flat if isinstance(a, torch.Tensor)]
            weight = getattr(module, "weight", None)
            seen[name] = ([x.dtype for x in tensors], None if weight is None else local(weight).dtype)

        return hook

    watched = {
        "patch_embedding": tr.patch_embedding,
        "time_embedder.linear_1": tr.condition_embedder.time_embedder.linear_1,
        "text_embedder": tr.condition_embedder.text_embedder.linear_1,
        "blocks.0": wan_blocks(tr)[0],
        "blocks.0.norm2": wan_blocks(tr)[0].norm2,
        "blocks.0.attn1.to_q": wan_blocks(tr)[0].attn1.to_q,
        "blocks.0.ffn": wan_blocks(tr)[0].ffn.net[0].proj,
    }
    for name, module in watched.items():
        module.register_forward_pre_hook(record(name), with_kwargs=True)
    x = torch.randn(2, *t.policy.latent_shape)
    ctx = t.policy.encode(t.train_prompts[:2])
    tr.train()
    v = velocity(tr, x, torch.tensor([0.9, 0.5]), ctx, t.policy.negative_context(2), 2.0, t.policy.compute_dtype)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()

    assert seen["patch_embedding"][0] == [torch.bfloat16]  # latents enter in the compute dtype
    assert seen["text_embedder"][0] == [torch.bfloat16]
    assert seen["time_embedder.linear_1"] == ([torch.float32], torch.float32)  # Wan's fp32 module
    hidden, context, temb, rope_cos, rope_sin = seen["blocks.0"][0]
    assert (hidden, context) == (torch.bfloat16, torch.bfloat16)
    assert (rope_cos, rope_sin) == (torch.float32, torch.float32)  # never cast to bf16 by FSDP
    assert seen["blocks.0.norm2"][1] == torch.float32
    assert seen["blocks.0.attn1.to_q"][0] == [torch.bfloat16] and seen["blocks.0.ffn"][0] == [torch.bfloat16]

    v.pow(2).mean().backward()
    for name, p in t.params.items():
        assert p.grad is not None and local(p.grad).dtype == torch.float32, name  # fp32 reductions and masters


def test_sigma_reaches_the_model_in_fp32(tiny_model_dir, tmp_path):
    """σ·1000 = 982.6 would be 984 in bf16: the timestep input stays fp32."""
    t = bf16_trainer(tiny_model_dir, tmp_path, lora=True)
    got = []
    wan_transformer(t.policy.transformer).condition_embedder.timesteps_proj.register_forward_pre_hook(
        lambda m, a: got.append(a[0])
    )
    x, ctx = torch.randn(1, *t.policy.latent_shape), t.policy.encode(t.train_prompts[:1])
    velocity(t.policy.transformer, x, torch.tensor([0.9826]), ctx, None, 1.0, t.policy.compute_dtype)
    assert got[0].dtype == torch.float32 and float(got[0][0]) == pytest.approx(982.6, abs=1e-3)
