"""The report's charts as Plotly figure specs (plain dicts: `Plotly.newPlot(div, data, layout)`).

One run: train and held-out reward with their components, grad norm, clip fraction, |ratio - 1|,
advantage spread, the SDE step indices trained, seconds per phase, memory per rank. Several runs:
the same, one curve per series (a run, or the mean of its seeds with a min-max band), and the
rewards against step, compute (FLOPs) and wall time.
"""

from __future__ import annotations

from collections import Counter

from .data import RunData, Series

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
AXES = {
    "step": "optimizer step",
    "compute/flops": "compute (FLOPs, cumulative)",
    "compute/wall_s": "wall time (s, cumulative)",
}


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


def figure(cid: str, title: str, data: list[dict], xaxis: str = "", yaxis: str = "", **layout) -> dict:
    lay = {
        "title": {"text": title, "font": {"size": 14}, "x": 0.01, "xanchor": "left"},
        "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
        "height": 380,
        "xaxis": {"title": {"text": xaxis}, "automargin": True},
        "yaxis": {"title": {"text": yaxis}},
        "legend": {"font": {"size": 10}, "orientation": "h", "x": 0, "y": -0.32, "yanchor": "top"},
        "hovermode": "x unified",
        **layout,
    }
    return {"id": cid, "title": title, "data": data, "layout": lay}


