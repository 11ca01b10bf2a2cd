"""--reward-server.launch on Slurm: the server runs as a job of its own beside the training job, the
trainers find it through the run folder, and it ends with the run (or with `fgrpo cancel`)."""

import subprocess
import time

from fgrpo.run_folder import RunFolder
from tests.conftest import run_fgrpo
from tests.helpers import present
from tests.helpers.slurm import status, submit, wait_state, wait_steps

# Training on one node (2 tasks = its 2 CPUs); the server gets a CPU of the other node.
SERVED = [
    "--launch.nodes",
    "1",
    "--launch.procs-per-node",
    "2",
    "--reward-server.launch",
    "--reward-server.cpus",
    "1",
    "--reward-server.mem-gb",
    "0",
]


def slurm_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"], capture_output=True, text=True)
    return (out.stdout.split() or ["UNKNOWN"])[0]


def wait_job(job_id: str, states: set[str], timeout=180) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = slurm_state(job_id)
        if state in states:
            return state
        time.sleep(2)
    raise AssertionError(f"job {job_id} is {slurm_state(job_id)}, not one of {states}")


def server_log(run) -> str:
    (server,) = RunFolder(run).server_jobs()
    return "".join(p.read_text() for p in (run / "submitit").glob(f"{server['job_id']}_0_log.*"))


def test_reward_server_job_beside_training(slurm_cluster, tiny_model_dir, tmp_path):
    run, job = submit(tiny_model_dir, tmp_path / "runs", 3, *SERVED)
    (server,) = RunFolder(run).server_jobs()
    assert server["backend"] == "slurm" and server["job_id"] != job
    rows = wait_state(run, {"COMPLETED"})
    assert rows[0]["step"] == 3 and rows[0]["run_state"] == "completed"
    # The server was on the other node, and the trainers used it.
    host = present(RunFolder(run).read_server_address(), "server address")
    assert host.startswith("http://")
    out = "".join(p.read_text() for p in (run / "submitit").glob(f"{job}_0_log.out"))
    assert f"rewards scored by the reward server at {host}" in out
    # It notices the run's end and exits by itself.
    assert wait_job(server["job_id"], {"COMPLETED"}) == "COMPLETED"
    assert status(run)[0]["reward_server"] == f"job {server['job_id']} COMPLETED"
    assert "run " in server_log(run) and "has ended; stopping the reward server" in server_log(run)
    assert "reward server stopped after scoring" in server_log(run)


def test_cancel_stops_the_reward_server_too(slurm_cluster, tiny_model_dir, tmp_path):
    run, job = submit(tiny_model_dir, tmp_path / "runs", 200, *SERVED)
    (server,) = RunFolder(run).server_jobs()
    wait_steps(run, 2)
    res = run_fgrpo("cancel", str(run), timeout=60)
    assert res.returncode == 0, res.stderr
    assert f"cancelled its reward server, slurm job {server['job_id']}" in res.stdout
    wait_state(run, {"CANCELLED", "CANCELLED+"}, timeout=120)
    assert wait_job(server["job_id"], {"CANCELLED", "CANCELLED+"}).startswith("CANCELLED")
    assert status(run)[0]["run_state"] == "cancelled"


def test_dry_run_shows_both_jobs(tmp_path):
    """No cluster needed: submitit's own script writer renders both sbatch scripts."""
    from tests.conftest import REPO

    res = run_fgrpo(
        "launch",
        str(REPO / "recipes" / "tiny.py"),
        "--backend",
        "slurm",
        "--dry-run",
        "--launch.nodes",
        "2",
        "--launch.gpus-per-node",
        "8",
        "--launch.partition",
        "gpu",
        "--reward-server.launch",
        "--reward-server.gpus",
        "2",
        "--reward-server.cpus",
        "16",
        "--reward-server.mem-gb",
        "200",
        "--logging.runs-dir",
        str(tmp_path / "runs"),
    )
    assert res.returncode == 0, res.stderr
    train, server = res.stdout.split("# and, beside it, the reward server's job:")
    for line in ("--nodes=2", "--gpus-per-node=8", "--ntasks-per-node=8", "--partition=gpu", "--job-name=tiny\n"):
        assert f"#SBATCH {line}" in train
    for line in (
        "--nodes=1",
        "--gpus-per-node=2",
        "--cpus-per-task=16",
        "--mem=200GB",
        "--partition=gpu",
        "--job-name=tiny-reward",
        "--requeue",
    ):
        assert f"#SBATCH {line}" in server
    assert not (tmp_path / "runs").exists()


def test_sweep_points_each_get_a_server_job(tmp_path, monkeypatch):
    """Without a cluster: the submissions submitit would make, recorded by a stand-in executor."""
    import contextlib
    import dataclasses
    from types import SimpleNamespace

    from fgrpo.recipe.io import load_recipe_file
    from launchers import slurm
    from launchers.base import LaunchJob
    from launchers.job import RewardServerJob, TrainJob
    from tests.conftest import REPO

    submitted = []

    class Executor:
        def __init__(self, folder, recipe, name, server=False):
            self.server = server

        def submit(self, fn):
            submitted.append((type(fn).__name__, fn.run_dir, self.server))
            return SimpleNamespace(job_id=str(100 + len(submitted)))

        def batch(self):
            return contextlib.nullcontext()

    monkeypatch.setattr(slurm, "make_executor", Executor)
    r = load_recipe_file(REPO / "recipes" / "tiny.py")
    r = dataclasses.replace(r, reward_server=dataclasses.replace(r.reward_server, launch=True))
    runs = [LaunchJob(tmp_path / f"p{i}", r, kind="sweep") for i in range(2)]
    for job in runs:
        job.run_dir.mkdir()
    ids = slurm.SlurmBackend().submit_array(runs)
    kinds = [(k, s) for k, _, s in submitted]
    assert kinds == [(RewardServerJob.__name__, True)] * 2 + [(TrainJob.__name__, False)] * 2
    assert [d for _, d, _ in submitted] == [str(j.run_dir.resolve()) for j in runs] * 2
    assert ids == ["103", "104"]
    for job, server_id in zip(runs, ["101", "102"]):
        assert [s["job_id"] for s in RunFolder(job.run_dir).server_jobs()] == [server_id]
