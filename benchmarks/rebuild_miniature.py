"""Rebuild the miniature model from its script and compare it with the released (committed) build.

    python benchmarks/rebuild_miniature.py [--out /tmp/miniature-rebuild] [--seed 0]

The released weights (fgrpo/miniature/released/, 5 MB) are what a fresh machine copies instead of
pre-training for 10 minutes; this is the check that the script still produces a model of the same
quality: it pre-trains with the builder's defaults (MINIATURE_VERSION, `fgrpo make-miniature PATH`),
then prints the held-out gold faithfulness per attribute of both builds (and the VAE's ceiling) and,
per weight file, whether the tensors are bitwise equal (else the largest difference). Exits 1 when
an attribute's held-out gold differs by more than `--tolerance` (a build on another CPU or thread
count may round differently: the quality, not the bits, is what must be reproduced).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fgrpo.miniature.pretrain import QUALITY_FILE, PretrainConfig, pretrain, released_model_folder  # noqa: E402

WEIGHTS = (
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
)


@dataclass
class Args:
    out: str = "/tmp/miniature-rebuild"
    """Folder the rebuild is written to (replaced)."""
    seed: int = 0
    tolerance: float = 0.05
    """Largest difference in any attribute's held-out gold (24 prompts x 2 videos) counted as the same quality."""


def weight_differences(a: Path, b: Path) -> dict[str, float]:
    """Per weight file: the largest absolute difference over its tensors (0.0: bitwise equal)."""
    from safetensors.torch import load_file

    out = {}
    for name in WEIGHTS:
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys(), name
        out[name] = max(float((x[k].double() - y[k].double()).abs().max()) for k in x)
    return out


def main(args: Args) -> int:
    released = released_model_folder(args.seed)
    rebuilt = pretrain(args.out, PretrainConfig(seed=args.seed))
    q_released = json.loads((released / QUALITY_FILE).read_text())
    q_rebuilt = json.loads((rebuilt / QUALITY_FILE).read_text())
    print(f"rebuild: {q_rebuilt['build_seconds']:.0f} s ({q_rebuilt['phase_seconds']})")
    worst = 0.0
    print("| held-out gold | released | rebuilt | difference |\n|---|---|---|---|")
    for table in ("heldout_gold", "vae_ceiling_gold"):
        for attr, value in q_released[table].items():
            diff = q_rebuilt[table][attr] - value
            worst = max(worst, abs(diff))
            print(f"| {table}.{attr} | {value:.4f} | {q_rebuilt[table][attr]:.4f} | {diff:+.4f} |")
    for name, diff in weight_differences(released, rebuilt).items():
        print(f"{name}: " + ("bitwise equal" if diff == 0 else f"largest difference {diff:.3g}"))
    same = worst <= args.tolerance
    print(f"same quality (every attribute within {args.tolerance}): {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
