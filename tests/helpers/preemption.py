"""Preemptions injected at a chosen point of an in-process training run."""

import signal

from fgrpo.trainer import flash_grpo
from fgrpo.trainer.signals import StopFlag


def stop_while_scoring(monkeypatch, stop: StopFlag, at_call: int) -> None:
    """A preemption (SIGTERM) that arrives while the `at_call`-th batch of rewards is gathered: a
    step's own batch, or, with rollout.refill_zero_variance, one of its refill rounds'."""
    calls = {"n": 0}
    real = flash_grpo.agree_on_scores

    def scoring(pending):
        calls["n"] += 1
        if calls["n"] == at_call:
            stop.signum = signal.SIGTERM
        return real(pending)

    monkeypatch.setattr(flash_grpo, "agree_on_scores", scoring)
