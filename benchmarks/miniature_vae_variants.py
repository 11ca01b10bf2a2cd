"""How sharp could the miniature's decoder be? The VAE ceiling of variants of its build.

    python benchmarks/miniature_vae_variants.py --variant steps-x3 [--out /tmp/vae-variants.jsonl]

Trains only the miniature's `AutoencoderKLWan` (fgrpo/miniature/pretrain.py `train_vae`, the
released build's seed and schedule unless the variant changes them) and prints the held-out gold of
its reconstructions of the ground-truth renders (`vae_ceiling_gold`: what a perfect transformer could
reach through that decoder), per attribute, with the training time. The variants are the questions
docs/miniature.md ("Towards a version 2") asks of a version 2:

* `released`: version 1's VAE and steps (the baseline, 0.643 in the released build's quality file);
* `steps-x3`: the same VAE, three times the steps (is the blur undertraining?);
* `wide`: Wan's width proportions (`dim_mult` [1, 2, 4, 4]) at the same steps.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fgrpo.miniature.pretrain import VAE_CONFIG, NoProgress, PretrainConfig, train_vae, vae_ceiling_gold  # noqa: E402
from fgrpo.miniature.world import prompt_sets  # noqa: E402

RELEASED = PretrainConfig()
VARIANTS = {
    "released": (VAE_CONFIG, RELEASED),
    "steps-x3": (
        VAE_CONFIG,
        replace(RELEASED, vae_image_steps=3 * RELEASED.vae_image_steps, vae_video_steps=3 * RELEASED.vae_video_steps),
    ),
    "wide": ({**VAE_CONFIG, "dim_mult": [1, 2, 4, 4]}, RELEASED),
}


@dataclass
class Args:
    variant: Literal["released", "steps-x3", "wide"] = "steps-x3"
    out: Path | None = None
    """Append the result as one JSON line to this file."""


def main(args: Args) -> None:
    vae_config, cfg = VARIANTS[args.variant]
    start = time.perf_counter()
    vae = train_vae(cfg, prompt_sets().pretrain, NoProgress(), vae_config)
    result = {
        "variant": args.variant,
        "vae_config": vae_config,
        "steps": [cfg.vae_image_steps, cfg.vae_video_steps],
        "train_seconds": round(time.perf_counter() - start),
        "vae_ceiling_gold": vae_ceiling_gold(vae),
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        with args.out.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main(tyro.cli(Args))
