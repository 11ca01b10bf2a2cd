"""Headless Chromium for the report tests: Debian's `chromium`, installed by scripts/chromium.sh
(run by scripts/test.sh, as Slurm is) when missing and we are root; otherwise those tests skip."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="session")
def chromium() -> str:
    res = subprocess.run(["bash", str(REPO / "scripts" / "chromium.sh")], capture_output=True, text=True, timeout=900)
    if res.returncode != 0 or not res.stdout.strip():
        pytest.skip("no chromium (scripts/chromium.sh installs Debian's package as root)")
    return res.stdout.strip().splitlines()[-1]
