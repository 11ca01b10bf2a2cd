"""Sequence parallelism (Ulysses, `parallelism.sp`) of the image-conditioned Wan models against one
process, on CPU with gloo: one spawn of 2 processes, sp=2, float32.

Three tiny architectures (fgrpo/models/wan/presets.py), each conditioned on an image the way fgrpo's
sampler feeds it (`fgrpo.trainer.rollout.velocity`, with CFG: both halves take the image):

* `tiny-i2v` (Wan2.1 I2V): 36 input channels and CLIP image tokens in every block's cross-attention
  (`attn2.add_k_proj`), which runs diffusers' own processor on each rank's local tokens;
* `tiny-ti2v` (Wan2.2 TI2V-5B, text+image mode): the first latent frame given and a timestep per
  token (0 on the first frame's tokens), so the time embedding and every modulation are per token
  and are split with the tokens (the hook on `condition_embedder`). 3 latent frames of 4 x 4 are
  12 tokens, 4 in the first frame: rank 0 holds them and 2 of the next frame's, so a split that
  misplaced the timesteps would move the output;
* `tiny-i2v-a14b` (Wan2.2 I2V-A14B): two experts, each parallelised as the trainer does
  (fgrpo.trainer.policy.build_transformer: `parallelize_wan` per expert), called as one
  `WanExperts` on a batch whose videos sit on both sides of the boundary, so both experts run.

Each model is parallelised by `parallelize_wan` (Ulysses, activation checkpointing, FSDP2 over the
sp mesh, as on an sp-only layout), and every rank also runs an unsharded copy. The velocity must
match the copy's, be bitwise equal on both sp ranks, and every parameter's FSDP-reduced gradient of
a weighted sum of the velocity must equal the copy's (both ranks feed the same videos, so FSDP's
average over sp gives one process's gradient: the scaling check of
tests/distributed/test_sequence_parallel.py). The image must matter (changing it moves the
velocity), and every block of every expert must run `UlyssesWanAttnProcessor`.

Tolerance: 1e-5 of the largest value, fp32, as in tests/distributed/test_sequence_parallel.py: only
the order of floating-point sums differs (a rank's linears and attention see half the tokens, FSDP
reduce-scatters partial gradients; measured <= 4e-7 for velocities and gradients). bf16 would round
each of those differently at 2^-8 and need a bound too loose to tell a misplaced per-token
modulation of one token from rounding.

The training run with `--parallelism.sp 2` of an image model: tests/distributed/test_i2v_runs.py.
"""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
import torch.distributed as dist

from tests.helpers.spawn import run_scenarios, spawn_ranks
from tests.helpers.wan import wan_blocks

WORLD = SP = 2
TOL = 1e-5
CFG = 2.0  # guided: both halves of the batch take the image
TEXT_TOKENS = 512  # diffusers' I2V processor takes the context's last 512 tokens as text
LATENT_GRID = (3, 4, 4)  # latent frames x height x width: 3 x 2 x 2 = 12 tokens of 1x2x2 patches
MODELS = ("tiny-i2v", "tiny-ti2v", "tiny-i2v-a14b")


def _transformer(preset_name: str, seed: int):
    """The preset's transformer, seeded, float32, every parameter trainable, with non-trivial norm
    weights (a norm computed on the wrong tokens would show)."""
    from diffusers import WanTransformer3DModel

    from fgrpo.models.wan.presets import PRESETS

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**PRESETS[preset_name].transformer_config()).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.5 * torch.randn_like(p))
    return model.requires_grad_(True)


def _model(preset_name: str):
    """The policy module fgrpo trains: one transformer, or two experts as one `WanExperts`."""
    from fgrpo.models.wan.experts import WanExperts
    from fgrpo.models.wan.presets import PRESETS

    preset = PRESETS[preset_name]
    if preset.experts == 1:
        return _transformer(preset_name, 0)
    assert preset.boundary_ratio is not None
    return WanExperts(_transformer(preset_name, 0), _transformer(preset_name, 1), preset.boundary_ratio)


def _condition(preset_name: str, batch: int, g: torch.Generator):
    """The image condition fgrpo's sampler passes for `batch` videos (random stand-ins for the VAE
    latent and the CLIP features: the transformer sees only tensors)."""
    from fgrpo.models.wan.first_frame import FirstFrameCondition
    from fgrpo.models.wan.image_condition import ImageCondition
    from fgrpo.models.wan.presets import PRESETS

    preset = PRESETS[preset_name]
    frames, h, w = LATENT_GRID
    if preset.expand_timesteps:
        return FirstFrameCondition(torch.randn(batch, preset.latent_channels, 1, h, w, generator=g))
    assert preset.in_channels is not None
    extra = preset.in_channels - preset.latent_channels  # 4 mask channels + the image latent
    latent = torch.randn(batch, extra, frames, h, w, generator=g)
    embeds = None if preset.image_dim is None else torch.randn(batch, 17, preset.image_dim, generator=g)
    return ImageCondition(latent, embeds)


def _other_image(cond):
    """The same condition with another image: its latent (and CLIP features) negated."""
    from fgrpo.models.wan.first_frame import FirstFrameCondition
    from fgrpo.models.wan.image_condition import ImageCondition

    if isinstance(cond, FirstFrameCondition):
        return FirstFrameCondition(-cond.latent)
    return ImageCondition(-cond.latent, None if cond.embeds is None else -cond.embeds)


