"""The report's "Guardrails" section: the held-out videos' pixel statistics that each evaluation
records as `guard/<name>` (defined in fgrpo.trainer.guardrails, which the report does not import:
it reads the names from the records): one run's values before and at the latest evaluation with a
chart over steps; several runs' values at their latest evaluation side by side.
"""

from __future__ import annotations

import html

from .charts import AXES, PALETTE, figure, points
from .data import RunData
from .render import fmt, table

PREFIX = "guard/"  # fgrpo.trainer.guardrails.PREFIX
DRIFT = "_drift"


def guard_names(runs: list[RunData]) -> list[str]:
    """The guard metrics (not their drifts) any of the runs' evaluations recorded, in record order."""
    names = {k: None for r in runs for e in r.evals for k in e if k.startswith(PREFIX) and not k.endswith(DRIFT)}
    return list(names)


def _label(key: str) -> str:
    return key[len(PREFIX) :]


def guardrail_table(runs: list[RunData]) -> str | None:
    """One run: each metric before, latest, and the change; several: each run's latest values. None
    when no evaluation recorded guard metrics (a run from before they existed)."""
    names = guard_names(runs)
    if not names:
        return None
    note = (
        "<p>Pixel statistics of the held-out videos (mean over videos), no model: motion, flicker, "
        "brightness, saturation, contrast, colour entropy, edge density, and the diversity among each "
        "prompt's videos. Definitions: <code>fgrpo/trainer/guardrails.py</code>.</p>"
    )
    if len(runs) == 1:
        run = runs[0]
        before = next((e for e in run.evals if e.get("tag") == "before"), None) or {}
        latest = run.evals[-1]
        rows = []
        for k in names:
            b, a = before.get(k), latest.get(k)
            change = a - b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
            rows.append([html.escape(_label(k)), fmt(b, ".4f"), fmt(a, ".4f"), fmt(change)])
        tag = html.escape(str(latest.get("tag", "latest")))
        return table(["metric", "before", tag, "change"], rows) + note
    rows = []
    for r in runs:
        latest = r.evals[-1] if r.evals else {}
        rows.append([html.escape(r.label or r.name)] + [fmt(latest.get(k), ".4f") for k in names])
    return table(["run (latest evaluation)", *(_label(k) for k in names)], rows) + note


def guardrail_chart(run: RunData) -> dict | None:
    """One run's guard metrics against step (all in [0, 1]), None when it recorded none."""
    data = []
    for i, k in enumerate(guard_names([run])):
        xs, ys = points(run.evals, k)
        data.append(
            {
                "x": xs,
                "y": ys,
                "name": _label(k),
                "mode": "lines+markers",
                "line": {"color": PALETTE[i % len(PALETTE)]},
            }
        )
    if not data:
        return None
    return figure("guardrails", "Guardrails: held-out video statistics", data, AXES["step"], "value")


def with_guardrail_chart(charts: list[dict], runs: list[RunData]) -> list[dict]:
    """`charts` with one run's guardrail chart right after its held-out reward chart."""
    guard = guardrail_chart(runs[0]) if len(runs) == 1 else None
    if guard is None:
        return charts
    at = next((i + 1 for i, c in enumerate(charts) if c["id"] == "heldout-reward"), len(charts))
    return [*charts[:at], guard, *charts[at:]]
