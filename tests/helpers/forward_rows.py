"""Counting the transformer calls a rollout makes: the rows of every call made while sampling."""

from __future__ import annotations

import fgrpo.trainer.rollout as rollout_mod


def sampling_forward_rows(monkeypatch, sample_target: str = "fgrpo.trainer.rollout.sample") -> list[int]:
    """Rows of every transformer call made inside `sample` (not the training pass's). `sample_target`:
    the name through which the code under test calls `sample` (the module that imported it)."""
    rows: list[int] = []
    sampling = [False]
    real_velocity, real_sample = rollout_mod.guided_velocity, rollout_mod.sample

    def counting(transformer, x, *a, **kw):
        if sampling[0]:
            rows.append(x.shape[0])
        return real_velocity(transformer, x, *a, **kw)

    def flagged(*a, **kw):
        sampling[0] = True
        try:
            return real_sample(*a, **kw)
        finally:
            sampling[0] = False

    monkeypatch.setattr(rollout_mod, "guided_velocity", counting)
    monkeypatch.setattr(sample_target, flagged)
    return rows
