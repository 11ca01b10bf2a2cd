"""Build and save diffusers-format Wan2.1 T2V folders with a preset's real architecture and random weights.

No weights can be downloaded on CPU test machines, so tests that need the real 1.3B transformer
(shapes, memory, sharded loading, tensor parallel on 12 heads) get one built here: the preset's
exact `WanTransformer3DModel`, random weights, plus a small UMT5 text encoder whose output width is
the preset's `text_dim` and the small Wan VAE of the `tiny` preset (same latent interface: 16
channels, 4x temporal / 8x spatial). Everything is loaded back through `from_pretrained`, the same
path real Wan weights take. The `tiny` preset (tiny.py) is built by this same code.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, cast

import torch
import torch.nn as nn

from fgrpo.fileio import atomic_folder

from .presets import PRESETS

RANDOM_FORMAT_VERSION = 1  # bump when what save_random_model writes changes, so caches are rebuilt
RANDOM_MARKER = "FGRPO_RANDOM_VERSION"
TOKENIZER_VOCAB = 384
DEFAULT_SHARD_SIZE = "1GB"  # the 1.3B transformer (2.8 GB in bf16) lands in several shards
INIT_STD = 0.02


@dataclass(frozen=True)
class TextEncoderSpec:
    """A small UMT5 encoder: only `d_model` (the preset's text_dim) must match the transformer."""

    d_kv: int = 64
    d_ff: int = 256
    num_layers: int = 1
    num_heads: int = 4


# The small Wan VAE every random build uses (same latent interface as Wan2.1's: 16 channels, 4x
# temporal / 8x spatial), as `AutoencoderKLWan` keyword arguments.
SMALL_VAE_CONFIG: dict[str, Any] = dict(
    base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
)


def text_encoder_config(spec: TextEncoderSpec, d_model: int) -> dict:
    """`UMT5Config` keyword arguments of a random build's text encoder of width `d_model`."""
    return dict(
        vocab_size=TOKENIZER_VOCAB,
        d_model=d_model,
        d_kv=spec.d_kv,
        d_ff=spec.d_ff,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
    )


def identity_plus_noise_(conv: nn.Conv2d | nn.Conv3d, generator: torch.Generator, noise: float = 0.3) -> None:
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


def build_tokenizer(corpus: list[str], vocab_size: int = TOKENIZER_VOCAB):
    """A byte-level BPE tokenizer (no unknown tokens) wrapped as a transformers fast tokenizer.

    Trained locally on the prompt corpus because no real UMT5 tokenizer can be downloaded.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def storage_dtype(param_name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype `WanTransformer3DModel.from_pretrained(torch_dtype=dtype)` gives this parameter.

    diffusers keeps `_keep_in_fp32_modules` (time embedder, scale-shift tables, norm2) in float32
    whatever `torch_dtype` says; matching that rule (same name test as diffusers' loader) makes an
    in-process build behave like a loaded one and saves those tensors losslessly.
    """
    from diffusers import WanTransformer3DModel

    parts = param_name.split(".")
    return torch.float32 if any(m in parts for m in WanTransformer3DModel._keep_in_fp32_modules) else dtype


def fast_random_transformer(preset: str, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """The preset's WanTransformer3DModel with cheap seeded random weights, allocated once in `dtype`.

    Why not the default init: for 1.3B it runs in float32 over 1.42B parameters (slow, 5.7 GB).
    Instead the model is built on the meta device, each parameter's dtype is set there (free),
    memory is allocated once, and parameters are filled from one seeded generator: weights
    N(0, 0.02), biases 0, other 1-D parameters (the RMS/LayerNorm weights) 1. `to_empty` leaves the
    non-persistent rotary tables (`rope.freqs_cos/sin`, never saved) as garbage, so `rope` is
    rebuilt for real; any other non-persistent buffer would be an error, not silent garbage.
    """
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    with torch.device("meta"):
        model = WanTransformer3DModel(**PRESETS[preset].transformer_config())
    owners = {name for name, mod in model.named_modules() if mod._non_persistent_buffers_set}
    if owners != {"rope"}:
        raise RuntimeError(f"non-persistent buffers outside `rope` would be left uninitialised: {owners}")
    for name, p in model.named_parameters():
        p.data = p.data.to(storage_dtype(name, dtype))
    model.to_empty(device="cpu")
    cfg = model.config
    model.rope = WanRotaryPosEmbed(cfg["attention_head_dim"], cfg["patch_size"], cfg["rope_max_seq_len"])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, INIT_STD, generator=gen)
    return model


def build_components(
    preset: str,
    seed: int = 0,
    *,
    text: TextEncoderSpec = TextEncoderSpec(),
    dtype: torch.dtype = torch.bfloat16,
    fast_init: bool = True,
    corpus: list[str] | None = None,
    vae_config: dict[str, Any] | None = None,
) -> dict:
    """Transformer, VAE, UMT5 text encoder, tokenizer and scheduler: the components of a WanPipeline.

    The transformer and text encoder are in `dtype`, except the transformer's keep-in-fp32 modules;
    the VAE is float32 (loading.py always runs it in float32), built from `vae_config`
    (AutoencoderKLWan's keyword arguments; default SMALL_VAE_CONFIG) with identity-plus-noise convs.
    `fast_init=False` uses the models' default init drawn from the global RNG in this exact order,
    which is how the `tiny` preset has always been built (its weights must not change for a given
    seed).
    """
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    torch.manual_seed(seed)
    if fast_init:
        transformer = fast_random_transformer(preset, seed, dtype)
    else:
        transformer = WanTransformer3DModel(**PRESETS[preset].transformer_config())
        for name, p in transformer.named_parameters():
            p.data = p.data.to(storage_dtype(name, dtype))
    vae = AutoencoderKLWan(**(SMALL_VAE_CONFIG if vae_config is None else vae_config))
    gen = torch.Generator().manual_seed(seed)
    for module in vae.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            identity_plus_noise_(module, gen)
    text_encoder = UMT5EncoderModel(UMT5Config(**text_encoder_config(text, PRESETS[preset].text_dim)))
    # transformers wraps `to` with functools.wraps(Module.to), which pyright reads as the unbound method
    text_encoder = cast(nn.Module, text_encoder).to(dtype)
    from fgrpo.data.prompts import bundled_prompt_corpus

    tokenizer = build_tokenizer(corpus or bundled_prompt_corpus())
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def save_components(
    path: str | Path,
    components: dict,
    marker: str,
    marker_text: str,
    max_shard_size: str | None = None,
    pipeline: str = "WanPipeline",
) -> Path:
    """Save a WanPipeline folder (safetensors) plus a marker file, atomically.

    Written to a temporary sibling and renamed, so an interrupted build never leaves a folder that
    looks complete. `components` may also hold WanPipeline's own config arguments (Wan2.2-TI2V's
    `expand_timesteps=True`, which model_index.json then records). `max_shard_size` is passed to
    each component's save_pretrained (diffusers' default is 10GB: one file); sharded components get
    a `*.safetensors.index.json`. `pipeline`: the diffusers class model_index.json names
    (`WanImageToVideoPipeline` for a folder with image_encoder/ and image_processor/).
    """
    import diffusers

    path = Path(path)
    with atomic_folder(path) as tmp:
        kw: dict[str, Any] = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        getattr(diffusers, pipeline)(**components).save_pretrained(tmp, **kw)
        (tmp / marker).write_text(marker_text)
    return path


def cache_dir() -> Path:
    """$FGRPO_CACHE, default ~/.cache/fgrpo."""
    return Path(os.environ.get("FGRPO_CACHE", Path.home() / ".cache" / "fgrpo"))


def cached_build(name: str, marker: str, marker_text: str, build: Callable[[Path], object]) -> Path:
    """`cache_dir()/name`, calling `build(path)` unless its marker file already says `marker_text`.

    A file lock makes concurrent callers (e.g. every rank of a job) wait for one build instead of
    each writing gigabytes and renaming over a folder another is reading.
    """
    path = cache_dir() / name
    if _marked(path, marker, marker_text):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _marked(path, marker, marker_text):
            build(path)
    return path


def _marked(path: Path, marker: str, marker_text: str) -> bool:
    try:
        return (path / marker).read_text() == marker_text
    except OSError:
        return False


def _random_marker_text(preset: str, seed: int, text_layers: int, dtype: torch.dtype) -> str:
    return f"{RANDOM_FORMAT_VERSION} preset={preset} seed={seed} text_layers={text_layers} dtype={dtype}\n"


def save_random_model(
    path: str | Path,
    preset: str,
    seed: int = 0,
    text_layers: int = 1,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_size: str | None = DEFAULT_SHARD_SIZE,
) -> Path:
    """Save `preset`'s real transformer architecture with random weights as a diffusers folder.

    The transformer goes to `transformer/diffusion_pytorch_model-0000i-of-0000n.safetensors` with
    `diffusion_pytorch_model.safetensors.index.json` when it exceeds `max_shard_size` (1.3B at 1GB:
    3 shards), so loaders that read shards per rank can be tested.
    """
    components = build_components(preset, seed, text=TextEncoderSpec(num_layers=text_layers), dtype=dtype)
    marker_text = _random_marker_text(preset, seed, text_layers, dtype)
    return save_components(path, components, RANDOM_MARKER, marker_text, max_shard_size)


def random_model_path(preset: str, seed: int = 0) -> Path:
    """The cached random-weight folder of `preset` (defaults of save_random_model), built on first use."""
    text_layers, dtype = 1, torch.bfloat16
    return cached_build(
        f"random-{preset}-v{RANDOM_FORMAT_VERSION}-seed{seed}",
        RANDOM_MARKER,
        _random_marker_text(preset, seed, text_layers, dtype),
        lambda path: save_random_model(path, preset, seed, text_layers, dtype),
    )
