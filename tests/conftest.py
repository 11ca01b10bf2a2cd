import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Importing torch._dynamo in this process sets TORCHINDUCTOR_CACHE_DIR (to /tmp) for itself; the
# CLI runs below get the environment a user's shell would give them, without that.
_INDUCTOR_CACHE_SET_BY_USER = "TORCHINDUCTOR_CACHE_DIR" in os.environ


# Tests that share one machine-wide resource run one after another on one pytest-xdist worker
# (scripts/test.sh runs the suite on two): the local Slurm cluster's two nodes, and the memory of
# the real 1.3B architecture's layouts. The other tests spread over the workers, so one worker's
# waiting (Slurm's scheduler, process start-up) is the other's compute.
SERIAL_GROUPS = {"tests/slurm/": "slurm", "tests/distributed/test_real_wan_1_3b.py": "real-1.3b"}


# Marked as each test is collected, before any pytest_collection_modifyitems (pytest-xdist's reads
# the markers there and appends the group to the node id). With pytest 9.2 that suffix was lost
# (pyproject.toml pins below it), the groups never formed, and a Slurm test on one worker restarted
# slurmctld (tests/slurm/test_slurm_local.py) under another's job: the intermittent hang of
# test_cancel_then_resume. tests/test_serial_groups.py checks that the groups form.
def pytest_itemcollected(item):
    path = Path(str(item.fspath)).relative_to(REPO).as_posix()
    for prefix, group in SERIAL_GROUPS.items():
        if path.startswith(prefix):
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny Wan model saved as a diffusers folder (built once per test session)."""
    from fgrpo.models.wan.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-wan")


@pytest.fixture(scope="session")
def tiny_ti2v_model_dir(tmp_path_factory) -> Path:
    """The tiny Wan2.2-TI2V model (fgrpo/models/wan/tiny_ti2v.py) as a diffusers folder, once per session."""
    from fgrpo.models.wan.tiny_ti2v import save_tiny_ti2v_model

    return save_tiny_ti2v_model(tmp_path_factory.mktemp("models") / "tiny-ti2v")


@pytest.fixture(scope="session")
def tiny_i2v_model_dir(tmp_path_factory) -> Path:
    """The tiny Wan2.1-I2V model (fgrpo/models/wan/tiny_i2v.py) as a diffusers folder, once per session."""
    from fgrpo.models.wan.tiny_i2v import save_tiny_i2v_model

    return save_tiny_i2v_model(tmp_path_factory.mktemp("models") / "tiny-i2v")


@pytest.fixture(scope="session")
def tiny_a14b_model_dir(tmp_path_factory) -> Path:
    """The tiny Wan2.2-A14B two-expert model (fgrpo/models/wan/tiny_a14b.py) as a diffusers folder, once per session."""
    from fgrpo.models.wan.tiny_a14b import save_tiny_a14b_model

    return save_tiny_a14b_model(tmp_path_factory.mktemp("models") / "tiny-a14b")


@pytest.fixture(scope="session")
def tiny_i2v_a14b_model_dir(tmp_path_factory) -> Path:
    """The tiny Wan2.2-I2V-A14B model (fgrpo/models/wan/tiny_i2v_a14b.py) as a diffusers folder, once per session."""
    from fgrpo.models.wan.tiny_i2v_a14b import save_tiny_i2v_a14b_model

    return save_tiny_i2v_a14b_model(tmp_path_factory.mktemp("models") / "tiny-i2v-a14b")


def run_fgrpo(*args: str, cwd: Path = REPO, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the `fgrpo` CLI as a user would (a separate process)."""
    full_env = {**os.environ, **(env or {})}
    if not _INDUCTOR_CACHE_SET_BY_USER and "TORCHINDUCTOR_CACHE_DIR" not in (env or {}):
        full_env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "fgrpo", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


@pytest.fixture(scope="session")
def miniature_model_dir() -> Path:
    """The miniature world's pre-trained model, from $FGRPO_CACHE (pre-trained on first use: minutes)."""
    from fgrpo.miniature.pretrain import miniature_model_path

    return miniature_model_path()
