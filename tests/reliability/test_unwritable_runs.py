"""A runs folder this user cannot write: `fgrpo launch` refuses it with a message naming
logging.runs_dir (exit 2, nothing written); `fgrpo status` still shows a dead run, as killed,
without writing. Root ignores permissions, so as root the CLI runs as `nobody` (setpriv)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fgrpo.recipe.io import load_recipe_file
from fgrpo.run_folder import RunFolder
from tests.conftest import REPO

NOBODY = 65534


@pytest.fixture
def shared_tmp():
    """A folder every user can read (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="fgrpo-unwritable-"))
    path.chmod(0o755)
    yield path
    for p in [path, *path.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)  # a non-root run made them read-only
    shutil.rmtree(path)


def read_only(path: Path) -> None:
    """`path` (a folder tree) becomes one the CLI's user may read but not write."""
    for p in [path, *path.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)


def fgrpo_as_reader(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI as a user without write permission on read_only folders: `nobody` under root."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root ignores permissions, and setpriv (to run as nobody) is not installed")
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    env = {**os.environ, "HOME": str(cwd), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "fgrpo", *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_launch_into_a_runs_folder_that_is_a_file_names_the_setting(shared_tmp):
    from fgrpo.cli import main

    runs = shared_tmp / "runs"
    runs.write_text("not a folder\n")
    import io
    from contextlib import redirect_stderr

    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["launch", str(REPO / "recipes" / "tiny.py"), "--logging.runs-dir", str(runs / "deeper")])
    assert code == 2
    assert f"logging.runs_dir: {runs} is not a folder, so the run folder {runs}/deeper/tiny" in err.getvalue()
    assert runs.read_text() == "not a folder\n" and listing(shared_tmp) == ["runs"]


def test_launch_into_a_runs_folder_this_user_cannot_write_names_the_setting(shared_tmp):
    runs = shared_tmp / "runs"
    runs.mkdir()
    read_only(runs)
    res = fgrpo_as_reader("launch", str(REPO / "recipes" / "tiny.py"), "--logging.runs-dir", str(runs), cwd=shared_tmp)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (
        f"fgrpo: error: logging.runs_dir: {runs} is not writable by this user, so the "
        f"run folder {runs}/tiny cannot be made in it"
    ), res.stderr
    assert listing(runs) == []


def test_status_of_a_dead_run_in_a_folder_this_user_cannot_write_shows_it_killed(shared_tmp):
    run = RunFolder(shared_tmp / "runs" / "tiny")
    run.write_recipe(load_recipe_file(REPO / "recipes" / "tiny.py"))
    status = {"state": "running", "reason": "", "time": 1.0, "owner": "gone-host:1:1"}
    (run.path / "status.json").write_text(json.dumps(status))
    read_only(shared_tmp / "runs")
    before = {p: p.read_bytes() for p in run.path.iterdir()}
    res = fgrpo_as_reader("status", str(run.path), "--json", cwd=shared_tmp)
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert row["run_state"] == "killed" and "not recorded" in row["reason"], row
    assert {p: p.read_bytes() for p in run.path.iterdir()} == before  # nothing written, no .lock made
    assert stat.S_IMODE(run.path.stat().st_mode) == 0o555


def test_sweep_into_a_runs_folder_that_is_a_file_names_the_setting(shared_tmp, capsys):
    from fgrpo.cli import main

    runs = shared_tmp / "runs"
    runs.write_text("not a folder\n")
    code = main(
        ["sweep", str(REPO / "recipes" / "tiny.py"), "--grid", "optim.lr=1e-3,2e-3", "--logging.runs-dir", str(runs)]
    )
    assert code == 2
    assert f"logging.runs_dir: {runs} is not a folder, so the run folder {runs}/tiny__lr=" in capsys.readouterr().err
    assert listing(shared_tmp) == ["runs"]
