"""Errors the ranks raise together, so that they can still act together (save, record, exit).

A rank that fails alone leaves its peers waiting in the next collective until the process
group's timeout. Where a failure is foreseeable on one rank (a reward model raising, a reward
server gone), the ranks first agree that something failed (one all-reduce) and then raise
`CollectiveError` on every rank at the same point; after that, a collective save of the last
completed step is safe. Any other error ends the run without that save on more than one rank.
"""

from __future__ import annotations

from fgrpo.distributed import process_group as dist


class CollectiveError(RuntimeError):
    """Raised on every rank at the same point of the step."""

    consequence = False  # True: this rank's error only reports another rank's (see is_consequence)


class RewardError(CollectiveError):
    """Scoring failed on some rank (a reward that raised or returned NaN, a server gone)."""


class NonFiniteError(CollectiveError):
    """Too many steps in a row with a non-finite loss or gradient."""


class PeerRewardError(RewardError):
    """Scoring failed on another rank; that rank's RewardError says why."""

    consequence = True


def is_consequence(exc: BaseException) -> bool:
    """Whether `exc` only reports another rank's failure: recorded in status.json only when no
    failure of the job is (fgrpo.run_folder.status), so the rank that saw the cause names it."""
    return bool(getattr(exc, "consequence", False))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class Failed:
    """A submitted score that failed; `result()` raises what submitting raised."""

    def __init__(self, error: Exception):
        self.error, self.inline_s = error, 0.0

    def result(self):
        raise self.error


def submit_safely(submit, *args) -> object:
    """`submit(*args)`, or a `Failed` holding its error (raised later, by every rank together)."""
    try:
        return submit(*args)
    except Exception as e:  # noqa: BLE001 - re-raised by agree_on_scores
        return Failed(e)


def agree_on_scores(pending: list) -> list:
    """The scores of `pending`; if scoring failed on any rank, RewardError on every rank."""
    scored, error = [], None
    for p in pending:
        try:
            scored.append(p.result())
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = error or e
    if dist.any_rank(error is not None):
        if error is not None:
            raise RewardError(f"reward scoring failed: {first_line(error)}") from error
        raise PeerRewardError("reward scoring failed on another rank (see that rank's log)")
    return scored
