"""Fixtures for tests that need a real Slurm cluster (scripts/slurm-local.sh start)."""

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

USABLE = {"idle", "mix", "alloc", "comp"}  # sinfo %t of responding nodes that can run jobs


def _controller_refuses() -> bool:
    """True when the local slurm.conf names a slurmctld that refuses connections: sinfo would
    retry for about 9 s before failing. False when unsure (no conf, remote host, timeout)."""
    try:
        conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
    except OSError:
        return False
    host = re.search(r"^\s*SlurmctldHost\s*=\s*([^\s(#]+)(?:\(([^)]+)\))?", conf, re.M | re.I)
    port = re.search(r"^\s*SlurmctldPort\s*=\s*(\d+)", conf, re.M | re.I)
    if not host:
        return False
    try:
        socket.create_connection((host[2] or host[1], int(port[1]) if port else 6817), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def _up_nodes() -> tuple[set[str], str]:
    """Names of the usable nodes, and what went wrong when there are none."""
    if shutil.which("sinfo") is None:
        return set(), "sinfo not installed"
    if _controller_refuses():
        return set(), "slurmctld is not running"
    try:
        res = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return set(), "sinfo timed out"
    if res.returncode != 0:
        return set(), (res.stderr.strip().splitlines() or ["sinfo failed"])[-1]
    up = {name for name, state in (line.split() for line in res.stdout.splitlines() if line.strip()) if state in USABLE}
    return up, "" if up else f"no usable node: {res.stdout.strip()!r}"


@pytest.fixture(scope="session")
def slurm_cluster() -> list[str]:
    """The usable nodes of a running Slurm cluster (at least 2). Skips without one, fails in CI."""
    up, why = _up_nodes()
    if len(up) < 2:
        why = why or f"only {len(up)} usable node(s): {sorted(up)}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must start the Slurm cluster before the tests (scripts/slurm-local.sh start): {why}")
        pytest.skip(f"no Slurm cluster: run scripts/slurm-local.sh start ({why})")
    return sorted(up)
