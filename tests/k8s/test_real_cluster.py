"""Opt-in: the tiny recipe on a real Kubernetes cluster (none can run on the CI machines).

    FGRPO_K8S_KUBECONFIG=~/.kube/config FGRPO_K8S_IMAGE=registry/fgrpo:tag \
        .venv/bin/python -m pytest tests/k8s/test_real_cluster.py

The cluster needs JobSet and the `k8s/` manifests applied (namespace `fgrpo`, RBAC, the
`fgrpo-runs` PVC); the image must contain this checkout (see k8s/README.md).
"""

import json
import os
import time

import pytest

from tests.conftest import REPO, run_fgrpo

KUBECONFIG = os.environ.get("FGRPO_K8S_KUBECONFIG")
IMAGE = os.environ.get("FGRPO_K8S_IMAGE")
pytestmark = pytest.mark.skipif(
    not (KUBECONFIG and IMAGE), reason="set FGRPO_K8S_KUBECONFIG and FGRPO_K8S_IMAGE to run on a real cluster"
)


def test_tiny_recipe_on_a_real_cluster(tmp_path):
    assert KUBECONFIG and IMAGE  # the skipif above
    env = {"KUBECONFIG": os.path.expanduser(KUBECONFIG)}
    name = f"tiny-e2e-{int(time.time())}"
    res = run_fgrpo(
        "launch",
        str(REPO / "recipes" / "tiny.py"),
        "--backend",
        "k8s",
        "--launch.k8s.image",
        IMAGE,
        "--launch.nodes",
        "2",
        "--launch.procs-per-node",
        "1",
        "--launch.k8s.cpu",
        "2",
        "--launch.k8s.memory",
        "4Gi",
        "--launch.k8s.shm-size",
        "1Gi",
        "--optim.max-steps",
        "5",
        "--logging.runs-dir",
        str(tmp_path),
        "--logging.run-name",
        name,
        cwd=tmp_path,
        env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    deadline = time.time() + 1800
    state = None
    while time.time() < deadline:
        out = run_fgrpo("status", str(tmp_path / name), "--json", env=env)
        state = json.loads(out.stdout.splitlines()[0])["state"]
        if state in ("COMPLETED", "FAILED"):
            break
        time.sleep(10)
    run_fgrpo("cancel", str(tmp_path / name), env=env)  # removes the finished objects
    assert state == "COMPLETED"
