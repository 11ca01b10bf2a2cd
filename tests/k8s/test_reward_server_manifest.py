"""reward_server.launch on Kubernetes: a second replicated job in the JobSet runs the server, and the
trainer pods are told its stable DNS name."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fgrpo.recipe.io import to_dict
from launchers.k8s import manifests
from launchers.k8s.manifests import render
from tests.helpers.k8s import RUN, by_kind, make_recipe, schema_validator


def build_with_server(api="jobset", **server):
    recipe = make_recipe(api=api)
    server = {"gpus": 1, "cpus": 6, "mem_gb": 48, "port": 8123, **server}
    rs = dataclasses.replace(recipe.reward_server, launch=True, **server)
    recipe = dataclasses.replace(recipe, reward_server=rs)
    return recipe, render(recipe, RUN, json.dumps(to_dict(recipe), sort_keys=True))


def as_job(jobset: dict, rj: dict) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{jobset['metadata']['name']}-{rj['name']}-0", **rj["template"].get("metadata", {})},
        "spec": rj["template"]["spec"],
    }


def test_jobset_gets_a_reward_replicated_job():
    recipe, objs = build_with_server()
    js = by_kind(objs)["JobSet"]
    jobs = {rj["name"]: rj for rj in js["spec"]["replicatedJobs"]}
    assert list(jobs) == [manifests.REPLICATED_JOB, manifests.REWARD_JOB]
    # The set succeeds when training does; the server is not waited for.
    assert js["spec"]["successPolicy"]["targetReplicatedJobs"] == [manifests.REPLICATED_JOB]
    server_job = jobs[manifests.REWARD_JOB]["template"]["spec"]
    assert server_job["parallelism"] == server_job["completions"] == 1
    (c,) = server_job["template"]["spec"]["containers"]
    name = js["metadata"]["name"]
    host = f"{name}-{manifests.REWARD_JOB}-0-0.{name}"
    assert c["command"] == ["python"]
    assert c["args"] == [
        "-m",
        "fgrpo",
        "reward-server",
        "--recipe-file",
        "$(FGRPO_RECIPE_FILE)",
        "--run-dir",
        "$(FGRPO_RUN_DIR)",
        "--host",
        "0.0.0.0",
        "--port",
        "8123",
        "--advertise-host",
        host,
    ]
    assert c["resources"]["limits"] == {"cpu": "6", "memory": "48Gi", "nvidia.com/gpu": "1"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8123}
    assert "FGRPO_REWARD_URL" not in {e["name"] for e in c["env"]}
    # The trainers find it by its stable JobSet DNS name.
    (t,) = jobs[manifests.REPLICATED_JOB]["template"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in t["env"]}
    assert env["FGRPO_REWARD_URL"] == f"http://{host}:8123"
    assert t["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_jobset_with_server_validates():
    kv = pytest.importorskip("kubernetes_validate")
    _, objs = build_with_server()
    js = by_kind(objs)["JobSet"]
    schema_validator().validate(js)
    for rj in js["spec"]["replicatedJobs"]:
        kv.validate(as_job(js, rj), "1.31", strict=True)


def test_without_launch_there_is_no_server():
    recipe = make_recipe()
    objs = render(recipe, RUN, json.dumps(to_dict(recipe)))
    js = by_kind(objs)["JobSet"]
    assert [rj["name"] for rj in js["spec"]["replicatedJobs"]] == [manifests.REPLICATED_JOB]
    (t,) = js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"]
    assert "FGRPO_REWARD_URL" not in {e["name"] for e in t["env"]}


def test_indexed_job_api_cannot_launch_a_server():
    with pytest.raises(ValueError, match="reward_server.launch.*jobset"):
        build_with_server(api="indexed-job")


def test_server_pod_needs_memory():
    with pytest.raises(ValueError, match="reward_server.mem_gb"):
        build_with_server(mem_gb=0)
