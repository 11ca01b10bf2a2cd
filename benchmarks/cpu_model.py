"""The compute-bound CPU benchmark model: a Wan-architecture transformer (6 blocks, width 256,
FFN 1024, text width 256: 7.0 M parameters) with random weights, saved as a complete diffusers
folder (the small VAE and a 1-layer UMT5 of width 256 from fgrpo's random builds), so both
`WanPipeline.from_pretrained` and `fgrpo launch --model.path` read it. Built from config: no
download.

    python benchmarks/cpu_model.py DIR      # writes the folder; then, e.g.
    python benchmarks/iteration_cost.py --model.path DIR --rollout.steps 20 ...

Used by rollout_vs_pipeline.py and iteration_cost.py (the issue's "same CPU model").
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# WanTransformer3DModel's keyword arguments (values of mixed types).
TRANSFORMER: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=8,
    attention_head_dim=32,
    in_channels=16,
    out_channels=16,
    text_dim=256,
    freq_dim=256,
    ffn_dim=1024,
    num_layers=6,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=1024,
)


def save_cpu_model(folder: str | Path, seed: int = 0) -> Path:
    """Write the folder (transformer in bf16 storage with Wan's fp32 modules, as a real checkpoint
    loads; weights from diffusers' default init under `seed`)."""
    from diffusers import WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from fgrpo.models.wan.random_build import (
        TextEncoderSpec,
        build_components,
        save_components,
        storage_dtype,
        text_encoder_config,
    )

    components = build_components("tiny", seed)  # the small VAE, tokenizer and scheduler
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**TRANSFORMER)
    for name, p in transformer.named_parameters():
        p.data = p.data.to(storage_dtype(name, torch.bfloat16))
    components["transformer"] = transformer
    components["text_encoder"] = UMT5EncoderModel(
        UMT5Config(**text_encoder_config(TextEncoderSpec(), TRANSFORMER["text_dim"]))
    ).bfloat16()  # as .to(torch.bfloat16), which transformers' stubs mistype
    return save_components(folder, components, "FGRPO_CPU_BENCH_MODEL", f"seed {seed}")


def parameter_count() -> int:
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        return sum(p.numel() for p in WanTransformer3DModel(**TRANSFORMER).parameters())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(save_cpu_model(sys.argv[1]))
