"""`model.attention_backend` and `model.rollout_attention_backend`: validation, the backend reaching
diffusers' dispatcher in a forward of the tiny Wan transformer (with and without sequence
parallelism, inside and after `rollout_attention` and `Policy.rollout`), and setup failures naming
the field. On CPU only `native`, `_native_math` and `_native_flash` run (forward and backward)."""

from __future__ import annotations

import dataclasses
import typing
from collections import Counter
from types import SimpleNamespace
from typing import Any, cast

import pytest
import torch
from torch.distributed.device_mesh import DeviceMesh

from fgrpo.models.wan.attention import (
    FORWARD_ONLY_BACKENDS,
    TRAINABLE_BACKENDS,
    apply_attention_backend,
    attention_processors,
    rollout_attention,
)
from fgrpo.recipe.config import AttentionBackend
from fgrpo.recipe.io import load_recipe_file
from fgrpo.recipe.validate import recipe_problems
from tests.conftest import REPO, run_fgrpo
from tests.helpers.wan import wan_blocks


def tiny_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    from diffusers import WanTransformer3DModel

    from fgrpo.models.wan.presets import PRESETS

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**PRESETS["tiny"].transformer_config())
    # diffusers declares `to` with functools.wraps(nn.Module.to): pyright reads `self` as unbound
    return model.to(dtype).eval()  # pyright: ignore[reportArgumentType]


def tiny_inputs(dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 2, 4, 4, generator=gen)  # 2 x 2 x 2 = 8 tokens per video
    text = torch.randn(2, 6, 32, generator=gen)
    return dict(
        hidden_states=x.to(dtype),
        timestep=torch.tensor([500, 900]),
        encoder_hidden_states=text.to(dtype),
        return_dict=False,
    )


