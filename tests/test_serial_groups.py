"""The serial groups of tests/conftest.py form under pytest-xdist as scripts/test.sh runs it: every
Slurm test on one worker (the local cluster's nodes are one resource; a test that restarts its
daemons must not run beside another's job). Without a cluster the Slurm tests skip, but they are
still scheduled, so where each one ran shows whether the group held."""

import re
import subprocess
import sys

from tests.conftest import REPO


def test_every_slurm_test_runs_on_one_worker(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider"]
        + ["tests/slurm/test_cluster.py", "tests/slurm/test_slurm_local.py", "tests/slurm/test_reward_server_slurm.py"]
        + ["-k", "not start and not reward_server_job and not sweep_points and not two_nodes and not cancel_stops"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/nonexistent"},  # no sinfo: every test that needs the cluster skips at once
    )
    workers = re.findall(r"^\[(gw\d+)\] .*tests/slurm/", res.stdout, re.MULTILINE)
    assert len(workers) >= 4, res.stdout[-3000:] + res.stderr[-3000:]
    assert len(set(workers)) == 1, f"Slurm tests ran on {sorted(set(workers))}:\n{res.stdout[-3000:]}"
