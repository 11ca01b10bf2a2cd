"""The `tiny` preset: a small Wan-architecture model built from config, saved as a diffusers folder.

No weights can be downloaded on CPU test machines, so the project builds its own tiny model and
loads it back through the same `from_pretrained` path that real Wan weights take.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from .presets import PRESETS

TINY_FORMAT_VERSION = 1  # bump when the tiny model changes, so cached folders are rebuilt
TINY_VOCAB = 384


def _identity_plus_noise_(conv: nn.Module, generator: torch.Generator, noise: float = 0.3) -> None:
    """Re-initialise a conv as a centred Dirac (identity) kernel plus small noise, bias 0.

    Why: with PyTorch's default init a random Wan VAE decodes every latent to nearly the same grey
    (each un-normalised upsampling conv shrinks the signal and the biases swamp it), so no reward
    could tell one rollout from another. Identity-plus-noise keeps decoded colours following the
    latent while the architecture stays exactly Wan's.
    """
    w = conv.weight
    fan_in = w[0].numel()
    with torch.no_grad():
        w.copy_(torch.randn(w.shape, generator=generator) * noise / fan_in**0.5)
        # Causal 3-D convs look back in time: the identity tap is the last time position.
        centre = tuple(k - 1 if (w.dim() == 5 and i == 0) else k // 2 for i, k in enumerate(w.shape[2:]))
        for c in range(min(w.shape[0], w.shape[1])):
            w[(c, c) + centre] += 1.0
        if conv.bias is not None:
            conv.bias.zero_()


def build_tiny_tokenizer(corpus: list[str]):
    """A byte-level BPE tokenizer (no unknown tokens) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_tiny_components(seed: int = 0, corpus: list[str] | None = None) -> dict:
    """Build the tiny transformer, VAE, UMT5 text encoder and tokenizer with seeded random weights."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    preset = PRESETS["tiny"]
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**preset.transformer_config())
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    gen = torch.Generator().manual_seed(seed)
    for module in vae.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            _identity_plus_noise_(module, gen)
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=TINY_VOCAB, d_model=preset.text_dim, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    )
    from fgrpo.data.prompts import bundled_prompt_corpus

    tokenizer = build_tiny_tokenizer(corpus or bundled_prompt_corpus())
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def save_tiny_model(path: str | Path, seed: int = 0) -> Path:
    """Save the tiny preset as a diffusers-format folder (what `WanPipeline.from_pretrained` reads).

    Written to a temporary sibling and renamed, so an interrupted build never leaves a folder
    that looks complete.
    """
    from diffusers import WanPipeline

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    try:
        WanPipeline(**build_tiny_components(seed)).save_pretrained(tmp)
        (tmp / "FGRPO_TINY_VERSION").write_text(f"{TINY_FORMAT_VERSION} seed={seed}\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def tiny_model_path(seed: int = 0) -> Path:
    """The cached tiny model folder, built on first use ($FGRPO_CACHE, default ~/.cache/fgrpo)."""
    cache = Path(os.environ.get("FGRPO_CACHE", Path.home() / ".cache" / "fgrpo"))
    path = cache / f"tiny-wan-v{TINY_FORMAT_VERSION}-seed{seed}"
    marker = path / "FGRPO_TINY_VERSION"
    if not marker.exists():
        save_tiny_model(path, seed)
    return path
