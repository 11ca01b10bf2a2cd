"""LoRA adapters on the Wan transformer through peft (diffusers' PEFT integration)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch

if TYPE_CHECKING:
    from diffusers import WanTransformer3DModel


def add_lora(transformer: torch.nn.Module, rank: int, alpha: float, target_modules: tuple[str, ...]) -> None:
    """Attach a LoRA adapter and freeze everything else; only adapter weights train. (Their fp32
    storage is the precision policy's business: fgrpo.distributed.precision.)"""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    # peft annotates lora_alpha as int, yet scales by lora_alpha / r: a float alpha is meant to work
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # pyright: ignore[reportArgumentType]
        target_modules=list(target_modules),
        init_lora_weights=True,
    )
    cast("WanTransformer3DModel", transformer).add_adapter(config)  # diffusers' PEFT integration
    for name, p in transformer.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)


def trainable_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}
