"""Checkpoints: exact continuation in-process, graceful stop by signal, incomplete folders ignored."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fgrpo.run_folder import RunFolder
from tests.conftest import REPO
from tests.helpers.recipes import small_recipe


def trained_state(trainer):
    return {k: v.detach().clone() for k, v in trainer.params.items()}, {
        k: v.clone() for k, v in trainer.ema.shadow.items()
    }


def test_resume_continues_bitwise(tiny_model_dir, tmp_path):
    from fgrpo.trainer.trainer import Trainer

    straight = Trainer(small_recipe(tiny_model_dir, max_steps=4), tmp_path / "a")
    assert straight.run() == 0
    first = Trainer(small_recipe(tiny_model_dir, max_steps=2), tmp_path / "b")
    assert first.run() == 0
    resumed = Trainer(small_recipe(tiny_model_dir, max_steps=4), tmp_path / "b")
    assert resumed.run() == 0
    assert resumed.step == 4
    (pa, ea), (pb, eb) = trained_state(straight), trained_state(resumed)
    assert pa.keys() == pb.keys() and any("lora" in k for k in pa)
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
        assert torch.equal(ea[k], eb[k]), k
    # keep_last=2: only the two newest complete checkpoints stay
    assert [s for s, _ in RunFolder(tmp_path / "b").complete_checkpoints()] == [2, 4]


def test_incomplete_checkpoint_folders_are_ignored(tmp_path):
    ck = tmp_path / "checkpoints"
    (ck / "step-3").mkdir(parents=True)
    (ck / "step-3" / ".metadata").write_text("")
    (ck / "step-5").mkdir()  # no .metadata: a save that never finished
    (ck / ".step-6.partial").mkdir()
    assert RunFolder(tmp_path).latest_checkpoint() == (3, ck / "step-3")


def _train_lines(path):
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if '"kind": "train"' in x]


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c", "hang-up"])
def test_signal_stops_at_a_step_boundary_and_resume_finishes(tiny_model_dir, tmp_path, how):
    runs = tmp_path / "runs"
    args = [
        sys.executable,
        "-m",
        "fgrpo",
        "launch",
        str(REPO / "recipes" / "tiny.py"),
        "--model.path",
        str(tiny_model_dir),
        "--logging.runs-dir",
        str(runs),
        "--optim.max-steps",
        "400",
        "--checkpoint.interval",
        "1000",
        "--eval.interval",
        "1000",
    ]
    # Own session: Ctrl-C in a terminal sends SIGINT to the whole foreground process group.
    proc = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    run_dir = None
    deadline = time.time() + 240
    while time.time() < deadline:
        found = list(runs.glob("*/metrics.jsonl"))
        if found and len(_train_lines(found[0])) >= 2:
            run_dir = found[0].parent
            break
        time.sleep(0.2)
    assert run_dir is not None, "training never reached step 2"
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)  # to the launcher, as Slurm or Kubernetes would
    elif how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # launcher and trainer both get it, as from a terminal
    else:
        os.killpg(proc.pid, signal.SIGHUP)  # the terminal or SSH session closed: the same, saving first
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out  # "stopped cleanly, requeue me"
    done = _train_lines(run_dir / "metrics.jsonl")[-1]["step"]
    latest = RunFolder(run_dir).latest_checkpoint()
    assert latest is not None and latest[0] == done  # nothing completed was lost
    # Resume: same command, fewer total steps so it ends soon; it continues from the checkpoint.
    args[args.index("400")] = str(done + 2)
    res = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resumed from" in res.stdout
    steps = [m["step"] for m in _train_lines(run_dir / "metrics.jsonl")]
    assert steps[-2:] == [done + 1, done + 2]
