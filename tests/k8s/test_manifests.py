"""Kubernetes manifests: built-in kinds against the real OpenAPI schemas (kubernetes-validate),
the JobSet against launchers/k8s/jobset_schema.json, and the behaviour-bearing fields."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from fgrpo.recipe.io import from_dict, to_dict
from launchers.k8s import manifests
from launchers.k8s.manifests import object_name, parse_toleration, render
from tests.helpers.k8s import OLDEST, RUN, by_kind, make_recipe, schema_validator

REPO = Path(__file__).resolve().parents[2]
# 1.31: the oldest release where everything emitted is GA (podFailurePolicy and the
# DisruptionTarget pod condition went GA in 1.31); plus the newest schema kubernetes-validate ships.


def _versions() -> list[str]:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    return [OLDEST, kv.latest_version()]


def build(api="jobset", run=RUN, **k8s_changes):
    recipe = make_recipe(api=api, **k8s_changes)
    return recipe, render(recipe, run, json.dumps(to_dict(recipe), sort_keys=True))


def jobset_as_job(jobset: dict) -> dict:
    """The replicatedJob template wrapped into the batch/v1 Job that JobSet will create."""
    rj = jobset["spec"]["replicatedJobs"][0]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{jobset['metadata']['name']}-{rj['name']}-0", **rj["template"].get("metadata", {})},
        "spec": rj["template"]["spec"],
    }


def pod_spec(objs) -> dict:
    kinds = by_kind(objs)
    job = jobset_as_job(kinds["JobSet"]) if "JobSet" in kinds else kinds["Job"]
    return job["spec"]["template"]["spec"]


def container(objs) -> dict:
    (c,) = pod_spec(objs)["containers"]
    return c


# --- schema validation --------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["jobset", "indexed-job"])
def test_objects_in_creation_order(api):
    _, objs = build(api)
    expected = ["ConfigMap", "JobSet"] if api == "jobset" else ["ConfigMap", "Service", "Job"]
    assert [o["kind"] for o in objs] == expected
    assert all(o["metadata"]["namespace"] == "fgrpo" for o in objs)


@pytest.mark.parametrize("api", ["jobset", "indexed-job"])
def test_builtin_kinds_validate_against_kubernetes_schemas(api):
    kv = pytest.importorskip("kubernetes_validate")

    _, objs = build(api)
    builtin = [o for o in objs if o["kind"] != "JobSet"]
    if api == "jobset":
        builtin.append(jobset_as_job(by_kind(objs)["JobSet"]))
    for version in _versions():
        for obj in builtin:
            kv.validate(obj, version, strict=True)  # raises on an unknown or mistyped field


def test_jobset_validates_against_schema():
    _, objs = build("jobset")
    schema_validator().validate(by_kind(objs)["JobSet"])


def test_model_pvc_and_defaults_also_validate():
    kv = pytest.importorskip("kubernetes_validate")

    _, objs = build(
        "indexed-job",
        model_pvc="fgrpo-models",
        node_selector={"pool": "h100"},
        priority_class="training",
        tolerations=("dedicated=gpu:NoExecute",),
        secret_env={},
        kueue_queue=None,
    )
    for version in _versions():
        for obj in objs:
            kv.validate(obj, version, strict=True)


@pytest.mark.parametrize("api", ["jobset", "indexed-job"])
def test_official_client_models_keep_every_field(api):
    """The kubernetes client's models (what its typed APIs send) round-trip each built-in object
    losslessly: no field is unknown to them, none is dropped or retyped."""
    client = pytest.importorskip("kubernetes.client")
    _, objs = build(api)
    kinds = by_kind(objs)
    pairs = [(kinds["ConfigMap"], "V1ConfigMap")]
    if api == "jobset":
        pairs.append((jobset_as_job(kinds["JobSet"]), "V1Job"))
    else:
        pairs += [(kinds["Service"], "V1Service"), (kinds["Job"], "V1Job")]
    api_client = client.ApiClient()
    for obj, model in pairs:
        model_obj = api_client.deserialize(json.dumps(obj), model, "application/json")
        assert api_client.sanitize_for_serialization(model_obj) == obj


# --- broken objects must fail (the checks above can fail) ---------------------------------------


@pytest.mark.parametrize(
    "breakage",
    [
        lambda js: js["spec"]["failurePolicy"].update(maxRestart=3),  # misspelled field
        lambda js: js["spec"]["failurePolicy"]["rules"][0].update(action="RestartJobset"),  # not an action
        lambda js: js["spec"]["network"].update(enableDnsHostnames=True),
        lambda js: js["spec"]["replicatedJobs"][0].update(replica=1),
        lambda js: js["spec"]["successPolicy"].update(operator="Every"),
        lambda js: js["metadata"].update(name="Not_A_DNS_Name"),
    ],
)
def test_broken_jobset_fails_schema(breakage):
    jsonschema = pytest.importorskip("jsonschema")

    _, objs = build("jobset")
    js = copy.deepcopy(by_kind(objs)["JobSet"])
    breakage(js)
    with pytest.raises(jsonschema.ValidationError):
        schema_validator().validate(js)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda job: job["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicyy="Always"),
        lambda job: job["spec"]["template"]["spec"].update(restartpolicy="Never"),
        lambda job: job["spec"].update(backoffLimit="zero"),
    ],
)
def test_broken_job_fails_kubernetes_validate(breakage):
    kv = pytest.importorskip("kubernetes_validate")

    for api in ("jobset", "indexed-job"):
        _, objs = build(api)
        kinds = by_kind(objs)
        job = copy.deepcopy(jobset_as_job(kinds["JobSet"]) if api == "jobset" else kinds["Job"])
        breakage(job)
        for version in _versions():
            with pytest.raises(kv.ValidationError):
                kv.validate(job, version, strict=True)


def test_pod_condition_status_is_needed_before_1_35():
    """`onPodConditions[].status` defaults to True, but schemas up to 1.34 require it: omitting it
    passes the newest schema and fails the oldest, which is why render() always sets it."""
    kv = pytest.importorskip("kubernetes_validate")
    _, objs = build("indexed-job")
    job = copy.deepcopy(by_kind(objs)["Job"])
    job["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0].pop("status")
    with pytest.raises(kv.ValidationError):
        kv.validate(job, OLDEST, strict=True)
    kv.validate(job, kv.latest_version(), strict=True)


# --- behaviour-bearing fields -------------------------------------------------------------------


def test_jobset_structure_and_failure_policy():
    recipe, objs = build("jobset")
    js = by_kind(objs)["JobSet"]
    spec = js["spec"]
    (rj,) = spec["replicatedJobs"]
    job = rj["template"]["spec"]
    assert (rj["name"], rj["replicas"]) == ("workers", 1)
    assert job["parallelism"] == job["completions"] == recipe.launch.nodes == 2
    assert job["completionMode"] == "Indexed" and job["backoffLimit"] == 0
    assert job["podFailurePolicy"]["rules"] == [
        {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]
    assert spec["network"]["enableDNSHostnames"] is True
    fp = spec["failurePolicy"]
    assert fp["maxRestarts"] == recipe.launch.k8s.max_restarts
    # Disruptions (Job failed by its podFailurePolicy) restart without using the budget; any
    # other failure is a counted RestartJobSet. The first matching rule wins.
    assert fp["rules"][0]["action"] == "RestartJobSetAndIgnoreMaxRestarts"
    assert fp["rules"][0]["onJobFailureReasons"] == ["PodFailurePolicy"]
    assert fp["rules"][1]["action"] == "RestartJobSet" and "onJobFailureReasons" not in fp["rules"][1]
    assert spec["successPolicy"] == {"operator": "All", "targetReplicatedJobs": ["workers"]}
    assert js["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert js["metadata"]["annotations"]["fgrpo.dev/run-name"] == RUN
    assert js["metadata"]["labels"]["fgrpo.dev/run"] == js["metadata"]["name"]
    assert "suspend" not in spec  # Kueue's webhook suspends it on creation


def test_indexed_job_structure():
    recipe, objs = build("indexed-job", max_restarts=4)
    kinds = by_kind(objs)
    job, svc = kinds["Job"], kinds["Service"]
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 2
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["backoffLimit"] == 4 * 2
    assert job["spec"]["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert job["spec"]["template"]["spec"]["subdomain"] == svc["metadata"]["name"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"


@pytest.mark.parametrize("api", ["jobset", "indexed-job"])
def test_master_addr_is_index_0_hostname(api):
    _, objs = build(api)
    kinds = by_kind(objs)
    env = {e["name"]: e for e in container(objs)["env"]}
    if api == "jobset":
        js = kinds["JobSet"]
        # JobSet pod hostname: <jobset>-<replicatedJob>-<jobIndex>-<podIndex>, subdomain network.subdomain
        name, rj = js["metadata"]["name"], js["spec"]["replicatedJobs"][0]["name"]
        expected = f"{name}-{rj}-0-0.{js['spec']['network']['subdomain']}"
        longest = f"{name}-{rj}-0-{js['spec']['replicatedJobs'][0]['template']['spec']['completions'] - 1}-abcde"
    else:
        job = kinds["Job"]  # Indexed Job pod hostname: <job>-<index>, subdomain = headless Service
        expected = f"{job['metadata']['name']}-0.{job['spec']['template']['spec']['subdomain']}"
        longest = f"{job['metadata']['name']}-{job['spec']['completions'] - 1}-abcde"
    assert env["MASTER_ADDR"]["value"] == expected
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", longest) and len(longest) <= 63


@pytest.mark.parametrize("api", ["jobset", "indexed-job"])
def test_torchrun_command(api):
    recipe, objs = build(api)
    c = container(objs)
    assert c["command"] == ["torchrun"]  # no shell: Kubernetes expands $(VAR) itself
    args = c["args"]
    opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
    assert int(opts["nnodes"]) == recipe.launch.nodes
    assert int(opts["nproc-per-node"]) == recipe.procs_per_node == 2
    assert opts["node-rank"] == "$(JOB_COMPLETION_INDEX)"
    assert opts["master-addr"] == "$(MASTER_ADDR)" and opts["master-port"] == "29500"
    assert int(opts["shutdown-timeout"]) == recipe.launch.k8s.termination_grace_period_s
    i = args.index("-m")
    assert args[i:] == [
        "-m",
        "fgrpo",
        "train",
        "--run-dir",
        "$(FGRPO_RUN_DIR)",
        "--recipe-file",
        "$(FGRPO_RECIPE_FILE)",
    ]
    env = {e["name"]: e for e in c["env"]}
    for ref in re.findall(r"\$\((\w+)\)", " ".join(args)):
        assert ref in env, ref
    assert env["FGRPO_RUN_DIR"]["value"] == f"/runs/{RUN}"
    assert env["FGRPO_RECIPE_FILE"]["value"] == "/etc/fgrpo/recipe.json"
    assert env["OMP_NUM_THREADS"]["value"] == "1"
    assert (
        env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )


def test_torchrun_accepts_the_shutdown_timeout_option():
    run = pytest.importorskip("torch.distributed.run")
    args = run.get_args_parser().parse_args(["--nnodes=2", "--nproc-per-node=2", "--shutdown-timeout=300", "x.py"])
    assert args.shutdown_timeout == 300


def test_every_rank_writes_its_output_into_the_run_folder():
    """torchrun tees each worker's stdout and stderr into the run folder on the PVC (the pod log keeps them too)."""
    run = pytest.importorskip("torch.distributed.run")
    _, objs = build("jobset")
    args = container(objs)["args"]
    assert "--log-dir=$(FGRPO_RUN_DIR)/logs/torchrun" in args and "--tee=3" in args
    parsed = run.get_args_parser().parse_args(["--log-dir=/runs/r/logs/torchrun", "--tee=3", "x.py"])
    assert parsed.log_dir == "/runs/r/logs/torchrun" and parsed.tee == "3"


