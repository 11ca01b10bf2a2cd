"""metrics.jsonl and the optional trackers (fgrpo.tracking), the live console line, and the
background refresh of RUN/report.html.

Reading metrics back is the run folder's: `RunFolder(run_dir).read_metrics(kind)`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fgrpo.run_folder import RunFolder
from fgrpo.tracking import JsonlTracker, SampleSet, Trackers


class MetricsLog:
    """Rank 0's records (every other rank's calls do nothing): metrics.jsonl first, then the
    trackers `open` adds (after resume has rewound metrics.jsonl)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self.trackers = Trackers(JsonlTracker(path))

    def open(self, trackers: Trackers) -> None:
        self.trackers = trackers

    def write(self, record: dict, samples: SampleSet | None = None) -> None:
        if self.enabled:
            self.trackers.log(record, samples)

    def close(self, exit_code: int = 0) -> None:
        if self.enabled:
            self.trackers.close(exit_code)


class ReportRefresher:
    """`fgrpo report RUN` in a process of its own after each evaluation (logging.report): the
    trainer never waits for it nor imports the report (a layer above), and a failing report never
    stops the run. One at a time; a refresh asked for meanwhile runs when that one ends."""

    def __init__(self, folder: RunFolder):
        self.folder, self.proc, self.pending = folder, None, False

    def refresh(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.pending = True
            return
        self.pending = False
        self.folder.logs.mkdir(parents=True, exist_ok=True)
        with open(self.folder.report_log, "a") as log:
            env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fgrpo", "report", str(self.folder.path), "--quiet"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def finish(self, timeout_s: float = 300) -> bool:
        """Wait for the running refresh (and a pending one): True when the report is current."""
        for _ in range(2):
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    return False
            if not self.pending:
                break
            self.refresh()
        return self.proc is not None and self.proc.returncode == 0


def console_line(m: dict) -> str:
    """The live metrics line: reward, advantage spread, clip fraction, grad norm, timesteps, seconds."""
    ts = ",".join(str(t) for t in m.get("timestep_indices", [])[:12])
    return (
        f"step {m['step']:>5}  reward {m['reward_mean']:+.4f}±{m['reward_std']:.4f}  "
        f"adv_std {m['adv_std']:.3f}  clip {m['clip_frac']:.3f}  gnorm {m['grad_norm']:.3g}  "
        f"t=[{ts}]  rollout {m['time_rollout']:.1f}s reward {m['time_reward']:.1f}s train {m['time_train']:.1f}s"
    )
