"""fgrpo.models.wan.rotary: the vectorizable rotary embedding that regional compilation installs
computes bitwise what diffusers' `WanAttnProcessor` computes (forward and gradients, eager and
compiled), and `apply_compile` installs it on every self-attention, keeping the attention backend."""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest
import torch

from fgrpo.models.wan.rotary import VectorizedRopeWanAttnProcessor, apply_rotary_emb, use_vectorized_rope
from tests.helpers.wan import wan_blocks


def tiny_bf16_transformer():
    from diffusers import WanTransformer3DModel

    from fgrpo.models.wan.presets import PRESETS

    torch.manual_seed(0)
    model = WanTransformer3DModel(**PRESETS["tiny"].transformer_config())
    for p in model.parameters():  # non-zero biases and norm weights: every term of the block matters
        p.data.normal_(0.0, 0.2)
    return model.to(torch.bfloat16)  # pyright: ignore[reportArgumentType]


def inputs():
    gen = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(2, 16, 3, 8, 8, generator=gen).bfloat16(),  # 3 x 4 x 4 = 48 tokens a video
        timestep=torch.tensor([500.0, 900.0]),
        encoder_hidden_states=torch.randn(2, 6, 32, generator=gen).bfloat16(),
        return_dict=False,
    )


def forward_and_grads(model, compiled: bool):
    """The no-grad output, then a training forward's output and every parameter's gradient."""
    if compiled:
        for block in model.blocks:
            block.compile(dynamic=False)
    with torch.no_grad():
        sampled = model(**inputs())[0]
    model.zero_grad()
    out = model(**inputs())[0]
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [sampled, out.detach()] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_bitwise_diffusers(compiled, monkeypatch):
    from fgrpo.models.wan import rotary

    torch._dynamo.reset()
    reference = tiny_bf16_transformer()
    vectorized = copy.deepcopy(reference)
    assert use_vectorized_rope(vectorized) == len(vectorized.blocks)
    calls = []  # the replacement runs (eager: every call; compiled: while dynamo traces)
    monkeypatch.setattr(rotary, "apply_rotary_emb", lambda *a: calls.append(1) or apply_rotary_emb(*a))
    expected, got = forward_and_grads(reference, compiled), forward_and_grads(vectorized, compiled)
    assert calls
    assert len(expected) == len(got) > 2
    for i, (a, b) in enumerate(zip(expected, got)):
        assert a is not None and torch.equal(a, b), f"tensor {i} differs"


def test_apply_compile_installs_it_and_keeps_the_backend():
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    from fgrpo.models.wan.parallelize import apply_compile

    model = tiny_bf16_transformer()
    blocks = wan_blocks(model)
    for b in blocks:
        cast(Any, b.attn1.processor)._attention_backend = "_native_flash"
    foreign = object.__new__(type("OtherProcessor", (), {}))  # e.g. sequence parallelism's: left alone
    blocks[1].attn1.set_processor(foreign)  # pyright: ignore[reportArgumentType]
    apply_compile(model)
    first = blocks[0].attn1.processor
    assert isinstance(first, VectorizedRopeWanAttnProcessor) and first._attention_backend == "_native_flash"
    assert blocks[1].attn1.processor is foreign
    assert all(type(b.attn2.processor) is WanAttnProcessor for b in blocks)  # cross-attention: diffusers'
