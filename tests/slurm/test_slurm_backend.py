"""The Slurm backend against a real Slurm cluster on this machine (scripts/slurm-local.sh)."""

import json
import subprocess
import time

import pytest
import torch

from tests.conftest import REPO, run_fgrpo
from tests.helpers.runs import BASE_ARGS, launch_tiny, train_metrics, trained_weights
from tests.helpers.slurm import status, submit, wait_state, wait_steps


def test_two_nodes_two_tasks_complete(slurm_cluster, tiny_model_dir, tmp_path):
    run, job = submit(tiny_model_dir, tmp_path / "runs", 3)
    rows = wait_state(run, {"COMPLETED"})
    assert rows[0]["step"] == 3 and rows[0]["checkpoint"] == 3 and rows[0]["run_state"] == "completed"
    assert json.loads((run / "recipe.json").read_text())["launch"]["nodes"] == 2


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    """The same 4 processes (dp_shard=4) run straight through, locally."""
    return trained_weights(
        launch_tiny(tiny_model_dir, tmp_path_factory.mktemp("ref") / "runs", 4, 8, "--checkpoint.interval", "1000")
    )


def _requeue(job):
    subprocess.run(["scontrol", "requeue", job], check=True)


def _preempt(job):
    # A job in the higher-priority partition that needs both nodes: Slurm preempts (requeues) ours.
    subprocess.run(
        ["sbatch", "-p", "urgent", "-N", "2", "--ntasks-per-node", "1", "-o", "/dev/null", "--wrap", "sleep 3"],
        check=True,
    )


# A plain USR2 (`scancel --signal=USR2`, the time-limit warning) is not a variant of its own, to keep
# the suite within 45 minutes: "preemption" covers it, since the preempted job first receives the
# same USR2 (its --signal, sent at preemption by the cluster's preempt_send_user_signal) and takes
# the same path: save, submit the next job, exit within the grace time.
@pytest.mark.parametrize("interrupt", [_requeue, _preempt], ids=["scontrol-requeue", "preemption"])
def test_interruption_requeues_and_resumes_bitwise(slurm_cluster, tiny_model_dir, tmp_path, uninterrupted, interrupt):
    # No periodic checkpoints: whatever survives comes from the graceful stop.
    run, job = submit(tiny_model_dir, tmp_path / "runs", 8, "--checkpoint.interval", "1000")
    wait_steps(run, 2)
    interrupt(job)
    wait_state(run, {"COMPLETED"}, timeout=600)
    steps = [m["step"] for m in train_metrics(run)]
    assert steps == list(range(1, 9)), steps  # no optimizer step lost or repeated
    assert (run / "submitit").exists() and len(list((run / "submitit").glob("*_0_log.out"))) >= 1
    jobs = [json.loads(line) for line in (run / "jobs.jsonl").read_text().splitlines()]
    if interrupt is _requeue:  # SIGTERM: Slurm requeues the same job itself
        assert len(jobs) == 1 and jobs[0]["job_id"] == job, jobs
    else:  # USR2 alone (preemption or time-limit warning): the next job is submitted at once, no
        # cred_expire wait, and this one ends without a requeue (one job at a time: sacct says so)
        assert [j["kind"] for j in jobs] == ["launch", "requeue"] and jobs[-1]["job_id"] != job, jobs
    final = trained_weights(run)
    assert all(torch.equal(final[k], uninterrupted[k]) for k in final), "resumed run differs from uninterrupted"


def test_sweep_is_one_array_and_idempotent(slurm_cluster, tiny_model_dir, tmp_path):
    runs = tmp_path / "runs"
    args = [
        "sweep",
        str(REPO / "recipes" / "tiny.py"),
        "--grid",
        "optim.lr=1e-3,2e-3",
        "--grid",
        "rollout.group-size=2,4",
        "--backend",
        "slurm",
        "--model.path",
        str(tiny_model_dir),
        "--logging.runs-dir",
        str(runs),
        "--optim.max-steps",
        "2",
        *BASE_ARGS,
        "--launch.procs-per-node",
        "1",
        "--launch.array-parallelism",
        "4",
    ]
    res = run_fgrpo(*args, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (sweep,) = runs.glob("tiny-sweep-*")
    run_dirs = json.loads((sweep / "sweep.json").read_text())["runs"]
    assert len(run_dirs) == 4 and len(set(run_dirs)) == 4
    job_ids = [json.loads(open(f"{d}/jobs.jsonl").read().splitlines()[-1])["job_id"] for d in run_dirs]
    assert len({j.split("_")[0] for j in job_ids}) == 1 and sorted(j.split("_")[1] for j in job_ids) == list("0123")
    rows = wait_state(sweep, {"COMPLETED"}, timeout=600)
    assert len(rows) == 4 and all(r["run_state"] == "completed" for r in rows)
    again = run_fgrpo(*args, cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and "submitted" not in again.stdout and again.stdout.count("done") == 4


def test_cancel_then_resume(slurm_cluster, tiny_model_dir, tmp_path):
    run, job = submit(tiny_model_dir, tmp_path / "runs", 200, "--checkpoint.interval", "2")
    wait_steps(run, 3)
    res = run_fgrpo("cancel", str(run), timeout=60)
    assert res.returncode == 0, res.stderr
    rows = wait_state(run, {"CANCELLED", "CANCELLED+"}, timeout=120)
    assert rows[0]["run_state"] == "cancelled"
    stopped = rows[0]["checkpoint"]
    assert stopped >= 2
    res = run_fgrpo("resume", str(run), timeout=60)
    assert res.returncode == 0, res.stderr
    wait_steps(run, stopped + 2)
    assert json.loads((run / "jobs.jsonl").read_text().splitlines()[-1])["kind"] == "resume"
    run_fgrpo("cancel", str(run), timeout=60)


def test_real_failures_are_requeued_a_bounded_number_of_times(slurm_cluster, tiny_model_dir, tmp_path):
    """A run that fails for real (here: a reward model folder that exists but holds no model) is
    requeued `launch.max_failures` times, then marked failed with the reason in `fgrpo status`."""
    empty = tmp_path / "empty-clip"
    empty.mkdir()
    run, job = submit(
        tiny_model_dir,
        tmp_path / "runs",
        3,
        "--launch.nodes",
        "1",
        "--launch.procs-per-node",
        "1",
        "--launch.max-failures",
        "1",
        "--rewards.0.name",
        "clip",
        "--rewards.0.args",
        "model_path",
        str(empty),
    )
    deadline = time.time() + 300
    while time.time() < deadline and status(run)[0]["run_state"] != "failed":
        time.sleep(2)
    row = status(run)[0]
    assert row["run_state"] == "failed", row
    assert row["reason"].startswith("gave up after 1 requeues; last: "), row["reason"]
    assert "FileNotFoundError: CLIP reward: cannot load" in row["reason"], row["reason"]  # the first line of the cause
    assert json.loads((run / "failures.json").read_text())["count"] == 2
    rows = wait_state(run, {"FAILED"}, timeout=120)
    assert rows[0]["step"] == 0
