"""The rules of status.json beyond writing it: which failure a job records, and whether a running
run has stalled (heartbeat.json). Pure functions of the records and the time; RunFolder reads and
writes the files.

The first failure of a job stays: it is the cause, a peer's error in a collective (gloo's
"connection closed" once the failed rank has gone, a timeout) its consequence. A failing rank
records before it leaves the process group, so its peers' errors, which its leaving triggers,
come later. A failure that only reports another rank's ("... on another rank") is a
`consequence`: it is recorded only when nothing else is, and a cause replaces it.

RUN/heartbeat.json = {"step", "time", "longest_gap_s", "owner"}, written atomically by rank 0
after every finished step (one whose update was skipped as non-finite counts too: every rank got
through it). `longest_gap_s` is the longest time between two finished steps of this job (owner:
rank 0's host:pid:start), evaluations and checkpoint saves in between included.

A run whose status says running is shown as *stalled* once nothing has finished for longer than

    STALL_FACTOR x max(launch.collective_timeout_s, longest_gap_s)

counted from its last finished step, or from the job's start before its first (with a previous
job's longest gap, the best guess of this run's; none for a fresh run). Why: a healthy
run finishes a step at least every longest_gap_s, and a rank stalled in a collective makes its
peers fail within collective_timeout_s. A run quiet for twice the longer of the two is neither
progressing nor failing: a process hung outside any collective (a filesystem that stopped
answering, a deadlock in one rank's own threads), which no timeout of the process group ends. A
fresh run's first step has no gap to go by, so a start slower than 2 x collective_timeout_s (a
large model from a slow filesystem, a launched reward server loading) reads stalled until it.
Reading all this writes nothing: stalled is shown, never recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

STALL_FACTOR = 2.0


def keeps_failure(held: dict, since: float, consequence: bool) -> bool:
    """Whether status `held` keeps its place against a new failure: it is a failure of this job
    (written at or after `since`, the job's start), and either the new failure is a consequence
    or the held one is not."""
    time = _number(held.get("time"))
    return (
        held.get("state") == "failed"
        and time is not None
        and time >= since
        and (consequence or not held.get("consequence"))
    )


def next_beat(previous: dict | None, step: int, now: float, owner: str) -> dict:
    """The heartbeat of `step`, finished at `now`. The gap to the previous beat counts only within
    one job: the time from a job's start to its first step is loading, not a step."""
    prev = previous if isinstance(previous, dict) else {}
    same_job = prev.get("owner") == owner and _number(prev.get("time")) is not None
    longest = max(_number(prev.get("longest_gap_s")) or 0.0, now - prev["time"]) if same_job else 0.0
    return {"step": step, "time": now, "longest_gap_s": longest, "owner": owner}


@dataclass(frozen=True)
class Liveness:
    """How long a running run has gone without finishing a step."""

    step: int | None  # its job's last finished step; None before the first
    quiet_s: float  # seconds since that step (or since the job started)
    stall_after_s: float

    @property
    def stalled(self) -> bool:
        return self.quiet_s > self.stall_after_s


def liveness(status: dict, heartbeat: dict | None, collective_timeout_s: float, now: float) -> Liveness | None:
    """The liveness of a run whose `status` is live (starting, running); None otherwise, or when
    the status carries no time. A heartbeat's step and time count only if the status's job wrote
    it; before that, a previous job's longest gap still tells how long this run's steps take."""
    if status.get("state") not in ("starting", "running") or _number(status.get("time")) is None:
        return None
    beat = heartbeat if isinstance(heartbeat, dict) else {}
    gap = _number(beat.get("longest_gap_s")) or 0.0
    if (
        beat.get("owner") == status.get("owner")
        and _number(beat.get("time")) is not None
        and isinstance(beat.get("step"), int)
    ):
        since, step = beat["time"], beat["step"]
    else:
        since, step = status["time"], None
    return Liveness(step, max(0.0, now - since), STALL_FACTOR * max(collective_timeout_s, gap))


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
