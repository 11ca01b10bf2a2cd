"""The transformer's attention kernel (`model.attention_backend`, `model.rollout_attention_backend`),
through diffusers' attention dispatcher.

How diffusers 0.42 picks the kernel (diffusers/models/attention_dispatch.py): every Wan attention
processor (diffusers' `WanAttnProcessor`, fgrpo's `UlyssesWanAttnProcessor`) calls
`dispatch_attention_fn(..., backend=processor._attention_backend)`, and the dispatcher falls back to
the process-wide active backend (set by the `attention_backend(...)` context manager, or
`DIFFUSERS_ATTN_BACKEND`) only when that attribute is None. So a processor's own backend wins over
the context manager, and what reaches a model is `ModelMixin.set_attention_backend(name)`: it checks
the backend's package (`_check_attention_backend_requirements`), fetches a Hub kernel, and sets
`_attention_backend` on every attention processor (and makes `name` the process-wide default, which
`apply_attention_backend` puts back: other diffusers models in the process keep theirs).

Sequence parallelism composes in either order: `apply_sequence_parallel` hands the processor it
replaces's `_attention_backend` to the `UlyssesWanAttnProcessor` it installs, and
`set_attention_backend` (and `rollout_attention`) set the attribute on that processor like on any.

The module level imports neither torch nor diffusers: recipe validation reads the tables below.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

__all__ = [
    "FORWARD_ONLY_BACKENDS",
    "TRAINABLE_BACKENDS",
    "apply_attention_backend",
    "attention_processors",
    "check_backend_here",
    "rollout_attention",
    "training_problem",
]

# Which of the backends fgrpo offers (ModelConfig.attention_backend's Literal in fgrpo/recipe/config.py,
# the union of the two tables) can run backward. diffusers has no flag for it: its registry
# (`_AttentionBackendRegistry.register`) records constraints and context-parallel support only. Decided
# from each registered function in diffusers 0.42's attention_dispatch.py and what it calls:
TRAINABLE_BACKENDS = frozenset(
    {
        # torch.nn.functional.scaled_dot_product_attention (with an `sdpa_kernel` choice for the `_native_*`
        # ones): autograd formulas in torch itself.
        "native",
        "_native_flash",
        "_native_efficient",
        "_native_cudnn",
        "_native_math",
        # torch's flex_attention: differentiable (on a GPU; torch raises "FlexAttention does not support
        # backward on CPU", which the setup probe of `apply_attention_backend` reports).
        "flex",
        # flash-attn 2's `flash_attn_func` is a torch.autograd.Function with a backward; diffusers also
        # registers `_flash_attention_backward_op` for context parallelism.
        "flash",
        # The Hub kernels' `flash_attn_func` (flash-attn 2 / 3), autograd Functions; diffusers resolves
        # their `_flash_attn_backward` (`wrapped_backward_attr` in `_HUB_KERNELS_REGISTRY`).
        "flash_hub",
        "_flash_3_hub",
        # xformers' `memory_efficient_attention`: differentiable.
        "xformers",
    }
)
FORWARD_ONLY_BACKENDS: dict[str, str] = {
    **{
        name: "SageAttention's quantized kernels have no backward (diffusers' `_sage_attention_backward_op` "
        "raises NotImplementedError)"
        for name in (
            "sage",
            "sage_hub",
            "_sage_qk_int8_pv_fp8_cuda",
            "_sage_qk_int8_pv_fp8_cuda_sm90",
            "_sage_qk_int8_pv_fp16_cuda",
            "_sage_qk_int8_pv_fp16_triton",
        )
    },
    "_flash_3": "diffusers calls FlashAttention-3 through a torch.library custom op "
    "(`_diffusers_flash_attn_3::_flash_attn_forward`) with no autograd registered; "
    "`_flash_3_hub` trains with FA3",
}


def training_problem(name: str) -> str | None:
    """Why backend `name` cannot be used for training (no gradient through it), or None."""
    if name in FORWARD_ONLY_BACKENDS:
        return f"{name!r} is forward-only: {FORWARD_ONLY_BACKENDS[name]}"
    if name not in TRAINABLE_BACKENDS:
        return f"unknown backend {name!r}; one of {sorted(TRAINABLE_BACKENDS | set(FORWARD_ONLY_BACKENDS))}"
    return None


def attention_processors(transformer) -> list:
    """The distinct processors of the transformer's attention modules (as `set_attention_backend`
    finds them: diffusers' Attention classes, FSDP2/checkpoint/compile wrappers looked through)."""
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention, MochiAttention

    seen, out = set(), []
    for module in transformer.modules():
        proc = (
            getattr(module, "processor", None)
            if isinstance(module, (Attention, MochiAttention, AttentionModuleMixin))
            else None
        )
        if proc is not None and id(proc) not in seen:
            seen.add(id(proc))
            out.append(proc)
    return out


