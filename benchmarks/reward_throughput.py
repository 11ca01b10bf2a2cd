"""Reward throughput in-process vs through a reward server, and how much scoring the asynchronous
client hides behind rollouts.

    python benchmarks/reward_throughput.py [--reward hpsv3|clip|brightness|simulated] [--videos 64] [--steps 3]

Tiny models only (no downloads): the tiny Wan recipe, and a tiny random HPSv3 (Qwen2-VL; 56x56
frames) or CLIP saved locally as the reward (per frame, mean of the top 30 % of frames, as the
paper aggregates HPSv3), or `brightness`. Tiny rewards cost far less than real ones; `simulated`
stands for a large reward model on accelerators of its own: it sleeps `--ms-per-video` per video
(using no CPU), then scores brightness.
Part 1 scores the same videos in this process and through `fgrpo reward-server` started as a
separate process on localhost (videos per second; the server also pays for uint8 transfer).
Part 2 trains flash steps both ways: with the server, each micro-batch is sent as soon as it is
rolled out. `hidden` = 1 - (time the trainer waited for the server's scores) / (time the same
rewards take in-process): the share of scoring that overlapped rollouts.
`--server-cores N` gives the server the last N CPU cores and the trainer the others (both ways of
scoring then train on the same cores), as a reward server on GPUs of its own would be; without it
the server shares the trainer's cores. A benchmark, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from fgrpo.recipe.config import RewardSpec  # noqa: E402
from fgrpo.recipe.io import load_recipe_file, save_recipe_json  # noqa: E402
from fgrpo.rewards import WeightedRewards  # noqa: E402
from fgrpo.rewards.server import RewardClient  # noqa: E402
from fgrpo.rewards.server_lifecycle import wait_for_server  # noqa: E402
from fgrpo.run_folder import RunFolder  # noqa: E402
from fgrpo.trainer.trainer import Trainer  # noqa: E402
from tests.helpers.tiny_clip_tokenizer import save_tiny_clip  # noqa: E402
from tests.helpers.tiny_qwen2vl import save_tiny_hpsv3  # noqa: E402

R = dataclasses.replace


def simulated(frames: torch.Tensor, prompts: list[str], ms_per_video: float = 20.0) -> torch.Tensor:
    """Brightness after sleeping ms_per_video per video: a reward model busy on other hardware."""
    time.sleep(ms_per_video * len(prompts) / 1000)
    return frames.mean(dim=(1, 2, 3, 4))


def start_server(recipe, tmp: Path, cores: list[int] | None) -> tuple[subprocess.Popen, str]:
    save_recipe_json(recipe, tmp / "recipe.json")
    address = tmp / "address.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(len(cores))} if cores else None
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fgrpo",
            "reward-server",
            "--recipe-file",
            str(tmp / "recipe.json"),
            "--port",
            "0",
            "--address-file",
            str(address),
        ],
        cwd=REPO,
        env=env,
        preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    return proc, wait_for_server(lambda: RunFolder(tmp).read_server_address(address), timeout_s=120, poll_s=0.2)


def throughput(score, frames: torch.Tensor, prompts: list[str], batch: int, repeats: int = 3) -> float:
    """Videos per second, best of `repeats` passes over all videos in batches of `batch`."""
    best = float("inf")
    score(frames[:batch], prompts[:batch])  # warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(prompts), batch):
            score(frames[i : i + batch], prompts[i : i + batch])
        best = min(best, time.perf_counter() - t0)
    return len(prompts) / best


def train_steps(recipe, tmp: Path, steps: int) -> dict[str, float]:
    t = Trainer(recipe, tmp)
    t.connect_rewards()
    samples = []
    for i in range(steps + 1):
        res = t.run_step(t.sampler.next(recipe.rollout.prompts_per_step), lambda: None)
        t.step += 1
        if i:  # the first step warms up
            samples.append(res.metrics)
    assert t.rewards is not None  # connect_rewards connected them
    t.rewards.close()
    keys = ("time_rollout", "time_reward", "time_reward_wait", "time_train")
    return {k: statistics.mean(m[k] for m in samples) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reward", choices=("hpsv3", "clip", "brightness", "simulated"), default="hpsv3")
    ap.add_argument("--ms-per-video", type=float, default=20.0, help="cost of the simulated reward")
    ap.add_argument("--videos", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--server-cores", type=int, default=0, help="pin the server to the last N cores (0: share)")
    args = ap.parse_args()
    server_cores = None
    if args.server_cores:
        cores = sorted(os.sched_getaffinity(0))
        if args.server_cores >= len(cores):
            ap.error(f"--server-cores {args.server_cores}: only {len(cores)} cores, the trainer needs one")
        server_cores = cores[-args.server_cores :]
        os.sched_setaffinity(0, cores[: -args.server_cores])
        torch.set_num_threads(len(cores) - args.server_cores)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        base = load_recipe_file(REPO / "recipes" / "tiny.py")
        prompts_all = [p.strip() for p in (REPO / "prompts" / "tiny.txt").read_text().splitlines() if p.strip()]
        if args.reward == "hpsv3":
            base_dir, ckpt = save_tiny_hpsv3(tmp / "tiny-hpsv3")[:2]
            spec = RewardSpec(
                name="hpsv3",
                args={"model_path": base_dir, "checkpoint": ckpt, "min_pixels": 56 * 56, "max_pixels": 56 * 56},
                frame_aggregation="topk:0.3",
            )
        elif args.reward == "clip":
            words = sorted({w for p in prompts_all for w in p.lower().split() if w.isalpha()})
            spec = RewardSpec(
                name="clip", args={"model_path": save_tiny_clip(tmp / "tiny-clip", words)}, frame_aggregation="topk:0.3"
            )
        elif args.reward == "simulated":
            spec = RewardSpec(name="benchmarks.reward_throughput:simulated", args={"ms_per_video": args.ms_per_video})
        else:
            spec = RewardSpec(name="brightness")
        recipe = R(base, rewards=(spec,), rollout=R(base.rollout, micro_batch=args.micro_batch))
        ro = recipe.rollout
        n = args.videos
        frames = torch.rand(n, ro.frames, 3, ro.height, ro.width, generator=torch.Generator().manual_seed(0))
        prompts = [prompts_all[i % len(prompts_all)] for i in range(n)]
        print(
            f"reward {spec.name} ({spec.frame_aggregation}); videos of {ro.frames} frames at {ro.height}x{ro.width}; "
            f"trainer threads {torch.get_num_threads()}; server cores {server_cores or 'shared'}"
        )

        proc, url = start_server(recipe, tmp, server_cores)
        try:
            local = WeightedRewards(recipe.rewards)
            client = RewardClient(url)
            print(f"\n{'batch':>6}{'in-process v/s':>17}{'server v/s':>13}")
            for batch in (1, args.micro_batch, n):
                a = throughput(local, frames, prompts, batch)
                b = throughput(client.score, frames, prompts, batch)
                print(f"{batch:>6}{a:>17.1f}{b:>13.1f}")

            runs = {
                "in-process": train_steps(recipe, tmp / "a", args.steps),
                "server": train_steps(R(recipe, reward_server=R(recipe.reward_server, url=url)), tmp / "b", args.steps),
            }
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        print(
            f"\nflash steps ({ro.prompts_per_step} prompts x G={ro.group_size}, micro-batch {ro.micro_batch}, "
            f"{args.steps} timed), seconds per step:"
        )
        print(f"{'rewards':<12}{'rollout':>9}{'waited':>9}{'hidden':>8}{'train':>8}{'total':>8}")
        scoring = runs["in-process"]["time_reward_wait"]  # in-process, all scoring is waited for
        for name, m in runs.items():
            hidden = max(0.0, 1 - m["time_reward_wait"] / scoring)
            total = m["time_rollout"] + m["time_reward"] + m["time_train"]
            print(
                f"{name:<12}{m['time_rollout']:>9.3f}{m['time_reward_wait']:>9.3f}"
                f"{hidden:>8.0%}{m['time_train']:>8.3f}{total:>8.3f}"
            )
        print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main()
