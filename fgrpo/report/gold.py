"""The report's "Proxy vs gold" chart and table: one run's trained reward on the held-out videos
(`eval_reward`, the proxy) against its gold metric (`eval_gold`, eval.gold_rewards, never trained
on), each on its own axis, with the evaluations where the divergence rule fired
(fgrpo.algorithm.divergence; the record's `divergence`) and the best-gold one marked. Read from
the records alone; runs without gold get neither.
"""

from __future__ import annotations

import html

from .charts import AXES, PALETTE, figure, points
from .data import RunData
from .render import fmt, table

PROXY, GOLD = "eval_reward", "eval_gold"  # fgrpo.trainer.gold_guard's


def has_gold(run: RunData) -> bool:
    return any(isinstance(e.get(GOLD), (int, float)) for e in run.evals)


def best_gold(run: RunData) -> dict | None:
    """The first evaluation with the highest gold (the trainer keeps its checkpoint)."""
    scored = [e for e in run.evals if isinstance(e.get(GOLD), (int, float))]
    return max(scored, key=lambda e: e[GOLD]) if scored else None  # max keeps the first of equals


def fired(run: RunData) -> list[dict]:
    return [e for e in run.evals if isinstance(e.get("divergence"), dict)]


def gold_chart(run: RunData) -> dict | None:
    """Proxy (left axis) and gold (right axis) against step; None without gold."""
    if not has_gold(run):
        return None
    (px, py), (gx, gy) = points(run.evals, PROXY), points(run.evals, GOLD)
    data = [
        {"x": px, "y": py, "name": "proxy: trained reward (eval_reward)", "mode": "lines+markers"},
        {"x": gx, "y": gy, "name": "gold (eval_gold)", "mode": "lines+markers", "yaxis": "y2"},
    ]
    data[0]["line"], data[1]["line"] = {"color": PALETTE[0]}, {"color": PALETTE[2], "width": 3}
    hits = fired(run)
    if hits:
        data.append(
            {
                "x": [e["step"] for e in hits],
                "y": [e[GOLD] for e in hits],
                "name": "divergence rule fired",
                "mode": "markers",
                "yaxis": "y2",
                "marker": {"color": PALETTE[1], "size": 12, "symbol": "x"},
            }
        )
    best = best_gold(run)
    if best is not None:
        data.append(
            {
                "x": [best["step"]],
                "y": [best[GOLD]],
                "name": "best gold (checkpoint kept)",
                "mode": "markers",
                "yaxis": "y2",
                "marker": {"color": PALETTE[3], "size": 14, "symbol": "star"},
            }
        )
    return figure(
        "proxy-vs-gold",
        "Proxy vs gold: trained reward and gold metric on the held-out videos",
        data,
        AXES["step"],
        "proxy (eval_reward)",
        yaxis2={"title": {"text": "gold (eval_gold)"}, "overlaying": "y", "side": "right"},
        margin={"l": 60, "r": 60, "t": 40, "b": 50},
    )


def gold_table(run: RunData) -> str | None:
    """Where gold peaked, where it is now, and when the divergence rule fired; None without gold."""
    best = best_gold(run)
    if best is None:
        return None
    latest = run.evals[-1]
    hits = fired(run)
    rows = [
        ["best gold (its checkpoint is kept)", f"{fmt(best[GOLD], '.4f')} at step {best['step']}"],
        [
            "latest gold / proxy",
            f"{fmt(latest.get(GOLD), '.4f')} / {fmt(latest.get(PROXY), '.4f')} at step {latest['step']}",
        ],
        [
            "divergence rule fired",
            ", ".join(f"step {e['step']}" for e in hits) if hits else "never",
        ],
    ]
    note = (
        "<p>Proxy: the trained reward on the held-out videos; gold: <code>eval.gold_rewards</code>, never "
        "trained on. The rule fires when, over the last <code>eval.divergence_window</code> evaluations, the "
        "proxy's least-squares slope is up, gold's down, and gold is below its best by more than "
        "<code>eval.divergence_tolerance</code> (<code>fgrpo/algorithm/divergence.py</code>). "
        "<code>fgrpo export RUN OUT --best gold</code> exports the best-gold checkpoint.</p>"
    )
    return table(["", "value"], [[html.escape(a), html.escape(b)] for a, b in rows]) + note


def with_gold_chart(charts: list[dict], runs: list[RunData]) -> list[dict]:
    """`charts` with one run's proxy-vs-gold chart right after its held-out reward chart."""
    chart = gold_chart(runs[0]) if len(runs) == 1 else None
    if chart is None:
        return charts
    at = next((i + 1 for i, c in enumerate(charts) if c["id"] == "heldout-reward"), len(charts))
    return [*charts[:at], chart, *charts[at:]]
