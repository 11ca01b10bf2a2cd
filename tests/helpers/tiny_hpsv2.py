"""A tiny random HPSv2 checkpoint built with open_clip's own architecture (no hub access).

open_clip_torch is installed with ``--no-deps`` by scripts/setup.sh; its package ``__init__``
imports torchvision, whose only builds here are CUDA builds that do not load with CPU torch, so
:func:`open_clip_modules` imports ``open_clip.model`` and ``open_clip.constants`` without it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import TypedDict

import torch

from tests.helpers.tiny_clip_tokenizer import tiny_clip_tokenizer

WORDS = ["a", "red", "blue", "cat", "dog", "on", "the", "grass", "sky", "car", "runs", "in"]
CTX = 16  # text context length of the tiny model (ViT-H-14: 77)


class Heads(TypedDict):
    vision_heads: int
    text_heads: int


HEADS = Heads(vision_heads=2, text_heads=2)  # the tiny model's head width is 32, not open_clip's 64/80


def open_clip_installed() -> bool:
    return importlib.util.find_spec("open_clip") is not None  # locates the package without importing it


@contextmanager
def open_clip_modules() -> Iterator[SimpleNamespace]:
    """open_clip's ``model`` and ``constants`` modules, without running ``open_clip/__init__``.

    ``open_clip.utils`` (imported by ``open_clip.model``) imports
    ``torchvision.ops.misc.FrozenBatchNorm2d``, used only to freeze ResNet towers, so a stub
    stands in for it during the import and is removed afterwards; on exit every open_clip
    module is removed again (no half-initialised package is left behind).
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.submodule_search_locations is None:
        raise ModuleNotFoundError("open_clip_torch is not installed (scripts/setup.sh installs it with --no-deps)")
    # open_clip.hf_model imports these; import them before the stub exists so no transformers
    # module (nor its cached torchvision availability check) ever sees the stub.
    from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig  # noqa: F401
    from transformers.modeling_outputs import BaseModelOutput  # noqa: F401

    pkg = types.ModuleType("open_clip")
    pkg.__path__ = list(spec.submodule_search_locations)
    stubs = {n: types.ModuleType(n) for n in ("torchvision", "torchvision.ops", "torchvision.ops.misc")}
    vars(stubs["torchvision.ops.misc"])["FrozenBatchNorm2d"] = type("FrozenBatchNorm2d", (), {})
    assert not any(n in sys.modules for n in stubs)
    sys.modules["open_clip"] = pkg
    sys.modules.update(stubs)
    try:
        try:
            model = importlib.import_module("open_clip.model")
            constants = importlib.import_module("open_clip.constants")
        finally:
            for n in stubs:
                del sys.modules[n]
        # timm is optional in open_clip (only for timm vision towers) and must stay unimported.
        assert "timm" not in sys.modules and sys.modules["open_clip.timm_model"].timm is None
        yield SimpleNamespace(model=model, constants=constants, folder=Path(pkg.__path__[0]))
    finally:
        for n in [n for n in sys.modules if n == "open_clip" or n.startswith("open_clip.")]:
            del sys.modules[n]


def randomize(model: torch.nn.Module) -> None:
    """Non-trivial layer norms and biases (open_clip inits them to 1 / 0), so a wrong mapping shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif ".ln_" in name or name.startswith("ln_"):
                p.normal_(1.0, 0.1)


def save_tiny_hpsv2(oc: SimpleNamespace, root: Path) -> SimpleNamespace:
    """A tiny open_clip ViT CLIP saved as HPSv2 ships it (``{"state_dict": ...}`` in ``HPS_tiny.pt``)
    with a CLIP tokenizer folder. ``oc``: :func:`open_clip_modules`' namespace. Returns the model,
    tokenizer, ``ckpt`` and ``tok_dir`` paths, state dict ``sd`` and ``root``; score it with ``**HEADS``."""
    # BOS/EOS get the two highest ids, as in real CLIP vocabularies (49406, 49407): open_clip
    # pools text at argmax(token id), which is the EOT token only under that layout.
    tok = tiny_clip_tokenizer(WORDS, specials_last=True)
    assert tok.eos_token_id == len(tok) - 1
    torch.manual_seed(0)
    model = oc.model.CLIP(
        embed_dim=16,
        vision_cfg=oc.model.CLIPVisionCfg(width=64, layers=2, patch_size=8, image_size=32, head_width=32),
        text_cfg=oc.model.CLIPTextCfg(context_length=CTX, vocab_size=len(tok), width=64, heads=2, layers=2),
    ).eval()
    randomize(model)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict()}, root / "HPS_tiny.pt")  # HPSv2's wrapping
    tok.save_pretrained(root / "tokenizer")
    return SimpleNamespace(
        model=model,
        tok=tok,
        ckpt=str(root / "HPS_tiny.pt"),
        tok_dir=str(root / "tokenizer"),
        sd=model.state_dict(),
        root=root,
    )
