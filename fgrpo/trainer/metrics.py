"""metrics.jsonl (append-only, one JSON object per step) and the live console line."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()
            os_fsync(f)


def os_fsync(f) -> None:
    import os

    try:
        os.fsync(f.fileno())
    except OSError:  # some network filesystems refuse fsync; the line is still written
        pass


def read_metrics(path: Path) -> list[dict]:
    """Records of a metrics.jsonl; a torn last line (crash mid-write) is ignored."""
    out = []
    if not Path(path).exists():
        return out
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def console_line(m: dict) -> str:
    """The live metrics line: reward, advantage spread, clip fraction, grad norm, timesteps, seconds."""
    ts = ",".join(str(t) for t in m.get("timestep_indices", [])[:12])
    return (
        f"step {m['step']:>5}  reward {m['reward_mean']:+.4f}±{m['reward_std']:.4f}  "
        f"adv_std {m['adv_std']:.3f}  clip {m['clip_frac']:.3f}  gnorm {m['grad_norm']:.3g}  "
        f"t=[{ts}]  rollout {m['time_rollout']:.1f}s reward {m['time_reward']:.1f}s train {m['time_train']:.1f}s"
    )