def _check_runs(name: str, field: str, device, dtype, head_dim: int, backward: bool) -> None:
    """One small attention call through the dispatcher with `name` on `device` in `dtype` (and its
    backward when training): a backend that cannot run here (no CUDA kernel on CPU, fp32 into a
    bf16-only kernel, flex backward on CPU) fails now, at setup, not in the first step."""
    import torch
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 16, 2, head_dim, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
    try:
        with torch.enable_grad() if backward else torch.no_grad():
            for t in (q, k, v):
                t.requires_grad_(backward)
            out = dispatch_attention_fn(q, k, v, backend=AttentionBackendName(name))
            if backward:
                out.float().sum().backward()
    except Exception as e:  # noqa: BLE001 - any failure means the backend cannot run here
        what = "forward and backward" if backward else "forward"
        raise ValueError(
            f"{field}: backend {name!r} cannot run attention ({what}) on {torch.device(device)} "
            f"in {dtype}: {type(e).__name__}: {e}"
        ) from e


def _requirements(name: str, field: str):
    """diffusers' AttentionBackendName for `name`, its package checked and a Hub kernel fetched."""
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _check_attention_backend_requirements,
        _maybe_download_kernel_for_backend,
    )

    try:
        backend = AttentionBackendName(name)
        _check_attention_backend_requirements(backend)
        _maybe_download_kernel_for_backend(backend)
    except Exception as e:  # noqa: BLE001 - unknown name, missing package, failed kernel download
        raise ValueError(f"{field}: backend {name!r} is not usable here: {e}") from e
    return backend


def check_backend_here(name: str, field: str, device, dtype, head_dim: int, backward: bool) -> None:
    """What `apply_attention_backend` checks on a machine, without a model: `name`'s package (and Hub
    kernel) present, and one small attention call of `head_dim` through it on `device` in `dtype`,
    with its backward when `backward` (training). `fgrpo doctor` runs it.

    Raises:
        ValueError: naming `field`: the package is missing, or the call fails here.
    """
    _requirements(name, field)
    _check_runs(name, field, device, dtype, head_dim, backward)


def apply_attention_backend(
    transformer,
    name: str,
    rollout: str | None = None,
    *,
    device=None,
    dtype=None,
    field: str = "model.attention_backend",
    rollout_field: str = "model.rollout_attention_backend",
) -> None:
    """Give every attention processor of `transformer` the backend `name` (diffusers'
    `set_attention_backend`), before or after sequence parallelism, on meta or real weights.

    With `device` and `dtype` (the compute dtype), also runs a small attention call through `name`
    with its backward, and through `rollout` forward only, so that a backend that cannot run on this
    machine is refused now. `rollout` is only checked here; `rollout_attention` switches to it.

    Raises:
        ValueError: naming `field` (or `rollout_field`): `name` cannot run backward, its package is
            missing, or it fails on `device` in `dtype`.
    """
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    problem = training_problem(name)
    if problem:
        raise ValueError(
            f"{field}: {problem}; training needs gradients through attention (name a "
            f"forward-only backend in {rollout_field} for sampling only)"
        )
    _requirements(name, field)  # the same checks as set_attention_backend, with the field's name
    if rollout is not None:
        _requirements(rollout, rollout_field)
    default = _AttentionBackendRegistry._active_backend
    quiet = logging.getLogger("diffusers.models.modeling_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "Attention backends are an experimental feature", on every call
    try:
        transformer.set_attention_backend(name)
    finally:
        quiet.setLevel(level)
        _AttentionBackendRegistry.set_active_backend(default)
    missing = [type(p).__name__ for p in attention_processors(transformer) if not hasattr(p, "_attention_backend")]
    if missing:
        raise RuntimeError(f"{field}: attention processors without a backend attribute would ignore it: {missing}")
    if device is not None and dtype is not None:
        head_dim = getattr(getattr(transformer, "config", None), "attention_head_dim", None) or 64
        _check_runs(name, field, device, dtype, head_dim, backward=True)
        if rollout is not None and rollout != name:
            _check_runs(rollout, rollout_field, device, dtype, head_dim, backward=False)


_UNSET = object()


@contextmanager
def rollout_attention(transformer, name: str | None):
    """Attention through backend `name` inside (rollouts, evaluation), each processor's own backend
    back on exit, exceptions included. None: unchanged (the rollout backend is the training one).

    Sets the processors' `_attention_backend` directly (the attribute `set_attention_backend` sets;
    diffusers' `attention_backend` context manager would lose to it). Under torch.compile each
    block compiles once more for the second backend, then reuses both graphs.
    """
    if name is None:
        yield
        return
    from diffusers.models.attention_dispatch import AttentionBackendName

    backend = AttentionBackendName(name)  # its package and device were checked at setup (apply_attention_backend)
    saved = [(p, p.__dict__.get("_attention_backend", _UNSET)) for p in attention_processors(transformer)]
    try:
        for p, _ in saved:
            p._attention_backend = backend
        yield
    finally:
        for p, old in saved:
            if old is _UNSET:
                del p._attention_backend  # back to the class attribute (None: the dispatcher's default)
            else:
                p._attention_backend = old
