"""The capacity planner against real runs: predicted vs measured peak memory per phase, and FLOPs.

    python benchmarks/plan_vs_measured.py [--configs tiny bench] [--worlds 1 4] [--json OUT.json]

For each model and layout, the parent process plans the recipe (`fgrpo.planner.plan`, fake
tensors on a fake process group, `target="cpu"`: AdamW's for-loop update and no flash-attention
backward workspace, as a CPU run has) and then starts that many worker processes on this machine
(torchrun-style environment, gloo, OMP threads = cores / world, MALLOC_MMAP_THRESHOLD_=65536 so
freed tensors leave the resident set at once). Each worker builds the real `Trainer` and runs one
warm-up step, one measured step and one evaluation (`fgrpo.planner.measure.measure_run`), which
measures, per phase and rank:

  tensors  peak live tensor bytes by torch's MemTracker in real mode (what the planner predicts and
           what torch.cuda.max_memory_allocated reports on a GPU)
  RSS      peak resident-set increase over the process before the model was built (VmHWM reset
           through /proc/self/clear_refs at each phase's start): everything the process holds,
           allocator slack, kernels' scratch and library pages included
  FLOPs    FlopCounterMode over the phase (each rank's local work)

and prints predicted vs measured (the largest rank: rank 0 holds FSDP's largest shards) with the
relative error of each. Goal: tensors within 15 % in every phase, FLOPs equal.

Models: `tiny` (recipes/tiny.py: 0.15M parameters, fp32, full fine-tune, no activation
checkpointing, 5x32x32 videos) and `bench` (the Wan2.1-1.3B block, 1536 wide with 12 heads, 6 of
its 30 blocks: 0.30B parameters, random weights; bf16, LoRA r16, activation checkpointing,
9x128x128 videos (192 tokens), CFG 4.5, 2 prompts x G=2 per step, 2 rollout steps, 2 held-out
videos). Layouts: one process, and four processes as dp_shard=4 and as
dp_shard=2 x tp=2. A benchmark, not a test: a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MiB = 2**20
LAYOUTS = {1: [(1, 1)], 4: [(4, 1), (2, 2)]}  # world -> (dp_shard, tp)
BENCH_PRESET = "bench-wan-0.3b"


def bench_folder() -> Path:
    """The cached random-weight folder of the 0.3B model (Wan2.1-1.3B blocks, 6 of them)."""
    from fgrpo.models.wan.presets import PRESETS
    from fgrpo.models.wan.random_build import random_model_path

    PRESETS.setdefault(BENCH_PRESET, dataclasses.replace(PRESETS["wan2.1-t2v-1.3b"], num_layers=6))
    return random_model_path(BENCH_PRESET)


def recipe_for(config: str, dp_shard: int, tp: int):
    from fgrpo.recipe.config import (
        AlgorithmConfig,
        EvalConfig,
        ModelConfig,
        PromptsConfig,
        Recipe,
        RewardSpec,
        RolloutConfig,
        TimestepConfig,
    )
    from fgrpo.recipe.io import load_recipe_file

    if config == "tiny":
        r = load_recipe_file(str(REPO / "recipes" / "tiny.py"))
    else:
        r = Recipe(
            name="bench",
            model=ModelConfig(preset="wan2.1-t2v-1.3b", path=str(bench_folder()), dtype="bfloat16"),
            rollout=RolloutConfig(
                steps=2, frames=9, height=128, width=128, group_size=2, prompts_per_step=2, micro_batch=2
            ),
            timesteps=TimestepConfig(window=(0, 2)),
            algorithm=AlgorithmConfig(mode="flash"),
            rewards=(RewardSpec(name="brightness"),),
            prompts=PromptsConfig(file="prompts/tiny.txt", heldout=2),
            eval=EvalConfig(steps=2, videos_per_prompt=1),
        )
    return dataclasses.replace(r, parallelism=dataclasses.replace(r.parallelism, dp_shard=dp_shard, tp=tp))


def spec_for(config: str):
    from fgrpo.planner import ModelSpec

    return ModelSpec.from_preset("tiny") if config == "tiny" else ModelSpec.from_folder(bench_folder())


# ----------------------------------------------------------------------------- worker


def worker(args) -> None:
    from fgrpo.distributed import process_group
    from fgrpo.planner.measure import measure_run

    job = json.loads(args.worker)
    recipe = recipe_for(job["config"], job["dp_shard"], job["tp"])
    result = measure_run(recipe, Path(job["run_dir"]))
    rank = int(os.environ.get("RANK", 0))
    Path(job["out"], f"rank-{rank}.json").write_text(json.dumps(result))
    process_group.barrier()
    process_group.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(config: str, world: int, dp_shard: int, tp: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="plan-vs-measured-") as tmp:
        job = {"config": config, "dp_shard": dp_shard, "tp": tp, "run_dir": f"{tmp}/runs/{config}", "out": tmp}
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": str(world),
            "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // world)),
            "MALLOC_MMAP_THRESHOLD_": "65536",
        }
        cmd = [sys.executable, __file__, "--worker", json.dumps(job)]
        procs = [
            subprocess.Popen(
                cmd,
                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for r in range(world)
        ]
        errors = [p.communicate()[1] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"{config} world={world}: a worker failed:\n" + "\n".join(e[-3000:] for e in errors))
        return [json.loads(Path(tmp, f"rank-{r}.json").read_text()) for r in range(world)]


# ----------------------------------------------------------------------------- report


def compare(config: str, world: int, dp_shard: int, tp: int) -> dict:
    from fgrpo.planner import plan

    recipe = recipe_for(config, dp_shard, tp)
    predicted = plan(recipe, world, spec=spec_for(config), target="cpu")
    ranks = measure(config, world, dp_shard, tp)
    rows = []
    for ph in predicted.phases:
        got = [r[ph.name] for r in ranks if ph.name in r]
        tensors, rss = max(g["tensors"] for g in got), max(g["rss"] for g in got)
        rows.append(
            {
                "phase": ph.name,
                "predicted": ph.peak,
                "tensors": tensors,
                "rss": rss,
                "err_tensors": ph.peak / tensors - 1,
                "err_rss": ph.peak / rss - 1,
            }
        )
    flops = []
    names = {"rollout": "rollout", "VAE decode": "VAE decode", "training": "training", "evaluation": "evaluation"}
    for phase, key in names.items():
        if key in predicted.flops:
            counted = ranks[0][phase]["flops"]
            flops.append(
                {
                    "phase": phase,
                    "predicted": predicted.flops[key],
                    "counted": counted,
                    "equal": predicted.flops[key] == counted,
                }
            )
    return {"config": config, "world": world, "dp_shard": dp_shard, "tp": tp, "memory": rows, "flops": flops}


def show(res: dict, goal: float) -> bool:
    ok = True
    print(f"\n== {res['config']}: {res['world']} process(es), dp_shard={res['dp_shard']} x tp={res['tp']} ==")
    print(
        f"{'phase':<14}{'predicted':>10}{'tensors':>10}{'err':>8}{'RSS':>10}{'err':>8}{'RSS-tensors':>13}"
        "   (MiB; measured: max over ranks)"
    )
    for r in res["memory"]:
        within = abs(r["err_tensors"]) <= goal
        ok &= within
        print(
            f"{r['phase']:<14}{r['predicted'] / MiB:>10.2f}{r['tensors'] / MiB:>10.2f}{r['err_tensors']:>+8.1%}"
            f"{r['rss'] / MiB:>10.2f}{r['err_rss']:>+8.1%}{(r['rss'] - r['tensors']) / MiB:>13.1f}"
            f"   {'ok' if within else 'OVER GOAL'}"
        )
    print(f"{'FLOPs':<14}{'predicted':>14}{'counted':>14}")
    for f in res["flops"]:
        ok &= f["equal"]
        print(f"{f['phase']:<14}{f['predicted']:>14.6e}{f['counted']:>14.6e}   {'equal' if f['equal'] else 'DIFFER'}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["tiny", "bench"], choices=["tiny", "bench"])
    ap.add_argument("--worlds", nargs="+", type=int, default=[1, 4], choices=[1, 4])
    ap.add_argument("--goal", type=float, default=0.15, help="largest relative error of tensors allowed (0.15)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    import warnings

    warnings.filterwarnings("ignore")
    results, ok = [], True
    for config in args.configs:
        for world in args.worlds:
            for dp_shard, tp in LAYOUTS[world]:
                res = compare(config, world, dp_shard, tp)
                ok &= show(res, args.goal)
                results.append(res)
    print(f"\nGOAL (tensors within {args.goal:.0%} in every phase, FLOPs equal): {'PASS' if ok else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
