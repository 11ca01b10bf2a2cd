"""Typed views of a diffusers Wan transformer for tests that reach into its submodules.

`nn.ModuleList` items are typed as plain `Module`s and `Module.__getattr__` as `Tensor | Module`,
which hides the classes the tests inspect. These casts change nothing at run time (diffusers is
imported for the type checker only, so importing this module stays cheap).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel, WanTransformerBlock


def wan_transformer(model: object) -> WanTransformer3DModel:
    """`model` (a Wan transformer held as a plain module, possibly FSDP-wrapped or with LoRA)."""
    return cast("WanTransformer3DModel", model)


def wan_blocks(model: object) -> list[WanTransformerBlock]:
    """The transformer blocks of the Wan transformer `model`, in order."""
    return [cast("WanTransformerBlock", b) for b in wan_transformer(model).blocks]
