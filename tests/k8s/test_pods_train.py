"""The generated pods' commands really train: each pod's container command runs here as a local
process with the environment Kubernetes would give it (completion index, the first pod's DNS name
resolved to localhost, the ConfigMap mounted as a file, the PVC as a folder)."""

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fgrpo.recipe.io import load_recipe_file, to_dict
from fgrpo.run_folder import RunFolder
from tests.conftest import REPO
from tests.helpers.runs import train_metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pod_processes(tiny_model_dir, tmp_path, steps, port, reward_port: int | None = None):
    """Start the workers' pods (and, with ``reward_port``, the reward server's pod) as processes.

    Returns (worker processes, run folder, reward server process or None)."""
    from launchers.k8s.manifests import render

    r = load_recipe_file(REPO / "recipes" / "tiny.py")
    R = dataclasses.replace
    r = R(
        r,
        model=R(r.model, path=str(tiny_model_dir)),
        optim=R(r.optim, max_steps=steps),
        rollout=R(r.rollout, prompts_per_step=2, group_size=4, micro_batch=4),
        eval=R(r.eval, interval=1000, steps=2, videos_per_prompt=1),
        prompts=R(r.prompts, heldout=2),
        checkpoint=R(r.checkpoint, interval=1000),
        launch=R(r.launch, nodes=2, procs_per_node=1, k8s=R(r.launch.k8s, image="fgrpo:test")),
    )
    if reward_port is not None:
        r = R(r, reward_server=R(r.reward_server, launch=True, port=reward_port))
    objects = render(r, "tiny-k8s", json.dumps(to_dict(r)))
    configmap = next(o for o in objects if o["kind"] == "ConfigMap")
    workload = next(o for o in objects if o["kind"] in ("JobSet", "Job"))
    spec = workload["spec"]
    jobs = [rj["template"]["spec"] for rj in spec["replicatedJobs"]] if workload["kind"] == "JobSet" else [spec]
    # The "volumes": the ConfigMap as a file, the runs PVC as a folder.
    mounted = tmp_path / "etc-fgrpo"
    mounted.mkdir(exist_ok=True)
    for key, text in configmap["data"].items():
        (mounted / key).write_text(text)

    def start(container: dict, index: int) -> subprocess.Popen:
        env = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "JOB_COMPLETION_INDEX": str(index),
            "HOME": os.environ.get("HOME", "/root"),
        }
        if os.environ.get("FGRPO_CACHE"):
            env["FGRPO_CACHE"] = os.environ["FGRPO_CACHE"]
        for e in container["env"]:
            if "value" in e:
                env[e["name"]] = e["value"]
        env["MASTER_ADDR"] = "127.0.0.1"  # the first pod's stable DNS name, resolved to localhost
        env["FGRPO_RUN_DIR"] = str(tmp_path / "runs" / "tiny-k8s")
        env["FGRPO_RECIPE_FILE"] = str(mounted / "recipe.json")
        if "FGRPO_REWARD_URL" in env:  # the reward pod's stable DNS name, resolved to localhost
            env["FGRPO_REWARD_URL"] = re.sub(r"//[^:]+:", "//127.0.0.1:", env["FGRPO_REWARD_URL"])
        argv = [
            re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a)
            for a in container["command"] + container.get("args", [])
        ]
        argv = [re.sub(r"--master-port=\d+", f"--master-port={port}", a) for a in argv]
        if "--advertise-host" in argv:
            argv[argv.index("--advertise-host") + 1] = "127.0.0.1"
        assert "$(" not in " ".join(argv), argv
        return subprocess.Popen(
            argv,
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    server = None
    if len(jobs) > 1:  # the reward pod first: a test that hangs waiting for it would say nothing
        from fgrpo.rewards.server_lifecycle import wait_for_server

        server = start(jobs[1]["template"]["spec"]["containers"][0], 0)

        def server_alive():
            assert server.poll() is None, server.communicate()[0][-3000:]

        wait_for_server(lambda: f"http://127.0.0.1:{reward_port}", 120, server_alive, poll_s=0.2)
    workers = jobs[0]
    procs = [start(workers["template"]["spec"]["containers"][0], i) for i in range(workers["completions"])]
    return procs, tmp_path / "runs" / "tiny-k8s", server


def test_two_pods_train_stop_and_restart(tiny_model_dir, tmp_path):
    procs, run, _ = pod_processes(tiny_model_dir, tmp_path, 30, free_port())
    deadline = time.time() + 300
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(train_metrics(run)) >= 2):
        assert all(p.poll() is None for p in procs), [p.communicate()[0][-3000:] for p in procs]
        time.sleep(0.2)
    os.kill(procs[1].pid, signal.SIGTERM)  # pod 1 is evicted: its torchrun forwards SIGTERM
    outs = [p.communicate(timeout=180)[0] for p in procs]
    done = len(train_metrics(run))
    assert 2 <= done < 30, outs[0][-3000:]
    ckpt = RunFolder(run).latest_checkpoint()
    assert ckpt is not None and ckpt[0] == done, outs[0][-3000:] + outs[1][-3000:]  # the graceful save
    # The group restarts (both pods), resumes from the PVC and finishes.
    procs, run, _ = pod_processes(tiny_model_dir, tmp_path, done + 2, free_port())
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    assert [m["step"] for m in train_metrics(run)] == list(range(1, done + 3))


def test_pods_train_through_the_reward_pod(tiny_model_dir, tmp_path):
    """--reward-server.launch: the reward pod's command serves, the workers find it through
    FGRPO_REWARD_URL, and every reward of the run is scored there."""
    master_port = free_port()
    reward_port = next(p for p in iter(free_port, None) if p != master_port)
    procs, run, server = pod_processes(tiny_model_dir, tmp_path, 2, master_port, reward_port=reward_port)
    assert server is not None  # a reward_port starts the reward server's pod
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    finally:
        server.send_signal(signal.SIGTERM)
        log = server.communicate(timeout=60)[0]
    assert "rewards scored by the reward server at http://127.0.0.1:" in outs[0]
    assert [m["step"] for m in train_metrics(run)] == [1, 2]
    # 2 steps x 8 videos, and the 2 held-out videos before and after, over 2 data-parallel ranks.
    assert "reward server stopped after scoring 20 videos in" in log, log