def _velocity_inputs(preset_name: str) -> tuple:
    """(latents, sigmas, text, negative text, image condition) of two videos at sigma 0.9 and 0.5
    (timesteps 900 and 500: on both sides of the tiny experts' boundary 0.7)."""
    from fgrpo.models.wan.presets import PRESETS

    preset = PRESETS[preset_name]
    g = torch.Generator().manual_seed(3)
    text = TEXT_TOKENS if preset.image_dim is not None else 8
    x = torch.randn(2, preset.latent_channels, *LATENT_GRID, generator=g)
    context, neg = (torch.randn(2, text, preset.text_dim, generator=g) for _ in range(2))
    return x, torch.tensor([0.9, 0.5]), context, neg, _condition(preset_name, 2, g)


def _grad(p: torch.Tensor) -> torch.Tensor:
    assert p.grad is not None, "a parameter got no gradient"
    return p.grad


def _scenario(preset_name: str, dims) -> dict:
    from torch.distributed.tensor import DTensor

    from fgrpo.distributed.precision import PrecisionPolicy
    from fgrpo.models.wan.experts import experts_of
    from fgrpo.models.wan.parallelize import parallelize_wan
    from fgrpo.trainer.rollout import velocity

    model = _model(preset_name)
    ref = copy.deepcopy(model)
    policy = PrecisionPolicy.from_name("float32")
    for expert in experts_of(model):  # as fgrpo.trainer.policy.build_transformer: each expert on its own
        policy.apply_storage(expert)
        parallelize_wan(expert, dims, policy, activation_checkpointing=True)
    x, sigma, context, neg, image = _velocity_inputs(preset_name)
    v, v_ref = (velocity(m, x, sigma, context, neg, CFG, torch.float32, image) for m in (model, ref))
    with torch.no_grad():
        other = velocity(ref, x, sigma, context, neg, CFG, torch.float32, _other_image(image))
    weight = torch.randn(v.shape, generator=torch.Generator().manual_seed(7))
    (v * weight).sum().backward()
    (v_ref * weight).sum().backward()

    peers = [torch.empty_like(v) for _ in range(SP)]
    dist.all_gather(peers, v.detach(), group=dims.sp_mesh().get_group())
    ref_params = dict(ref.named_parameters())
    errors, scale, untouched = {}, 0.0, []
    for name, p in model.named_parameters():  # the same order on every rank (full_tensor is collective)
        g, g_ref = _grad(p), _grad(ref_params[name])
        g = g.full_tensor() if isinstance(g, DTensor) else g
        errors[name] = float((g - g_ref).abs().max())
        scale = max(scale, float(g_ref.abs().max()))
        if float(g_ref.abs().max()) == 0.0:
            untouched.append(name)
    v_scale = float(v_ref.detach().abs().max())
    return {
        "velocity": float((v - v_ref).detach().abs().max()) / v_scale,
        "image_effect": float((other - v_ref).detach().abs().max()) / v_scale,
        "sp_group_spread": max(float((p - v.detach()).abs().max()) for p in peers),
        "grad": max(errors.values()) / scale,
        "grad_worst": max(errors, key=errors.__getitem__),
        "untouched": untouched,
        "processors": [sorted({type(b.attn1.processor).__name__ for b in wan_blocks(e)}) for e in experts_of(model)],
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    def scenarios():
        from fgrpo.distributed.parallel_dims import ParallelDims

        dims = ParallelDims.from_config(1, 1, 1, WORLD, sp=SP)
        dims.build_mesh("cpu")
        return [(name, partial(_scenario, name, dims)) for name in MODELS]

    run_scenarios(rank, port, out_dir, WORLD, scenarios)


@pytest.fixture(scope="module")
def direct(tmp_path_factory) -> list[dict]:
    return spawn_ranks(_worker, WORLD, tmp_path_factory.mktemp("sp-image"), "image sequence-parallel", timeout_s=300)


@pytest.mark.parametrize("model", MODELS)
def test_image_models_match_one_process(direct, model):
    from fgrpo.models.wan.presets import PRESETS

    for rank, results in enumerate(direct):
        r = results.get(model)
        assert r is not None, f"rank {rank} did not run {model}"
        assert "error" not in r, r["error"]
        print(
            f"\n{model} rank {rank}: velocity {r['velocity']:.2g}, gradient {r['grad']:.2g} ({r['grad_worst']}), "
            f"image effect {r['image_effect']:.2g}"
        )
        assert r["processors"] == [["UlyssesWanAttnProcessor"]] * PRESETS[model].experts
        assert r["image_effect"] > 1e-2, r  # the image reaches the velocity (the check can fail)
        assert r["untouched"] == [], r  # every parameter, image attention included, gets a gradient
        assert r["sp_group_spread"] == 0.0
        assert r["velocity"] <= TOL, f"velocity differs from one process by {r['velocity']:.3g} (rank {rank})"
        assert r["grad"] <= TOL, f"gradient differs from one process by {r['grad']:.3g} (rank {rank})"
