"""The one precision policy: what is stored, computed and reduced in which dtype.

    trainable weights (LoRA adapters, or every weight in a full fine-tune)  fp32 (master copy)
    optimizer state (AdamW moments, EMA shadow)                             fp32 (follows the weights)
    frozen base weights                                                     recipe dtype
    modules the model keeps in fp32 (`_keep_in_fp32_modules`)               fp32, stored and computed
    compute (matmuls, convolutions, attention) of everything else           recipe dtype
    gradient reductions (FSDP2 reduce-scatter / all-reduce)                 fp32
    log-probabilities, the SDE step, advantages, the loss                   fp32

It is applied by FSDP2's `MixedPrecisionPolicy` on every layout, a single process included (a
one-rank FSDP mesh): one mechanism means a single process computes exactly what a rank of a
multi-process layout computes, and CPU exactly what GPUs compute (CPU runs bf16 matmuls and
convolutions). The alternative, `torch.autocast` on one process, would run Wan's fp32 modules in
bf16 and give a single process different numerics from every FSDP layout.

Inputs are never cast by FSDP (`cast_forward_inputs=False`): the caller feeds the root the
compute dtype (`compute_inputs`), Wan's timestep stays fp32 (σ·1000 = 982 is 984 in bf16), and the
rotary tables reach the blocks in fp32 as diffusers' pipeline feeds them.

Known, documented rounding: a block's bare `scale_shift_table` parameter (fp32 in Wan) shares its
block's FSDP group, so its compute copy is rounded to the recipe dtype; Wan adds it to the fp32
time embedding, so only the table's storage precision is lost (its master copy stays fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class PrecisionPolicy:
    compute: torch.dtype
    """Recipe dtype: frozen weights are stored in it, everything not kept in fp32 computes in it."""
    master: torch.dtype = torch.float32
    reduce: torch.dtype = torch.float32

    @classmethod
    def from_name(cls, name: str) -> "PrecisionPolicy":
        if name not in DTYPES:
            raise ValueError(f"model.dtype: one of {sorted(DTYPES)}, got {name!r}")
        return cls(DTYPES[name])

    def fsdp(self, keep_fp32: bool = False) -> MixedPrecisionPolicy:
        """FSDP2 policy of a group: the recipe dtype, or fp32 for a group of fp32-kept modules."""
        param = torch.float32 if keep_fp32 else self.compute
        return MixedPrecisionPolicy(param_dtype=param, reduce_dtype=self.reduce, cast_forward_inputs=False)

    def storage_dtype(self, trainable: bool, keep_fp32: bool) -> torch.dtype:
        return self.master if trainable or keep_fp32 else self.compute

    def apply_storage(self, model: torch.nn.Module) -> None:
        """Cast each parameter, in place, to the dtype it is stored in (works on the meta device)."""
        kept = keep_fp32_parameter_names(model)
        for name, p in model.named_parameters():
            dtype = self.storage_dtype(p.requires_grad, name in kept)
            if p.dtype != dtype:
                p.data = p.data.to(dtype)

    def compute_inputs(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Root inputs (latents, text context) in the compute dtype."""
        return tuple(t.to(self.compute) for t in tensors)


def keep_fp32_patterns(model: torch.nn.Module) -> tuple[str, ...]:
    """diffusers' `_keep_in_fp32_modules` (Wan: rope, time_embedder, scale_shift_table, norm1/2/3)."""
    return tuple(getattr(model, "_keep_in_fp32_modules", None) or ())


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    parts = name.split(".")
    return any(p in parts for p in patterns)


def keep_fp32_parameter_names(model: torch.nn.Module) -> set[str]:
    """Parameter names inside (or named as) one of the model's fp32-kept modules."""
    patterns = keep_fp32_patterns(model)
    return {n for n, _ in model.named_parameters() if _matches(n, patterns)}


def keep_fp32_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost submodules named in `_keep_in_fp32_modules` that own parameters (their FSDP
    groups compute in fp32). Bare parameters such as `scale_shift_table` are not modules."""
    patterns = keep_fp32_patterns(model)
    found: list[tuple[str, torch.nn.Module]] = []
    for name, module in model.named_modules():
        if name and name.split(".")[-1] in patterns and any(True for _ in module.parameters()):
            if not any(name.startswith(outer + ".") for outer, _ in found):
                found.append((name, module))
    return [m for _, m in found]