def points(records: list[dict], key: str, x: str = "step") -> tuple[list, list]:
    pts = [(r.get(x), r[key]) for r in records if isinstance(r.get(key), (int, float)) and r.get(x) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def series_curve(s: Series, records_of, key: str, x: str, colour: str) -> list[dict]:
    """A run's line, or its seeds' mean (at the steps every seed has) inside a min-max band."""
    if len(s.runs) == 1:
        xs, ys = points(records_of(s.runs[0]), key, x)
        return (
            [
                {
                    "x": xs,
                    "y": ys,
                    "name": s.label,
                    "mode": "lines+markers",
                    "line": {"color": colour},
                    "marker": {"size": 4},
                }
            ]
            if ys
            else []
        )
    per_run = []
    for r in s.runs:
        per_run.append(
            {
                rec["step"]: (rec.get(x), rec[key])
                for rec in records_of(r)
                if isinstance(rec.get(key), (int, float)) and rec.get(x) is not None
            }
        )
    steps = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    if not steps:
        return []
    xs = [sum(p[t][0] for p in per_run) / len(per_run) for t in steps]
    vals = [[p[t][1] for p in per_run] for t in steps]
    mean, lo, hi = [sum(v) / len(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals]
    band = {"mode": "lines", "line": {"width": 0}, "hoverinfo": "skip", "showlegend": False, "legendgroup": s.label}
    return [
        {"x": xs, "y": hi, **band},
        {"x": xs, "y": lo, "fill": "tonexty", "fillcolor": _rgba(colour, 0.2), **band},
        {
            "x": xs,
            "y": mean,
            "name": f"{s.label} (mean of {len(s.runs)} seeds)",
            "mode": "lines+markers",
            "line": {"color": colour},
            "marker": {"size": 4},
            "legendgroup": s.label,
        },
    ]


def train_of(r: RunData) -> list[dict]:
    return r.train


def evals_of(r: RunData) -> list[dict]:
    return r.evals


def compare(cid: str, title: str, series: list[Series], records_of, key: str, x: str = "step") -> dict:
    data = [t for i, s in enumerate(series) for t in series_curve(s, records_of, key, x, PALETTE[i % len(PALETTE)])]
    return figure(cid, title, data, AXES.get(x, x), key)


def components(run: RunData, cid: str, title: str, records: list[dict], main: str, prefix: str) -> dict:
    """One run's reward and each of its reward components."""
    data = []
    xs, ys = points(records, main)
    if ys:
        data.append(
            {"x": xs, "y": ys, "name": main, "mode": "lines+markers", "line": {"color": PALETTE[0], "width": 3}}
        )
    keys = sorted({k for r in records for k in r if k.startswith(prefix)})
    for i, k in enumerate(keys, 1):
        xs, ys = points(records, k)
        data.append(
            {"x": xs, "y": ys, "name": k, "mode": "lines+markers", "line": {"color": PALETTE[i % 10], "dash": "dot"}}
        )
    return figure(cid, title, data, AXES["step"], "reward")


def trained_indices(r: RunData) -> list[int]:
    """SDE step indices trained: the drawn ones (flash, fast), every step for full trajectory."""
    if r.recipe.get("algorithm.mode") == "full-trajectory":
        steps = int(r.recipe.get("rollout.steps") or 0)
        return [i for _ in r.train for i in range(steps)]
    return [int(i) for rec in r.train for i in rec.get("timestep_indices") or []]


def timestep_histogram(series: list[Series]) -> dict:
    data = []
    for i, s in enumerate(series):
        counts = Counter(i for r in s.runs for i in trained_indices(r))
        total = sum(counts.values()) or 1
        xs = sorted(counts)
        data.append(
            {
                "type": "bar",
                "x": xs,
                "y": [counts[x] / total for x in xs],
                "name": s.label,
                "opacity": 0.75,
                "marker": {"color": PALETTE[i % len(PALETTE)]},
            }
        )
    return figure(
        "timesteps",
        "SDE step indices trained",
        data,
        "step index i (0 = noisiest)",
        "share of trained transitions",
        barmode="group",
        hovermode="closest",
    )


PHASES = (("time_rollout", "rollout"), ("time_reward", "reward"), ("time_train", "train"))


def phase_seconds(series: list[Series]) -> dict:
    if len(series) == 1 and len(series[0].runs) == 1:
        run = series[0].runs[0]
        data = [
            {
                "type": "bar",
                "x": points(run.train, k)[0],
                "y": points(run.train, k)[1],
                "name": name,
                "marker": {"color": PALETTE[i]},
            }
            for i, (k, name) in enumerate(PHASES)
        ]
        xs, ys = points(run.evals, "time_eval")
        data.append({"type": "bar", "x": xs, "y": ys, "name": "evaluation", "marker": {"color": PALETTE[4]}})
        return figure("phases", "Seconds per phase", data, AXES["step"], "seconds", barmode="stack")
    data = []
    for i, (k, name) in enumerate(PHASES + (("time_eval", "evaluation"),)):
        ys = []
        for s in series:
            vals = [
                rec[k]
                for r in s.runs
                for rec in (r.evals if k == "time_eval" else r.train)
                if isinstance(rec.get(k), (int, float))
            ]
            ys.append(sum(vals) / len(vals) if vals else 0)
        data.append(
            {"type": "bar", "x": [s.label for s in series], "y": ys, "name": name, "marker": {"color": PALETTE[i]}}
        )
    return figure(
        "phases",
        "Mean seconds per step (per evaluation) by phase",
        data,
        "",
        "seconds",
        barmode="stack",
        hovermode="closest",
    )


def memory(runs: list[RunData]) -> dict:
    data = []
    for i, r in enumerate(runs):
        last = next((rec for rec in reversed(r.train) if rec.get("peak_memory_per_rank")), None)
        if last is None:
            continue
        per_rank = last["peak_memory_per_rank"]
        data.append(
            {
                "type": "bar",
                "x": [f"rank {k}" for k in range(len(per_rank))],
                "y": [v / 2**30 for v in per_rank],
                "name": r.label or r.name,
                "marker": {"color": PALETTE[i % len(PALETTE)]},
            }
        )
    kind = next((rec["memory_kind"] for r in runs for rec in r.train if rec.get("memory_kind")), "")
    what = {"cuda_max_allocated": "CUDA max allocated", "cpu_max_rss": "peak RSS (CPU)"}.get(kind, kind)
    return figure("memory", f"Peak memory per rank ({what})", data, "", "GiB", barmode="group", hovermode="closest")


def run_charts(series: list[Series]) -> list[dict]:
    """The charts of a report: one run's, or a comparison of several."""
    runs = [r for s in series for r in s.runs]
    if len(runs) == 1:
        r = runs[0]
        out = [
            components(r, "train-reward", "Train reward (rollouts)", r.train, "reward_mean", "reward/"),
            components(r, "heldout-reward", "Held-out reward (EMA, ODE, fixed seeds)", r.evals, "eval_reward", "eval/"),
        ]
    else:
        out = []
        for key, records_of, name in (
            ("eval_reward", evals_of, "Held-out reward"),
            ("reward_mean", train_of, "Train reward"),
        ):
            for x, axis in (("step", "step"), ("compute/flops", "compute"), ("compute/wall_s", "wall time")):
                out.append(compare(f"{key}-{axis.replace(' ', '-')}", f"{name} vs {axis}", series, records_of, key, x))
    for key, title in (
        ("grad_norm", "Gradient norm (before clipping)"),
        ("clip_frac", "Clip fraction"),
        ("ratio_dev", "|ratio - 1| (mean over transitions)"),
        ("adv_std", "Advantage spread (std over the batch)"),
    ):
        out.append(compare(key.replace("_", "-"), title, series, train_of, key))
    out += [timestep_histogram(series), phase_seconds(series), memory(runs)]
    return out
