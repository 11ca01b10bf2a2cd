"""Seconds per optimizer step for flash, full-trajectory and fast modes, same model and settings.

    python benchmarks/iteration_cost.py [RECIPE.py] [--steps 3] [--section.field VALUE ...]

Any recipe field can be overridden as with `fgrpo launch` (e.g. `--rollout.steps 20`). Builds
one trainer per mode in this process (same model, same rollout settings), runs a warm-up step,
then `--steps` timed steps, and prints rollout / reward / train seconds per step, the ratios to
flash, and beside the measured full/flash ratio the analytic bound
(rollout + T·train) / (rollout + train) from flash's own phase times (T = rollout.steps:
full-trajectory trains every denoising step, flash one). A benchmark, not a
test: numbers depend on the machine.

On the compute-bound CPU model of rollout_vs_pipeline.py (benchmarks/cpu_model.py) at T = 20:

    python benchmarks/cpu_model.py /tmp/cpu-model
    python benchmarks/iteration_cost.py --model.path /tmp/cpu-model --model.max-text-tokens 512 \
        --rollout.steps 20 --rollout.cfg-scale 4.5 --rollout.frames 17 --rollout.height 96 \
        --rollout.width 96 --rollout.prompts-per-step 2 --rollout.group-size 4 --rollout.micro-batch 8 \
        --timesteps.window 0 10 --eval.interval 1000 --steps 1
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import tyro

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fgrpo.recipe.config import Recipe  # noqa: E402
from fgrpo.recipe.io import load_recipe_file  # noqa: E402

MODES = ("flash", "full-trajectory", "fast")


@dataclasses.dataclass
class BenchArgs:
    recipe: Annotated[Recipe, tyro.conf.arg(name="")]
    steps: int = 3
    """Timed steps per mode (after one warm-up step)."""


def time_mode(recipe: Recipe, mode: str, steps: int) -> dict[str, float]:
    from fgrpo.trainer.trainer import Trainer

    r = dataclasses.replace(recipe, algorithm=dataclasses.replace(recipe.algorithm, mode=mode))
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(r, Path(tmp) / "run")
        t.connect_rewards()
        samples = []
        for i in range(steps + 1):
            res = t.run_step(t.sampler.next(r.rollout.prompts_per_step), lambda: None)
            t.step += 1
            if i > 0:  # the first step is warm-up
                samples.append(res.metrics)
        assert t.rewards is not None  # connect_rewards connected them
        t.rewards.close()
    keys = ("time_rollout", "time_reward", "time_train")
    return {k: statistics.mean(m[k] for m in samples) for k in keys}


def main(argv: list[str]) -> None:
    path = argv[0] if argv and not argv[0].startswith("-") else str(REPO / "recipes" / "tiny.py")
    rest = argv[1:] if argv and not argv[0].startswith("-") else argv
    base = load_recipe_file(path)
    args = tyro.cli(
        BenchArgs, default=BenchArgs(recipe=base), args=rest, prog=f"iteration_cost.py {path}", description=__doc__
    )
    recipe = args.recipe
    ro = recipe.rollout
    print(
        f"recipe {path}: T={ro.steps} steps, {ro.prompts_per_step} prompts x G={ro.group_size}, "
        f"{ro.frames}x{ro.height}x{ro.width}, {args.steps} timed steps per mode"
    )
    results = {m: time_mode(recipe, m, args.steps) for m in MODES}
    flash = results["flash"]
    print(f"{'mode':<16}{'rollout s':>10}{'reward s':>10}{'train s':>10}{'total s':>10}{'x flash':>9}")
    for mode, r in results.items():
        total = sum(r.values())
        print(
            f"{mode:<16}{r['time_rollout']:>10.3f}{r['time_reward']:>10.3f}{r['time_train']:>10.3f}"
            f"{total:>10.3f}{total / sum(flash.values()):>9.2f}"
        )
    rollout = flash["time_rollout"] + flash["time_reward"]
    bound = (rollout + ro.steps * flash["time_train"]) / (rollout + flash["time_train"])
    measured = sum(results["full-trajectory"].values()) / sum(flash.values())
    print(
        f"full-trajectory / flash: measured {measured:.2f}, analytic (rollout + T*train)/(rollout + train) "
        f"with T={ro.steps}: {bound:.2f}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