@pytest.fixture
def calls(monkeypatch):
    """Counter of the backends diffusers' dispatcher ran (its registered functions, wrapped)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    seen = Counter()
    for name in ("native", "_native_math", "_native_flash"):
        backend = AttentionBackendName(name)
        original = _AttentionBackendRegistry._backends[backend]

        def spy(*args, _name=name, _original=original, **kwargs):
            seen[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setitem(_AttentionBackendRegistry._backends, backend, spy)
    return seen


def forward(model, dtype=torch.float32):
    with torch.no_grad():
        return model(**tiny_inputs(dtype))[0]


# --- the tables and validation ---------------------------------------------------------------


def test_offered_backends_are_diffusers_backends_each_classified():
    from diffusers.models.attention_dispatch import AttentionBackendName, _sage_attention_backward_op

    offered = set(typing.get_args(AttentionBackend))
    assert offered == TRAINABLE_BACKENDS | set(FORWARD_ONLY_BACKENDS)
    assert not TRAINABLE_BACKENDS & set(FORWARD_ONLY_BACKENDS)
    assert offered <= {b.value for b in AttentionBackendName}
    with pytest.raises(NotImplementedError):  # the source of the sage family's classification
        unused: Any = None
        _sage_attention_backward_op(unused, unused)


def test_sage_is_refused_for_training_naming_the_field(tmp_path):
    res = run_fgrpo(
        "launch",
        str(REPO / "recipes/tiny.py"),
        "--logging.runs-dir",
        str(tmp_path / "runs"),
        "--model.attention-backend",
        "sage",
        cwd=tmp_path,
    )
    assert res.returncode != 0
    assert "model.attention_backend: 'sage' is forward-only" in res.stderr, res.stderr
    assert "model.rollout_attention_backend=sage" in res.stderr  # the suggestion
    assert not (tmp_path / "runs").exists()


def test_sage_is_accepted_for_rollouts():
    r = load_recipe_file(REPO / "recipes" / "tiny.py")
    R = dataclasses.replace
    assert recipe_problems(R(r, model=R(r.model, rollout_attention_backend="sage"))) == []
    flash3 = R(r.model, attention_backend="flash", rollout_attention_backend="_flash_3")
    assert recipe_problems(R(r, model=flash3)) == []


@pytest.mark.parametrize(
    "model, algorithm, message",
    [
        (dict(attention_backend="_flash_3"), {}, "model.attention_backend: '_flash_3' is forward-only"),
        (dict(attention_backend="flsh"), {}, "model.attention_backend: unknown backend 'flsh'"),
        (dict(rollout_attention_backend="sagee"), {}, "model.rollout_attention_backend: unknown backend 'sagee'"),
        (
            dict(rollout_attention_backend="sage"),
            dict(recompute_old_log_prob=False),
            "model.rollout_attention_backend: sampling with 'sage' but training with 'native' needs "
            "algorithm.recompute_old_log_prob=true",
        ),
    ],
)
def test_bad_backends_name_the_field(model, algorithm, message):
    r = load_recipe_file(REPO / "recipes" / "tiny.py")
    R = dataclasses.replace
    problems = recipe_problems(R(r, model=R(r.model, **model), algorithm=R(r.algorithm, **algorithm)))
    assert any(p.startswith(message) for p in problems), problems


def test_help_shows_the_fields():
    res = run_fgrpo("launch", "recipes/tiny.py", "--help")
    assert res.returncode == 0, res.stderr
    for text in ("--model.attention-backend", "--model.rollout-attention-backend", "SageAttention", "_native_math"):
        assert text in res.stdout, text


# --- the backend reaches the attention call --------------------------------------------------


def test_backend_reaches_every_attention_call_and_rollout_switches_and_restores(calls):
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    model = tiny_transformer()
    default = _AttentionBackendRegistry._active_backend
    apply_attention_backend(model, "_native_math", "_native_flash", device=torch.device("cpu"), dtype=torch.float32)
    assert _AttentionBackendRegistry._active_backend == default  # the process-wide default is left alone
    calls.clear()  # the setup probe's calls
    forward(model)
    assert calls == {"_native_math": 4}  # 2 blocks x (self + cross attention)

    calls.clear()
    with rollout_attention(model, "_native_flash"):
        forward(model)
    assert calls == {"_native_flash": 4}

    calls.clear()
    with pytest.raises(RuntimeError, match="inside"), rollout_attention(model, "_native_flash"):
        raise RuntimeError("inside")
    forward(model)
    assert calls == {"_native_math": 4}
    assert {p._attention_backend for p in attention_processors(model)} == {AttentionBackendName._NATIVE_MATH}

    calls.clear()
    with rollout_attention(model, None):  # None: the training backend
        forward(model)
    assert calls == {"_native_math": 4}


def test_rollout_attention_restores_processors_without_their_own_backend(calls):
    model = tiny_transformer()
    with rollout_attention(model, "_native_math"):
        forward(model)
    assert calls == {"_native_math": 4}
    assert all(p._attention_backend is None for p in attention_processors(model))  # diffusers' default again


def test_policy_rollout_uses_the_rollout_backend(calls):
    from fgrpo.trainer.policy import Policy

    model = tiny_transformer()
    apply_attention_backend(model, "_native_math")
    components: Any = SimpleNamespace(transformer=model)  # rollout() reads only the transformer
    unused: Any = None
    policy = Policy(
        components,
        unused,
        unused,
        unused,
        torch.device("cpu"),
        unused,
        unused,
        1.0,
        (16, 2, 8, 8),
        rollout_attention_backend="_native_flash",
    )
    with policy.rollout():
        forward(model)
    assert calls == {"_native_flash": 4}
    calls.clear()
    forward(model)
    assert calls == {"_native_math": 4}


class OneRankMesh:
    """A 1-D sequence-parallel mesh of one rank: Ulysses' exchanges are identities, no process group.
    (It stands in for a `DeviceMesh`: `one_rank_mesh()` gives it that type.)"""

    ndim = 1

    def size(self):
        return 1

    def get_local_rank(self):
        return 0


def one_rank_mesh() -> DeviceMesh:
    return cast(DeviceMesh, OneRankMesh())


@pytest.mark.parametrize("order", ["backend-then-sp", "sp-then-backend"])
def test_backend_reaches_the_sequence_parallel_processor(calls, order):
    from fgrpo.models.wan.sequence_parallel import UlyssesWanAttnProcessor, apply_sequence_parallel

    model = tiny_transformer()
    reference = forward(model)
    if order == "backend-then-sp":
        apply_attention_backend(model, "_native_math")
        apply_sequence_parallel(model, one_rank_mesh())
    else:
        apply_sequence_parallel(model, one_rank_mesh())
        apply_attention_backend(model, "_native_math")
    assert all(isinstance(b.attn1.processor, UlyssesWanAttnProcessor) for b in wan_blocks(model))
    calls.clear()
    out = forward(model)
    assert calls == {"_native_math": 4}
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    calls.clear()
    with rollout_attention(model, "_native_flash"):
        forward(model)
    assert calls == {"_native_flash": 4}


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_native_and_native_math_agree(dtype, tol):
    model = tiny_transformer(dtype=dtype)
    apply_attention_backend(model, "native", device=torch.device("cpu"), dtype=dtype)
    a = forward(model, dtype).float()
    apply_attention_backend(model, "_native_math", device=torch.device("cpu"), dtype=dtype)
    b = forward(model, dtype).float()
    assert a.abs().max() > 0.1  # a real output, not zeros
    torch.testing.assert_close(b, a, rtol=tol, atol=tol * a.abs().max().item())


# --- failures at setup -----------------------------------------------------------------------


def test_missing_package_fails_at_setup_naming_the_field():
    from diffusers.models.attention_dispatch import _CAN_USE_FLASH_ATTN, _CAN_USE_SAGE_ATTN

    model = tiny_transformer()
    if not _CAN_USE_FLASH_ATTN:
        with pytest.raises(ValueError, match=r"model.attention_backend: backend 'flash' is not usable here.*flash-at"):
            apply_attention_backend(model, "flash", device=torch.device("cpu"), dtype=torch.bfloat16)
    if not _CAN_USE_SAGE_ATTN:
        with pytest.raises(ValueError, match=r"model.rollout_attention_backend: backend 'sage' is not usable here"):
            apply_attention_backend(model, "native", "sage", device=torch.device("cpu"), dtype=torch.bfloat16)


def test_forward_only_backend_is_refused_at_setup():
    with pytest.raises(ValueError, match=r"model.attention_backend: 'sage' is forward-only.*rollout_attention_backend"):
        apply_attention_backend(tiny_transformer(), "sage")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the kernels below run on a GPU")
@pytest.mark.parametrize(
    "name, why", [("_native_efficient", "No viable backend"), ("flex", "does not support backward on CPU")]
)
def test_backend_that_cannot_run_on_this_device_fails_at_setup(name, why):
    model = tiny_transformer()
    with pytest.raises(ValueError, match=rf"model.attention_backend: backend '{name}' cannot run attention .*{why}"):
        apply_attention_backend(model, name, device=torch.device("cpu"), dtype=torch.float32)


# --- in the trainer ----------------------------------------------------------------------------


def test_trainer_samples_with_the_rollout_backend_and_trains_with_the_other(
    tiny_model_dir, tmp_path, calls, monkeypatch
):
    from fgrpo.trainer import flash_grpo
    from fgrpo.trainer.trainer import Trainer
    from tests.helpers.recipes import small_recipe

    r = small_recipe(tiny_model_dir, max_steps=1)
    r = dataclasses.replace(
        r,
        model=dataclasses.replace(r.model, attention_backend="_native_math", rollout_attention_backend="_native_flash"),
    )
    t = Trainer(r, tmp_path)
    seen_in_rollout, real_sample = [], flash_grpo.sample

    def sample(*args, **kwargs):
        calls.clear()
        out = real_sample(*args, **kwargs)
        seen_in_rollout.append(dict(calls))
        calls.clear()
        return out

    monkeypatch.setattr(flash_grpo, "sample", sample)
    assert t.run_step(t.sampler.next(r.rollout.prompts_per_step), lambda: None).applied
    assert seen_in_rollout and all(set(c) == {"_native_flash"} for c in seen_in_rollout), seen_in_rollout
    assert set(calls) == {"_native_math"}  # log pi_old and the policy-gradient pass (forward and recompute)


def test_trainer_refuses_a_backend_that_cannot_train_here_before_any_step(tiny_model_dir, tmp_path):
    from diffusers.models.attention_dispatch import _CAN_USE_FLASH_ATTN

    from fgrpo.trainer.trainer import Trainer
    from tests.helpers.recipes import small_recipe

    r = small_recipe(tiny_model_dir, max_steps=1)
    if _CAN_USE_FLASH_ATTN:
        pytest.skip("flash-attn is installed here")
    r = dataclasses.replace(r, model=dataclasses.replace(r.model, attention_backend="flash"))
    with pytest.raises(ValueError, match="model.attention_backend: backend 'flash' is not usable here"):
        Trainer(r, tmp_path)
