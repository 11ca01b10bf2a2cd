"""Slurm latency on the local cluster (scripts/slurm-local.sh start): launch -> first step, and a
preemption (USR2) -> first step after the requeued job resumes, with optimizer steps lost.

    python benchmarks/slurm_latency.py [--nodes 2] [--procs-per-node 2]

A benchmark, not a test: numbers depend on the machine and the cluster's settings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fgrpo.run_folder import RunFolder  # noqa: E402


def train_records(run: Path) -> list[dict]:
    return RunFolder(run).read_metrics("train")


def wait(pred, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise TimeoutError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--procs-per-node", type=int, default=2)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fgrpo-bench-"))
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "fgrpo", "launch", str(REPO / "recipes" / "tiny.py"), "--backend", "slurm",
                    "--launch.nodes", str(a.nodes), "--launch.procs-per-node", str(a.procs_per_node),
                    "--logging.runs-dir", str(tmp), "--optim.max-steps", "30", "--checkpoint.interval", "1000",
                    "--eval.interval", "1000", "--launch.signal-delay-s", "30"], check=True, cwd=tmp,
                   stdout=subprocess.DEVNULL)
    run = tmp / "tiny"
    job = json.loads((run / "jobs.jsonl").read_text().splitlines()[-1])["job_id"]
    first = wait(lambda: train_records(run))[0]
    # A record is written when its step ends; subtract its own duration to get the step's start.
    step_time = first["time_rollout"] + first["time_reward"] + first["time_train"]
    print(f"launch -> first training step starts: {first['time'] - step_time - t0:.1f} s "
          f"(ends {first['time'] - t0:.1f} s; step takes {step_time:.1f} s)")
    wait(lambda: len(train_records(run)) >= 3)
    t_sig = time.time()
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    before = wait(lambda: (json.loads((run / "status.json").read_text()).get("state") == "stopped"
                           if (run / "status.json").exists() else False) and train_records(run))
    done_before = before[-1]["step"]
    after = wait(lambda: [r for r in train_records(run) if r["time"] > t_sig and r["step"] > done_before])[0]
    after_time = after["time_rollout"] + after["time_reward"] + after["time_train"]
    lost = done_before - (after["step"] - 1)
    print(f"USR2 -> first step after resume starts: {after['time'] - after_time - t_sig:.1f} s "
          f"(ends {after['time'] - t_sig:.1f} s)")
    print(f"optimizer steps completed before the signal: {done_before}; resumed at step {after['step']}; "
          f"steps lost: {lost}")
    subprocess.run(["scancel", job])


if __name__ == "__main__":
    main()
