"""The text side of a rollout computed once (fgrpo.models.wan.cross_attention_cache): the same
samples bit for bit, the projections run once per micro-batch instead of once per step, nothing
left behind, gradients untouched, and no recompiles under regional compilation."""

from __future__ import annotations

import pytest
import torch

from fgrpo.algorithm import wan_sigmas
from fgrpo.models.wan.cross_attention_cache import cached_text_projections
from fgrpo.models.wan.lora import add_lora
from fgrpo.models.wan.random_build import fast_random_transformer
from fgrpo.trainer.rollout import NoiseConfig, sample, video_generators
from tests.helpers.wan import wan_blocks, wan_transformer

STEPS, VIDEOS, MB = 4, 4, 2
LATENT = (16, 2, 4, 4)


def tiny(lora: bool):
    model = fast_random_transformer("tiny", seed=0, dtype=torch.bfloat16).eval()
    if lora:
        add_lora(model, 4, 8.0, ("to_q", "to_k", "to_v", "to_out.0"))
        with torch.no_grad():  # nonzero adapters, so that they matter to the key and value
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return wan_transformer(model)


def rollout(model, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(VIDEOS, *LATENT, generator=gen)
    context = torch.randn(VIDEOS, 16, 32, generator=gen)
    neg = torch.randn(1, 16, 32, generator=gen).expand(VIDEOS, -1, -1)
    mask = torch.zeros(VIDEOS, STEPS, dtype=torch.bool)
    mask[:, 1] = True
    return sample(
        model,
        latents,
        context,
        neg,
        wan_sigmas(STEPS, 3.0),
        mask,
        NoiseConfig("wan", 0.7),
        4.5,
        video_generators(list(range(VIDEOS))),
        MB,
        torch.bfloat16,
    )


def count_calls(modules) -> list[int]:
    counts = [0]

    def hook(*_):
        counts[0] += 1

    for m in modules:
        m.register_forward_hook(hook)
    return counts


@pytest.mark.parametrize("lora", [False, True], ids=["base", "lora"])
def test_same_samples_with_projections_computed_once_per_micro_batch(lora):
    model = tiny(lora)
    key_projections = count_calls([b.attn2.to_k for b in wan_blocks(model)])
    text = count_calls([model.condition_embedder.text_embedder.linear_1])  # inside its (cached) forward
    plain_final, plain_trans = rollout(model)
    assert key_projections[0] == len(model.blocks) * STEPS * (VIDEOS // MB) and text[0] == STEPS * (VIDEOS // MB)
    key_projections[0] = text[0] = 0
    with cached_text_projections(model):
        final, trans = rollout(model)
    assert key_projections[0] == len(model.blocks) * (VIDEOS // MB) and text[0] == VIDEOS // MB
    assert torch.equal(final, plain_final)
    assert torch.equal(trans.log_prob, plain_trans.log_prob) and torch.equal(trans.x_next, plain_trans.x_next)


def test_everything_is_restored_and_state_dicts_never_change():
    model = tiny(lora=True)
    keys = list(model.state_dict())
    with cached_text_projections(model):
        rollout(model)
        assert list(model.state_dict()) == keys  # no module replaced, the real ones held outside the tree
        assert all(b.attn2.fused_projections for b in wan_blocks(model))
    assert list(model.state_dict()) == keys
    assert all(not hasattr(b.attn2, "to_kv") and not b.attn2.fused_projections for b in wan_blocks(model))
    assert all("forward" not in vars(b.attn2.norm_k) for b in wan_blocks(model))
    assert "forward" not in vars(model.condition_embedder.text_embedder)


def test_restored_after_an_exception():
    model = tiny(lora=False)
    with pytest.raises(RuntimeError, match="boom"), cached_text_projections(model):
        raise RuntimeError("boom")
    assert all(not hasattr(b.attn2, "to_kv") for b in model.blocks)


def test_calls_with_gradients_compute_afresh():
    """Inside the context a forward with gradients gets gradients to the key/value weights, equal
    to those without the context."""

    def key_grad(model, inside: bool):
        x = torch.randn(2, *LATENT, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
        text = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
        model.zero_grad()
        for p in model.parameters():
            p.requires_grad_(p.dtype.is_floating_point)
        if inside:
            with cached_text_projections(model):
                with torch.no_grad():
                    model(x, torch.tensor([500.0, 500.0]), text)  # fills the cache
                out = model(x, torch.tensor([500.0, 500.0]), text, return_dict=False)[0]
        else:
            out = model(x, torch.tensor([500.0, 500.0]), text, return_dict=False)[0]
        out.float().square().mean().backward()
        return model.blocks[0].attn2.to_k.weight.grad.clone()

    model = tiny(lora=False)
    inside, outside = key_grad(model, True), key_grad(model, False)
    assert inside.abs().sum() > 0 and torch.equal(inside, outside)


def test_no_recompiles_across_rollouts_when_compiled():
    model = tiny(lora=True)
    for block in model.blocks:
        block.compile(dynamic=False)
    torch._dynamo.reset()
    with cached_text_projections(model):
        first, _ = rollout(model, seed=0)
    try:
        torch.compiler.set_stance("fail_on_recompile")
        with cached_text_projections(model):  # other latents, other text: same graphs
            rollout(model, seed=1)
            again, _ = rollout(model, seed=0)
    finally:
        torch.compiler.set_stance("default")
    assert torch.equal(again, first)