@pytest.mark.parametrize("api", ["jobset", "indexed-job"])
def test_every_object_of_a_run_carries_the_run_label_cancel_selects_by(api):
    _, objs = build(api)
    labels = {o["kind"]: o["metadata"]["labels"].get(manifests.RUN_LABEL) for o in objs}
    assert set(labels.values()) == {object_name(RUN)}, labels  # the ConfigMap's was "<name>-recipe"


@pytest.mark.parametrize("api", ["jobset", "indexed-job"])
def test_recipe_round_trips_through_configmap(api):
    recipe, objs = build(api)
    cm = by_kind(objs)["ConfigMap"]
    assert cm["metadata"]["name"] == f"{object_name(RUN)}-recipe"
    assert from_dict(json.loads(cm["data"]["recipe.json"])) == recipe
    volumes = {v["name"]: v for v in pod_spec(objs)["volumes"]}
    assert volumes["recipe"]["configMap"]["name"] == cm["metadata"]["name"]
    assert "recipe.json" not in json.dumps(container(objs)["args"])  # never on the command line


@pytest.mark.parametrize("api", ["jobset", "indexed-job"])
def test_secrets_only_as_references(api, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "sk-live-should-never-leak")
    _, objs = build(api)
    text = json.dumps(objs)
    assert "sk-live-should-never-leak" not in text
    env = {e["name"]: e for e in container(objs)["env"]}
    assert env["WANDB_API_KEY"] == {
        "name": "WANDB_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}},
    }
    assert not any(o["kind"] == "Secret" for o in objs)


