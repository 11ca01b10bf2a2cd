"""Headless Chromium for the report tests: the DOM after the page's scripts ran, and screenshots."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def _chromium(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless, with every host name unresolvable: the page must not need the network."""
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={tmp / 'chromium-profile'}",
            "--virtual-time-budget=20000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


def rendered_dom(binary: str, page: Path, tmp: Path) -> str:
    """The DOM after the page's scripts ran."""
    res = _chromium(binary, tmp, "--dump-dom", page.resolve().as_uri())
    assert res.returncode == 0 and "<body" in res.stdout, res.stderr[-2000:]
    return res.stdout


def screenshot(binary: str, page: Path, out: Path, size: str = "1400,2400") -> Path:
    res = _chromium(binary, out.parent, f"--window-size={size}", f"--screenshot={out}", page.resolve().as_uri())
    assert res.returncode == 0 and out.is_file(), res.stderr[-2000:]
    return out


def body_attrs(dom: str) -> dict[str, str]:
    match = re.search(r"<body([^>]*)>", dom)
    assert match, "no <body> tag in the DOM"
    body = match.group(1)
    return dict(re.findall(r'([\w-]+)="([^"]*)"', body))


def assert_rendered(dom: str) -> dict[str, str]:
    """Every chart drew an SVG, every video decoded a frame; returns the body's attributes."""
    attrs = body_attrs(dom)
    charts = int(attrs["data-charts"])
    assert charts >= 9 and attrs["data-charts-rendered"] == str(charts), attrs
    assert dom.count('class="chart js-plotly-plot"') == charts
    assert dom.count('class="main-svg"') >= charts
    videos = re.findall(r"<video[^>]*>", dom)
    assert videos and attrs["data-videos-loaded"] == str(len(videos)), attrs
    for v in videos:
        size = re.search(r'data-loaded="(\d+)x(\d+)"', v)
        assert size and int(size.group(1)) > 0 and int(size.group(2)) > 0, v[:200]
    assert "data-error" not in dom
    return attrs


def assert_not_blank(png: Path) -> None:
    from PIL import Image

    with Image.open(png) as im:
        rgb = im.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        assert colours is not None, "more than 2**20 colours"  # getcolors gives None past maxcolors
        top = max(colours)[0] / (rgb.width * rgb.height)
    assert len(colours) > 200 and top < 0.9, (len(colours), top)  # charts, text and videos, not one flat colour
