"""Seconds per optimizer step for flash, full-trajectory and fast modes, same model and settings.

    python benchmarks/iteration_cost.py [RECIPE.py] [--steps 3] [overrides...]

Builds one trainer per mode in this process (one model, same rollout settings), runs a warm-up
step, then `--steps` timed steps, and prints rollout / reward / train seconds per step and the
ratios to flash. A benchmark, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fgrpo.recipe.io import load_recipe_file  # noqa: E402
from fgrpo.trainer.flash_grpo import flash_grpo_step  # noqa: E402
from fgrpo.trainer.trainer import Trainer  # noqa: E402

MODES = ("flash", "full-trajectory", "fast")


def time_mode(recipe, mode: str, steps: int) -> dict[str, float]:
    r = dataclasses.replace(recipe, algorithm=dataclasses.replace(recipe.algorithm, mode=mode))
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(r, Path(tmp))
        samples = []
        for i in range(steps + 1):
            res = flash_grpo_step(t, t.sampler.next(r.rollout.prompts_per_step), lambda: None)
            t.step += 1
            if i > 0:  # first step is warm-up
                samples.append(res.metrics)
    keys = ("time_rollout", "time_reward", "time_train")
    return {k: statistics.mean(m[k] for m in samples) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?", default=str(REPO / "recipes" / "tiny.py"))
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    recipe = load_recipe_file(args.recipe)
    print(f"recipe {args.recipe}: {recipe.rollout.steps} steps, {recipe.rollout.prompts_per_step} prompts x "
          f"G={recipe.rollout.group_size}, {recipe.rollout.frames}x{recipe.rollout.height}x{recipe.rollout.width}, "
          f"{args.steps} timed steps per mode")
    results = {m: time_mode(recipe, m, args.steps) for m in MODES}
    flash = results["flash"]
    print(f"{'mode':<16}{'rollout s':>10}{'reward s':>10}{'train s':>10}{'total s':>10}{'x flash':>9}")
    for mode, r in results.items():
        total = sum(r.values())
        print(f"{mode:<16}{r['time_rollout']:>10.3f}{r['time_reward']:>10.3f}{r['time_train']:>10.3f}"
              f"{total:>10.3f}{total / sum(flash.values()):>9.2f}")
    print(f"train-phase ratio full-trajectory / flash: {results['full-trajectory']['time_train'] / flash['time_train']:.2f}")


if __name__ == "__main__":
    main()
