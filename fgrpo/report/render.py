"""One self-contained HTML file: Plotly.js inline, sample videos as data: URIs, no network at all.

Chart library: Plotly.js, from the `plotly` Python wheel (package_data/plotly.min.js, MIT): it
is on PyPI (no npm or CDN at build or view time), embeds as one inline script, and draws what the
report needs (lines with filled bands, grouped and stacked bars, hover, zoom and legend toggles)
from plain JSON specs, so fgrpo never imports plotly's Python API. The cost is ~4.6 MB of
JavaScript per report.

When the page has run its scripts, `<body data-charts-rendered=N data-videos-loaded=M>` says how
many charts drew an SVG and how many videos decoded a frame (what the browser test reads).
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from .data import RunData

MIME = {".mp4": "video/mp4", ".gif": "image/gif"}

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 16px 24px; color: #222; background: #fafafa; }
h1 { font-size: 22px; margin: 4px 0 2px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: 12px; }
table { border-collapse: collapse; background: #fff; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; } th { background: #f0f0f0; }
td.l, th.l { text-align: left; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 12px; }
.chart { background: #fff; border: 1px solid #e3e3e3; min-height: 380px; }
.videos { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; background: #fff; border: 1px solid #e3e3e3; padding: 6px; max-width: 660px; }
figure video, figure img { display: block; max-width: 100%; image-rendering: pixelated; }
figcaption { font-size: 12px; color: #333; margin-top: 4px; }
.pair { display: flex; gap: 6px; } .pair figure { border: none; padding: 0; }
.problem { color: #b00; }
"""

SCRIPT = """
function countCharts() {
  document.body.dataset.chartsRendered =
    String([...document.querySelectorAll('.chart')].filter(d => d.querySelector('.main-svg')).length);
}
const drawn = [];
for (const fig of FIGURES) {
  const div = document.getElementById(fig.id);
  try {
    drawn.push(Plotly.newPlot(div, fig.data, fig.layout, {responsive: true, displayModeBar: false}));
  } catch (e) { div.dataset.error = String(e); }
}
Promise.allSettled(drawn).then(countCharts);
let loaded = 0;
for (const v of document.querySelectorAll('video')) {
  const done = () => { if (!v.dataset.loaded) { v.dataset.loaded = v.videoWidth + 'x' + v.videoHeight;
                                                document.body.dataset.videosLoaded = String(++loaded); } };
  if (v.readyState >= 2) done(); else v.addEventListener('loadeddata', done);
  v.addEventListener('error', () => { v.dataset.error = String(v.error && v.error.code); });
}
for (const im of document.querySelectorAll('img.sample')) {
  const done = () => { if (im.naturalWidth && !im.dataset.loaded) { im.dataset.loaded = im.naturalWidth + 'x' +
                        im.naturalHeight; document.body.dataset.videosLoaded = String(++loaded); } };
  if (im.complete) done(); else im.addEventListener('load', done);
}
"""


def plotly_js() -> tuple[str, str]:
    """(plotly.min.js, its version) from the plotly wheel, read as a file: no plotly import."""
    try:
        text = (resources.files("plotly") / "package_data" / "plotly.min.js").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise FileNotFoundError(
            f"fgrpo report needs the plotly package (pip install plotly; its wheel ships plotly.min.js): {e}"
        ) from None
    head = text[:200]
    version = head.split("plotly.js v", 1)[1].split()[0] if "plotly.js v" in head else "?"
    return text, version


def media_tag(path: Path | None, caption: str = "") -> str:
    """A sample video (MP4) or GIF as an inline data: URI, with its caption."""
    if path is None or not Path(path).is_file():
        return f'<figure><figcaption class="problem">missing: {html.escape(str(path))}</figcaption></figure>'
    data = base64.b64encode(Path(path).read_bytes()).decode()
    mime = MIME.get(Path(path).suffix.lower(), "application/octet-stream")
    if mime == "video/mp4":
        body = f'<video muted autoplay loop playsinline controls src="data:{mime};base64,{data}"></video>'
    else:
        body = f'<img class="sample" alt="{html.escape(caption)}" src="data:{mime};base64,{data}">'
    return f"<figure>{body}<figcaption>{html.escape(caption)}</figcaption></figure>"


def compute_cell(v, unit: str = "") -> str:
    """A compute amount: FLOPs scaled (M, G, T, P), anything else with thousands separators."""
    if v is None:
        return "-"
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if unit == "FLOP" and v >= scale:
            return f"{v / scale:.2f} {suffix}FLOP"
    return f"{v:,.0f} {unit}".strip()


def fmt(v, spec: str = "+.4f") -> str:
    return "-" if v is None else format(v, spec)


def table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def samples_section(run: RunData, per_prompt: bool) -> str:
    """Before and latest evaluation: the captioned grids, and (one run) each prompt's pair."""
    folder = run.samples
    tags = folder.tags()
    if not tags:
        return f"<p>{html.escape(run.name)}: no held-out samples yet.</p>"
    first, last = tags[0], tags[-1]
    parts = ['<div class="videos">']
    for tag in dict.fromkeys([first, last]):
        ix = folder.read_index(tag) or {}
        grid = folder.resolve(ix["grid"]) if ix.get("grid") else folder.find_grid(tag)
        parts.append(media_tag(grid, f"{run.label or run.name}: {tag} (held-out prompts; reward before -> now)"))
    parts.append("</div>")
    if per_prompt and first != last:
        before, after = folder.read_index(first) or {}, folder.read_index(last) or {}
        rows = []
        for b, a in zip(before.get("videos", []), after.get("videos", [])):
            pair = (
                '<div class="pair">'
                + media_tag(folder.resolve(b["video"]), f"{first}: {b['reward']:+.4f}")
                + media_tag(folder.resolve(a["video"]), f"{last}: {a['reward']:+.4f}")
                + "</div>"
            )
            rows.append(
                [html.escape(a["prompt"]), pair, fmt(b["reward"]), fmt(a["reward"]), fmt(a["reward"] - b["reward"])]
            )
        if rows:
            parts.append(table(["prompt", f"{first} | {last}", "before", "after", "change"], rows, left=2))
    return "\n".join(parts)


def finite(value):
    """`value` with every NaN or infinity (a diverged step's loss, say) replaced by None: JSON has no
    NaN, and Plotly draws None as a gap in the curve."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def page(
    title: str,
    subtitle: str,
    sections: list[tuple[str, str]],
    figures: list[dict],
    after: Sequence[tuple[str, str]] = (),
) -> str:
    """The page: `sections`, the charts, then `after` (the sample videos)."""
    js, version = plotly_js()
    charts = "".join(f'<div class="chart" id="{html.escape(f["id"])}"></div>' for f in figures)
    body, tail = (
        "".join(f"<h2>{html.escape(h)}</h2>\n{content}\n" for h, content in part) for part in (sections, after)
    )
    spec = json.dumps(finite(figures), allow_nan=False, default=str).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{STYLE}</style>
<script>/* plotly.js v{version} (MIT), embedded: this file needs no network */
{js}</script></head>
<body data-charts="{len(figures)}" data-charts-rendered="0" data-videos-loaded="0">
<h1>{html.escape(title)}</h1>
<div class="meta">{subtitle} &middot; written {time.strftime("%Y-%m-%d %H:%M:%S")} by fgrpo report</div>
{body}
<h2>Charts</h2>
<div class="charts">{charts}</div>
{tail}
<script>const FIGURES = {spec};
{SCRIPT}</script>
</body></html>
"""
