"""metrics.jsonl (append-only, one JSON object per step) and the live console line.

Reading it back is the run folder's: `RunFolder(run_dir).read_metrics(kind)`.
"""

from __future__ import annotations

import math
from pathlib import Path

from fgrpo.fileio import append_jsonl


class MetricsLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        """One line, fsynced (a crash loses at most the line being written; readers skip a torn one)."""
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        append_jsonl(self.path, clean, fsync=True)


def console_line(m: dict) -> str:
    """The live metrics line: reward, advantage spread, clip fraction, grad norm, timesteps, seconds."""
    ts = ",".join(str(t) for t in m.get("timestep_indices", [])[:12])
    return (
        f"step {m['step']:>5}  reward {m['reward_mean']:+.4f}±{m['reward_std']:.4f}  "
        f"adv_std {m['adv_std']:.3f}  clip {m['clip_frac']:.3f}  gnorm {m['grad_norm']:.3g}  "
        f"t=[{ts}]  rollout {m['time_rollout']:.1f}s reward {m['time_reward']:.1f}s train {m['time_train']:.1f}s"
    )
