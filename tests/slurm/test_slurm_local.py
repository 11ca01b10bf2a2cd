"""scripts/slurm-local.sh converges from what it finds and shows a failing daemon's log.

The first tests source the script and run its functions with fake daemons (no root, no Slurm);
the last two reproduce, on the real local cluster, a machine that had another Slurm set-up."""

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "slurm-local.sh"
RUN = Path("/run/fgrpo-slurm")


def source_and_run(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    """Source the script in a fresh bash, point its run and log folders at tmp_path, run body."""
    prelude = f'source "{SCRIPT}"; RUN="{tmp_path}/run"; LOGDIR="{tmp_path}/log"; mkdir -p "$RUN" "$LOGDIR"\n'
    return subprocess.run(["bash", "-c", prelude + body], capture_output=True, text=True, timeout=60)


def test_a_failing_daemons_log_tail_and_reason_are_printed(tmp_path):
    log = tmp_path / "slurmctld.log"
    log.write_text("".join(f"old line {i}\n" for i in range(5)))
    res = source_and_run(
        tmp_path,
        f"""
        from=$(log_size "{log}")
        for i in $(seq 1 40); do echo "new line $i" >>"{log}"; done
        echo "fatal: CLUSTER NAME MISMATCH." >>"{log}"
        daemon_failed slurmctld "{log}" "$from" "exited at start (status 1)"
        echo "not reached"
    """,
    )
    assert res.returncode == 1
    assert "not reached" not in res.stdout
    shown = res.stderr
    assert "new line 40" in shown and "new line 12" in shown  # the last 30 lines of this start
    assert "new line 11\n" not in shown and "old line" not in shown
    assert re.search(r"ERROR: slurmctld exited at start \(status 1\): fatal: CLUSTER NAME MISMATCH", shown)
    assert str(log) in shown


def test_nothing_new_in_the_log_shows_its_last_lines(tmp_path):
    log = tmp_path / "slurmd-node1.log"
    log.write_text("error: an earlier failure\nlast old line\n")
    res = source_and_run(tmp_path, f'daemon_failed slurmd "{log}" "$(log_size "{log}")" "exited at start (status 1)"')
    assert res.returncode == 1
    assert "nothing new" in res.stderr and "last old line" in res.stderr


def test_start_slurmctld_that_exits_at_once_shows_its_log(tmp_path):
    # slurmctld stands for the real one: it logs a fatal error and exits 1 before daemonizing.
    res = source_and_run(
        tmp_path,
        """
        slurmctld() { echo "fatal: CLUSTER NAME MISMATCH." >>"$LOGDIR/slurmctld.log"; return 1; }
        start_slurmctld
        echo "not reached"
    """,
    )
    assert res.returncode == 1 and "not reached" not in res.stdout
    assert "fatal: CLUSTER NAME MISMATCH." in res.stderr
    assert "ERROR: slurmctld exited at start (status 1): fatal: CLUSTER NAME MISMATCH." in res.stderr


def test_start_slurmctld_that_dies_after_daemonizing_shows_its_log(tmp_path):
    # This one returns 0 like a daemon that forked, but no slurmctld process is left to answer.
    res = source_and_run(
        tmp_path,
        """
        slurmctld() {
            echo "fatal: Unable to bind listen port (6817): Address already in use" >>"$LOGDIR/slurmctld.log"
        }
        scontrol() { return 1; }
        start_slurmctld
        echo "not reached"
    """,
    )
    assert res.returncode == 1 and "not reached" not in res.stdout
    assert "ERROR: slurmctld died after it started: fatal: Unable to bind listen port" in res.stderr


def test_foreign_state_is_recognised_by_its_cluster_name(tmp_path):
    state = tmp_path / "state"
    res = source_and_run(
        tmp_path, f'foreign_cluster "{state}" && echo "foreign: $(foreign_cluster "{state}")"; echo ok'
    )
    assert res.stdout.strip() == "ok"  # no state yet: nothing foreign
    state.mkdir()
    (state / "clustername").write_text("fgrpo\n")
    res = source_and_run(tmp_path, f'foreign_cluster "{state}" || echo ours')
    assert res.stdout.strip() == "ours"
    (state / "clustername").write_text("othercluster\n")
    res = source_and_run(tmp_path, f'foreign_cluster "{state}"')
    assert res.returncode == 0 and res.stdout.strip() == "othercluster"


# ---------------------------------------------------------------- on the real local cluster
def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def stop_by_pidfile(pidfile: Path) -> None:
    """SIGTERM the daemon a pidfile names and wait until it is gone (a zombie counts as gone)."""
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    for _ in range(150):
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith(("Z", "X")):
                return
        except (OSError, IndexError):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def our_cluster(slurm_cluster):
    """The cluster this script started, which these tests may restart (root only)."""
    if os.geteuid() != 0:
        pytest.skip("restarting the local Slurm daemons needs root")
    if not (RUN / "slurmctld.pid").exists():
        pytest.skip("the running Slurm cluster was not started by scripts/slurm-local.sh")
    return slurm_cluster


def mariadb_root(sql: str) -> None:
    subprocess.run(["mariadb", "--socket=/run/mysqld/mysqld.sock", "-u", "root", "-e", sql], check=True, timeout=60)


def test_start_resets_a_slurm_mariadb_user_left_by_another_set_up(our_cluster):
    if not (RUN / "slurmdbd.pid").exists():
        pytest.skip("the local cluster runs without accounting (FGRPO_SLURM_ACCOUNTING=0)")
    stop_by_pidfile(RUN / "slurmdbd.pid")
    mariadb_root("ALTER USER 'slurm'@'localhost' IDENTIFIED BY 'another-set-ups-password'")
    try:
        res = run_script("start")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "reset MariaDB user 'slurm'@'localhost'" in res.stdout
        clusters = subprocess.run(
            ["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"], capture_output=True, text=True, timeout=60
        )
        assert "fgrpo" in clusters.stdout.split()
    finally:  # leave a working cluster whatever happened
        if run_script("status").returncode != 0 or not (RUN / "slurmdbd.pid").exists():
            mariadb_root("ALTER USER 'slurm'@'localhost' IDENTIFIED VIA unix_socket")
            run_script("start")
    again = run_script("start")  # converged: nothing more to change
    assert again.returncode == 0 and "reset" not in again.stdout


def state_save_location() -> Path:
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
    found = re.search(r"^StateSaveLocation=(\S+)", conf, re.M)
    assert found, "no StateSaveLocation in slurm.conf"
    return Path(found[1])


def test_start_moves_another_clusters_state_aside(our_cluster):
    state = state_save_location()
    saved = state.with_name(f"{state.name}.pytest-saved")  # our own state, put back afterwards
    assert not saved.exists(), f"{saved} is left from an earlier run: move it back to {state} by hand"
    stop_by_pidfile(RUN / "slurmctld.pid")
    state.rename(saved)
    state.mkdir()
    (state / "clustername").write_text("othercluster\n")
    shutil.chown(state, "slurm", "slurm")
    moved_to = None
    try:
        res = run_script("start")
        out = res.stdout + res.stderr
        assert res.returncode == 0, out
        found = re.search(r"moved the state of cluster othercluster from \S+ to (\S+)", res.stdout)
        assert found, out
        moved_to = Path(found[1])
        assert (moved_to / "clustername").read_text().strip() == "othercluster"
        assert (state / "clustername").read_text().strip() == "fgrpo"
    finally:  # put our own state back and restart on it
        stop_by_pidfile(RUN / "slurmctld.pid")
        shutil.rmtree(state, ignore_errors=True)
        saved.rename(state)
        if moved_to is not None:
            shutil.rmtree(moved_to, ignore_errors=True)
        restarted = run_script("start")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
