"""The report's "Reward audit" section: RUN/reward-audit.json (`fgrpo reward-audit RECIPE.py --run RUN`)."""

from __future__ import annotations

import html

from .render import table

PROBE_NAMES = {"samples": "model samples", "renders": "ground-truth renders"}


def _number(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def audit_section(audit: dict) -> str:
    """Each reward's findings, then the table of rows (flagged rows marked), then the rules."""
    probes = audit.get("probe_videos") or {}
    what = ", ".join(f"{n} {html.escape(PROBE_NAMES.get(k, str(k)))}" for k, n in probes.items())
    findings = "".join(
        f"<li><b>{html.escape(str(r.get('reward')))}</b>: "
        f"{html.escape('; '.join(r.get('flags') or []) or 'no flag')}</li>"
        for r in audit.get("rewards", [])
    )
    rows = [
        [
            html.escape(str(r.get("reward"))),
            html.escape(str(r.get("edit"))) + ("" if r.get("degrading") else " <small>(not judged)</small>"),
            _number(r.get("mean_change"), "+.4f"),
            _number(r.get("win_rate"), ".2f"),
            f'<span class="problem">{html.escape(", ".join(r["flags"]))}</span>' if r.get("flags") else "",
        ]
        for r in audit.get("rows", [])
    ]
    rules = audit.get("rules") or {}
    return (
        f"<p>Probe videos: {what or '-'} of the recipe's held-out prompts, each scored as it is and under "
        "controlled edits; mean change = edited &minus; original, win rate = share of videos the edit raised.</p>"
        f"<ul>{findings}</ul>"
        + table(["reward", "edit", "mean change", "win rate", "flag"], rows, left=2)
        + f"<p>prefers: {html.escape(str(rules.get('prefers', '-')))}; "
        f"motion-blind: {html.escape(str(rules.get('motion-blind', '-')))}.</p>"
    )


__all__ = ["audit_section"]