@pytest.mark.parametrize("api", ["jobset", "indexed-job"])
def test_security_context_resources_and_volumes(api):
    recipe, objs = build(api, model_pvc="fgrpo-models")
    spec, c = pod_spec(objs), container(objs)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == spec["securityContext"]["fsGroup"] == 1000
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert spec["restartPolicy"] == "Never"
    assert spec["terminationGracePeriodSeconds"] == recipe.launch.k8s.termination_grace_period_s
    assert spec["serviceAccountName"] == "fgrpo" and spec["automountServiceAccountToken"] is False
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    res = c["resources"]
    assert res["requests"] == res["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "8"}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert volumes[mounts["/runs"]["name"]]["persistentVolumeClaim"] == {"claimName": "fgrpo-runs"}
    assert "subPath" not in mounts["/runs"] and not mounts["/runs"].get("readOnly")
    assert mounts["/etc/fgrpo"]["readOnly"] is True
    assert mounts["/models"]["readOnly"] is True
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"] == {
        "claimName": "fgrpo-models",
        "readOnly": True,
    }


def test_no_gpu_request_without_gpus_and_no_model_volume_by_default():
    recipe = make_recipe()
    recipe = dataclasses.replace(recipe, launch=dataclasses.replace(recipe.launch, gpus_per_node=0))
    objs = render(recipe, RUN, "{}")
    c = container(objs)
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert "/models" not in {m["mountPath"] for m in c["volumeMounts"]}


