"""The reward server's token on Kubernetes: a per-run Secret, referenced by the server and the
trainer containers, created with a fresh random token by the backend and never printed (the
manifests --dry-run shows hold the Secret without data). Before, the server ran open on 0.0.0.0."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from launchers.base import LaunchJob
from launchers.k8s import manifests
from launchers.k8s.backend import KubernetesBackend
from tests.helpers.k8s import by_kind, make_recipe
from tests.k8s.test_client import JOBSETS, NS, RUN, recipe
from tests.k8s.test_reward_server_manifest import build_with_server

SECRETS = f"/api/v1/namespaces/{NS}/secrets"


def _containers(jobset: dict) -> dict[str, dict]:
    return {
        rj["name"]: rj["template"]["spec"]["template"]["spec"]["containers"][0]
        for rj in jobset["spec"]["replicatedJobs"]
    }


def test_manifests_reference_a_token_secret_without_data():
    _, objs = build_with_server()
    assert [o["kind"] for o in objs] == ["ConfigMap", "Secret", "JobSet"]
    secret, js = by_kind(objs)["Secret"], by_kind(objs)["JobSet"]
    name = js["metadata"]["name"]
    assert secret["metadata"]["name"] == manifests.token_secret_name(name) == f"{name}-reward-token"
    assert secret["metadata"]["labels"][manifests.RUN_LABEL] == name  # deleted with the run
    assert "data" not in secret and "stringData" not in secret
    ref = {
        "name": "FGRPO_REWARD_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": f"{name}-reward-token", "key": "token"}},
    }
    for role, c in _containers(js).items():
        assert ref in c["env"], role  # the server and every trainer, by reference only
    # A recipe's own secret_env cannot take the variable over.
    r = make_recipe(secret_env={"FGRPO_REWARD_TOKEN": "mine/token"})
    r = dataclasses.replace(r, reward_server=dataclasses.replace(r.reward_server, launch=True))
    with pytest.raises(ValueError, match="FGRPO_REWARD_TOKEN is set by fgrpo"):
        manifests.render(r, RUN, "{}")


def test_token_secret_validates():
    kv = pytest.importorskip("kubernetes_validate")
    _, objs = build_with_server()
    kv.validate(by_kind(objs)["Secret"], "1.31", strict=True)


def test_no_server_no_secret():
    objs = manifests.render(make_recipe(), RUN, "{}")
    assert "Secret" not in by_kind(objs)
    assert "FGRPO_REWARD_TOKEN" not in json.dumps(objs)


def _job(tmp_path, run=RUN) -> LaunchJob:
    r = recipe()
    r = dataclasses.replace(r, reward_server=dataclasses.replace(r.reward_server, launch=True))
    (tmp_path / "runs" / run).mkdir(parents=True)
    return LaunchJob(tmp_path / "runs" / run, r)


def test_launch_creates_the_secret_with_a_fresh_token_dry_run_shows_none(kube, tmp_path, capsys):
    b = KubernetesBackend(backoff_s=0.01)
    job = _job(tmp_path)
    shown = b.describe(job)  # what --dry-run prints
    secret = by_kind(list(yaml.safe_load_all(shown)))["Secret"]
    assert "data" not in secret and "stringData" not in secret
    assert b.launch(job) == 0
    posts = [r for r in kube.requests if r["method"] == "POST"]
    assert [r["path"] for r in posts] == [f"/api/v1/namespaces/{NS}/configmaps", SECRETS, JOBSETS]
    token = posts[1]["body"]["stringData"]["token"]
    assert len(token) >= 40
    assert token not in shown and token not in capsys.readouterr().out
    assert token not in json.dumps(posts[2]["body"])  # the JobSet holds the reference only
    other = _job(tmp_path, run="tiny-r2")
    b.launch(other)
    second = [r for r in kube.requests if r["method"] == "POST" and r["path"] == SECRETS][-1]
    assert second["body"]["stringData"]["token"] != token  # one secret per run


def test_cancel_deletes_the_token_secret_by_name(kube, tmp_path):
    b = KubernetesBackend(backoff_s=0.01)
    job = _job(tmp_path)
    b.launch(job)
    kube.requests.clear()
    b.cancel(f"jobset/{NS}/{RUN}")
    assert ("DELETE", f"{SECRETS}/{RUN}-reward-token") in kube.sent("DELETE")
    assert ("GET", SECRETS) not in kube.sent("GET")  # never listed: a list returns every Secret's data
    assert not [key for key in kube.objects if key[0] in (SECRETS, JOBSETS)]
