"""`fgrpo doctor`'s smoke run: one optimizer step of the tiny model on this machine's devices.

It is `fgrpo launch recipes/tiny.py --optim.max-steps 1` (smaller batches, no periodic evaluation)
into a temporary runs folder, run as a user would run it: the same launcher, local backend, trainer
and run folder, one process per GPU (up to 4; one on a CPU-only machine), so NCCL is exercised
where there are GPUs. The tiny model is built into $FGRPO_CACHE on first use (seconds).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fgrpo.run_folder import RunFolder

from .doctor_checks import Check, GpuInfo, plural

RUN_NAME = "doctor-smoke"
# Small and quick: 2 prompts x 4 videos, 2 held-out prompts evaluated before and after, no checkpoint
# but the final one. 8 videos split evenly over 1, 2 or 4 processes.
SMOKE_ARGS = (
    "--optim.max-steps",
    "1",
    "--rollout.prompts-per-step",
    "2",
    "--rollout.group-size",
    "4",
    "--rollout.micro-batch",
    "4",
    "--eval.interval",
    "1000",
    "--eval.steps",
    "2",
    "--eval.videos-per-prompt",
    "1",
    "--prompts.heldout",
    "2",
    "--checkpoint.interval",
    "1000",
)
MAX_PROCESSES = 4


def tiny_recipe_file() -> Path | None:
    """recipes/tiny.py of this fgrpo checkout, else of the current directory (an image's /app)."""
    from fgrpo.data.prompts import REPO_ROOT

    for path in (REPO_ROOT / "recipes" / "tiny.py", Path("recipes") / "tiny.py"):
        if path.is_file():
            return path.absolute()
    return None


def smoke_processes(gpus: int) -> int:
    """One process per GPU, a power of two up to MAX_PROCESSES (the batch splits evenly); 1 on CPU."""
    n = 1
    while n * 2 <= min(gpus, MAX_PROCESSES):
        n *= 2
    return n


def smoke_command(recipe_file: Path, runs_dir: Path, processes: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fgrpo",
        "launch",
        str(recipe_file),
        "--backend",
        "local",
        "--logging.runs-dir",
        str(runs_dir),
        "--logging.run-name",
        RUN_NAME,
        "--launch.procs-per-node",
        str(processes),
        *SMOKE_ARGS,
    ]


def error_line(output: str) -> str:
    """The most telling part of a failed run's output: its last `fgrpo: error:` message (with the
    problems listed under it), else its last line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    starts = [i for i, ln in enumerate(lines) if ln.startswith("fgrpo: error:")]
    if not starts:
        return lines[-1] if lines else "no output"
    return " ".join(lines[starts[-1] : starts[-1] + 4])


def smoke_check(gpus: list[GpuInfo], timeout_s: float = 900.0) -> Check:
    """Run the 1-step tiny run; blocking when it does not complete."""
    recipe_file = tiny_recipe_file()
    if recipe_file is None:
        return Check(
            "smoke run",
            "fail",
            "recipes/tiny.py not found (neither in this fgrpo checkout nor in the "
            "current folder): run `fgrpo doctor` from the fgrpo checkout, or --no-smoke",
        )
    processes = smoke_processes(len(gpus))
    where = plural(processes, "GPU") if gpus else "the CPU"
    with tempfile.TemporaryDirectory(prefix="fgrpo-doctor-") as tmp:
        started = time.monotonic()
        try:
            res = subprocess.run(
                smoke_command(recipe_file, Path(tmp), processes), capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            return Check(
                "smoke run", "fail", f"1 step of the tiny model on {where} did not finish within {timeout_s:g} s"
            )
        took = time.monotonic() - started
        folder = RunFolder(Path(tmp) / RUN_NAME)
        state = folder.read_status().get("state") if folder.path.is_dir() else None
        if res.returncode != 0 or state != "completed":
            return Check(
                "smoke run",
                "fail",
                f"`fgrpo launch {recipe_file.name}` (1 step, {where}) exited "
                f"{res.returncode}, run {state or 'not started'}: {error_line(res.stdout + res.stderr)}",
            )
        train = folder.read_metrics("train")
    reward = f", reward {train[-1]['reward_mean']:.3f}" if train and "reward_mean" in train[-1] else ""
    return Check(
        "smoke run",
        "ok",
        f"1 step of the tiny model ({recipe_file.name}) on {where} in {took:.0f} s, "
        f"{plural(processes, 'process')}{reward}: rollout, reward, training, checkpoint",
    )


__all__ = ["SMOKE_ARGS", "smoke_check", "smoke_command", "smoke_processes", "tiny_recipe_file"]