# --- names and input validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "run",
    ["tiny", "Tiny", "tiny__lr=0.001", "9lives", "x" * 200, "a.b,c+d", "wan1_3b__" + "lr=0.0001_" * 9 + "__0123456789"],
)
def test_object_names_are_dns_labels(run):
    name = object_name(run)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= manifests.MAX_NAME
    assert object_name(run) == name  # stable
    if run != "tiny":
        assert name != object_name(run + "x")


def test_distinct_runs_get_distinct_names():
    assert object_name("Tiny") != object_name("tiny")
    assert object_name("tiny__lr=0.1") != object_name("tiny__lr-0.1")
    assert object_name("tiny") == "tiny"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("nvidia.com/gpu:NoSchedule", {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}),
        ("dedicated=gpu:NoExecute", {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoExecute"}),
    ],
)
def test_parse_toleration(text, expected):
    assert parse_toleration(text) == expected


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(image=""), "launch.k8s.image: required for --backend k8s"),
        (dict(tolerations=("nvidia.com/gpu",)), "launch.k8s.tolerations"),
        (dict(tolerations=("gpu=:NoSchedule",)), "launch.k8s.tolerations"),
        (dict(tolerations=("gpu:NoScheduleX",)), "launch.k8s.tolerations"),
        (dict(secret_env={"WANDB_API_KEY": "wandb"}), "launch.k8s.secret_env['WANDB_API_KEY']: bad secret ref"),
        (dict(secret_env={"WANDB_API_KEY": "Wandb/key"}), "bad secret ref"),
        (dict(secret_env={"BAD-NAME": "wandb/key"}), "launch.k8s.secret_env['BAD-NAME']"),
        (dict(secret_env={"MASTER_ADDR": "x/y"}), "set by fgrpo"),
        (dict(memory="64 GB"), "launch.k8s.memory"),
        (dict(shm_size="lots"), "launch.k8s.shm_size"),
        (dict(api="volcano"), "launch.k8s.api"),
        (dict(max_restarts=-1), "launch.k8s.max_restarts"),
        (dict(namespace="Team_A"), "launch.k8s.namespace"),
        (dict(kueue_queue="Team A"), "launch.k8s.kueue_queue"),
        (dict(run_as_user=0), "launch.k8s.run_as_user"),
    ],
)
def test_bad_inputs_name_the_field(changes, field):
    with pytest.raises(ValueError) as e:
        build(**changes)
    assert field in str(e.value)


