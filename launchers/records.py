"""What a run folder records about its jobs: which backend, which job ids (jobs.jsonl)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fgrpo.trainer.checkpoint import latest_checkpoint
from fgrpo.trainer.entry import read_status
from fgrpo.trainer.metrics import read_metrics


def record_job(run_dir: Path, backend: str, job_id: str, kind: str) -> None:
    """Append one submission; the newest line is the job `status`, `logs` and `cancel` act on."""
    with (Path(run_dir) / "jobs.jsonl").open("a") as f:
        f.write(json.dumps({"backend": backend, "job_id": str(job_id), "kind": kind, "time": time.time()}) + "\n")


def jobs(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "jobs.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


SERVER_KIND = "reward-server"  # a reward server the backend started beside the training job


def latest_job(run_dir: Path) -> dict | None:
    """The newest training job (what `status`, `logs`, `cancel` and `resume` act on)."""
    found = [j for j in jobs(run_dir) if j["kind"] != SERVER_KIND]
    return found[-1] if found else None


def server_jobs(run_dir: Path) -> list[dict]:
    """Reward-server jobs started for the run, oldest first."""
    return [j for j in jobs(run_dir) if j["kind"] == SERVER_KIND]


def progress(run_dir: Path) -> dict:
    """Last step, reward, held-out reward and checkpoint, read from the run folder alone."""
    records = read_metrics(Path(run_dir) / "metrics.jsonl")
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    ckpt = latest_checkpoint(Path(run_dir) / "checkpoints")
    return {
        "step": train[-1]["step"] if train else 0,
        "reward": train[-1]["reward_mean"] if train else None,
        "heldout": evals[-1]["eval_reward"] if evals else None,
        "checkpoint": ckpt[0] if ckpt else None,
        "status": read_status(run_dir),
    }


CANCEL_MARKER = "CANCEL_REQUESTED"


def request_cancel(run_dir: Path, job_id: str) -> None:
    """Recorded before the scheduler is asked: a job stopped by `fgrpo cancel` must not requeue."""
    (Path(run_dir) / CANCEL_MARKER).write_text(json.dumps({"job_id": job_id, "time": time.time()}))


def cancel_requested(run_dir: Path) -> bool:
    return (Path(run_dir) / CANCEL_MARKER).exists()


def clear_cancel(run_dir: Path) -> None:
    (Path(run_dir) / CANCEL_MARKER).unlink(missing_ok=True)