@pytest.mark.parametrize("run", ["", "..", "a/b", "x$(HOME)", "has space"])
def test_bad_run_names_are_rejected(run):
    with pytest.raises(ValueError, match="run name"):
        build(run=run)


def test_too_few_gpus_for_processes():
    recipe = make_recipe()
    recipe = dataclasses.replace(recipe, launch=dataclasses.replace(recipe.launch, gpus_per_node=1))
    with pytest.raises(ValueError, match="launch.gpus_per_node"):
        render(recipe, RUN, "{}")


# --- the ready-to-apply k8s/ folder --------------------------------------------------------------


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((REPO / "k8s" / name).read_text()) if d]


@pytest.mark.parametrize("name", ["namespace.yaml", "rbac.yaml", "pvc.yaml", "kueue.yaml"])
def test_k8s_folder_manifests_validate(name):
    kv = pytest.importorskip("kubernetes_validate")

    docs = _docs(name)
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys()
        if doc["apiVersion"].startswith("kueue.x-k8s.io/"):
            continue  # a CRD: kubernetes-validate has no schema for it (checked below)
        for version in _versions():
            kv.validate(doc, version, strict=True)


def test_rbac_is_least_privilege():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _docs("rbac.yaml")}
    sa = docs[("ServiceAccount", "fgrpo")]
    assert sa["automountServiceAccountToken"] is False
    rules = {
        (g, r): set(rule["verbs"])
        for rule in docs[("Role", "fgrpo-launcher")]["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    crud = {"create", "get", "list", "watch", "delete"}
    assert rules == {
        ("", "configmaps"): crud,
        ("", "services"): crud,
        ("batch", "jobs"): crud,
        ("jobset.x-k8s.io", "jobsets"): crud,
        ("", "pods"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},
        ("", "secrets"): {"create", "delete"},
    }
    binding = docs[("RoleBinding", "fgrpo-launcher")]
    assert binding["subjects"] == [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "fgrpo-users"}]
    assert binding["roleRef"]["name"] == "fgrpo-launcher"
    assert all(d["metadata"].get("namespace") == "fgrpo" for d in docs.values())


def test_pvcs_and_kueue_match_the_defaults():
    recipe = make_recipe()
    pvcs = {d["metadata"]["name"]: d for d in _docs("pvc.yaml")}
    assert recipe.launch.k8s.runs_pvc in pvcs
    assert pvcs["fgrpo-runs"]["spec"]["accessModes"] == ["ReadWriteMany"]
    kueue = {d["kind"]: d for d in _docs("kueue.yaml")}
    assert set(kueue) == {"ResourceFlavor", "ClusterQueue", "LocalQueue"}
    lq, cq = kueue["LocalQueue"], kueue["ClusterQueue"]
    assert lq["metadata"] == {"name": "team-a", "namespace": recipe.launch.k8s.namespace}
    assert lq["spec"]["clusterQueue"] == cq["metadata"]["name"]
    (group,) = cq["spec"]["resourceGroups"]
    assert set(group["coveredResources"]) == {"cpu", "memory", "nvidia.com/gpu"}
    for flavor in group["flavors"]:
        assert flavor["name"] == kueue["ResourceFlavor"]["metadata"]["name"]
        assert [r["name"] for r in flavor["resources"]] == group["coveredResources"]
    assert cq["spec"]["preemption"]["withinClusterQueue"] == "LowerPriority"
