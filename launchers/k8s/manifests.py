"""Kubernetes objects for one run, as plain dicts (pure functions: no API calls).

`render(recipe, run_name, recipe_json)` returns, in creation order: the ConfigMap holding the
resolved recipe, with reward_server.launch the Secret of the reward server's token (rendered
without data: the backend fills in a fresh random token when it creates it), then either a
JobSet (`launch.k8s.api == "jobset"`) or a headless Service plus an Indexed Job. Every pod runs
`torchrun ... -m fgrpo train --run-dir /runs/<run_name> --recipe-file /etc/fgrpo/recipe.json`;
the run folder lives on the runs PVC and is keyed by run name only, so a recreated pod, a
restarted JobSet or a resubmitted run finds the same folder.

The objects carry no ownerReferences (UIDs exist only after creation): the client deletes them
by the `fgrpo.dev/run` label, or adds ownerReferences after creating the workload.
"""

from __future__ import annotations

import hashlib
import re

from fgrpo.recipe.config import Recipe

RUN_LABEL = "fgrpo.dev/run"
RUN_ANNOTATION = "fgrpo.dev/run-name"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
REPLICATED_JOB = "workers"
REWARD_JOB = "reward"  # the reward server's replicated job (reward_server.launch)
TOKEN_ENV, TOKEN_KEY = "FGRPO_REWARD_TOKEN", "token"  # fgrpo.rewards.server_lifecycle.TOKEN_ENV; Secret key
RUNS_MOUNT = "/runs"
RECIPE_DIR = "/etc/fgrpo"
RECIPE_FILE = f"{RECIPE_DIR}/recipe.json"
MODELS_MOUNT = "/models"
MASTER_PORT = 29500
# Object names end up in pod hostnames: `<name>-workers-<job>-<index>` (JobSet) or
# `<name>-<index>` (Indexed Job), plus a 6-character random suffix in pod names; all must be
# DNS-1035 labels of at most 63 characters. 40 leaves room for 10,000 nodes.
MAX_NAME = 40

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_RUN_NAME = re.compile(r"^[A-Za-z0-9_.=,+-]+$")  # the alphabet of fgrpo.recipe.io.run_name
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Set on pods deleted by preemption, eviction, node drain or taint-based deletion. `status` is
# defaulted to True by the API server but required by its OpenAPI schema (and by kubernetes-validate).
_DISRUPTED = {"type": "DisruptionTarget", "status": "True"}


def object_name(run_name: str) -> str:
    """DNS-1035 name for a run: lowercase [a-z0-9-], starts with a letter, at most MAX_NAME.

    Kept as is when already valid and short; otherwise shortened and suffixed with a hash of the
    full run name, so two run names that sanitise alike still get different objects."""
    base = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", run_name.lower())).strip("-")
    if not base[:1].isalpha():
        base = "fgrpo-" + base
    if base == run_name and len(base) <= MAX_NAME:
        return base
    digest = hashlib.sha1(run_name.encode()).hexdigest()[:8]
    return base[: MAX_NAME - 9].rstrip("-") + "-" + digest


def master_addr(recipe: Recipe, name: str) -> str:
    """Stable DNS name of the pod with completion index 0 (torch rendezvous master)."""
    if recipe.launch.k8s.api == "jobset":
        # JobSet pod hostname `<jobset>-<replicatedJob>-<jobIndex>-<podIndex>`, subdomain = the
        # headless Service JobSet creates (network.subdomain, set to the JobSet name below).
        return f"{name}-{REPLICATED_JOB}-0-0.{name}"
    return f"{name}-0.{name}"  # Indexed Job: `<job>-<index>`, subdomain = our Service


def reward_url(recipe: Recipe, name: str) -> str:
    """The reward server pod's stable DNS name in the JobSet's headless service."""
    return f"http://{name}-{REWARD_JOB}-0-0.{name}:{recipe.reward_server.port}"


def token_secret_name(name: str) -> str:
    return f"{name}-reward-token"


def reward_server_args(recipe: Recipe, name: str) -> list[str]:
    """`fgrpo reward-server` arguments of the reward pod: the recipe from the ConfigMap (the run
    folder's copy may not exist yet: rank 0 writes it), the recipe's port, the stable DNS name."""
    host = reward_url(recipe, name).split("//")[1].rsplit(":", 1)[0]
    return [
        "--recipe-file",
        "$(FGRPO_RECIPE_FILE)",
        "--run-dir",
        "$(FGRPO_RUN_DIR)",
        "--host",
        "0.0.0.0",
        "--port",
        str(recipe.reward_server.port),
        "--advertise-host",
        host,
    ]


def parse_toleration(text: str) -> dict:
    """`key=value:Effect` (operator Equal) or `key:Effect` (operator Exists)."""
    where = f"launch.k8s.tolerations: bad toleration {text!r}"
    body, sep, effect = text.rpartition(":")
    if not sep or effect not in _EFFECTS:
        raise ValueError(f"{where}: expected key=value:Effect or key:Effect, Effect one of {', '.join(_EFFECTS)}")
    key, eq, value = body.partition("=")
    if not _LABEL_KEY.match(key) or (eq and not (value and _LABEL_VALUE.match(value))):
        raise ValueError(f"{where}: expected key=value:Effect or key:Effect with a valid key and value")
    if eq:
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}
    return {"key": key, "operator": "Exists", "effect": effect}


def parse_secret_ref(env: str, ref: str) -> dict:
    """`NAME: secret/key` -> an env entry whose value comes from the Secret (never inline)."""
    where = f"launch.k8s.secret_env[{env!r}]"
    if not _ENV_NAME.match(env):
        raise ValueError(f"{where}: environment variable names are [A-Za-z_][A-Za-z0-9_]*")
    secret, sep, key = ref.partition("/")
    if not sep or not _DNS1123_SUBDOMAIN.match(secret) or len(secret) > 253 or not _SECRET_KEY.match(key):
        raise ValueError(f"{where}: bad secret ref {ref!r}: expected secret-name/key")
    return {"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _check(recipe: Recipe, run_name: str, recipe_json: str) -> None:
    k, la = recipe.launch.k8s, recipe.launch
    if not k.image or any(c.isspace() for c in k.image):
        raise ValueError("launch.k8s.image: required for --backend k8s (an image with fgrpo installed)")
    if k.api not in ("jobset", "indexed-job"):
        raise ValueError(f"launch.k8s.api: {k.api!r} is not one of jobset, indexed-job")
    if not _RUN_NAME.match(run_name) or run_name in (".", ".."):
        raise ValueError(f"run name {run_name!r}: must be non-empty and use only [A-Za-z0-9_.=,+-]")
    if la.nodes < 1:
        raise ValueError(f"launch.nodes: must be >= 1 (got {la.nodes})")
    if recipe.procs_per_node < 1:
        raise ValueError(f"launch.procs_per_node: must be >= 1 (got {recipe.procs_per_node})")
    if la.gpus_per_node < 0 or (la.gpus_per_node and recipe.procs_per_node > la.gpus_per_node):
        raise ValueError(
            f"launch.gpus_per_node: {la.gpus_per_node} GPUs cannot serve "
            f"{recipe.procs_per_node} processes per node (one GPU each)"
        )
    if k.max_restarts < 0:
        raise ValueError(f"launch.k8s.max_restarts: must be >= 0 (got {k.max_restarts})")
    if k.termination_grace_period_s < 1:
        raise ValueError("launch.k8s.termination_grace_period_s: must be >= 1 (a checkpoint save needs time)")
    if k.run_as_user < 1:
        raise ValueError("launch.k8s.run_as_user: must be a non-root uid (>= 1)")
    if not _DNS1123_LABEL.match(k.namespace) or len(k.namespace) > 63:
        raise ValueError(f"launch.k8s.namespace: {k.namespace!r} is not a DNS-1123 label")
    for field in ("runs_pvc", "model_pvc", "priority_class", "service_account"):
        value = getattr(k, field)
        if value is not None and (not _DNS1123_SUBDOMAIN.match(value) or len(value) > 253):
            raise ValueError(f"launch.k8s.{field}: {value!r} is not a valid object name")
    if k.kueue_queue is not None and not (_DNS1123_SUBDOMAIN.match(k.kueue_queue) and len(k.kueue_queue) <= 63):
        raise ValueError(f"launch.k8s.kueue_queue: {k.kueue_queue!r} is not a valid LocalQueue name")
    for field in ("cpu", "memory", "shm_size"):
        if not _QUANTITY.match(str(getattr(k, field))):
            raise ValueError(
                f"launch.k8s.{field}: {getattr(k, field)!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)"
            )
    for key, value in k.node_selector.items():
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value) or len(value) > 63:
            raise ValueError(f"launch.k8s.node_selector: bad label {key!r}: {value!r}")
    if recipe.reward_server.launch and recipe.reward_server.mem_gb <= 0:
        raise ValueError("reward_server.mem_gb: the reward server's pod needs a memory limit (> 0 GB)")
    if recipe.reward_server.launch and k.api != "jobset":
        raise ValueError(
            "reward_server.launch: on Kubernetes the reward server runs as a replicated job of the "
            "JobSet; set --launch.k8s.api jobset, or start a server and pass --reward-server.url"
        )
    if len(recipe_json.encode()) > 1_000_000:
        raise ValueError("recipe JSON exceeds the 1 MB ConfigMap limit")


def _env(recipe: Recipe, name: str, run_name: str) -> list[dict]:
    k = recipe.launch.k8s
    env = [
        # Indexed Jobs (and so JobSet's child Jobs) inject this too; the Job controller skips
        # the injection when the container already defines it. Set explicitly, and first, so
        # the `$(JOB_COMPLETION_INDEX)` reference in args does not depend on controller details.
        {
            "name": "JOB_COMPLETION_INDEX",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}},
        },
        {"name": "MASTER_ADDR", "value": master_addr(recipe, name)},
        {"name": "FGRPO_RUN_DIR", "value": f"{RUNS_MOUNT}/{run_name}"},
        {"name": "FGRPO_RECIPE_FILE", "value": RECIPE_FILE},
        {"name": "OMP_NUM_THREADS", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if recipe.reward_server.launch:
        env.append({"name": "FGRPO_REWARD_URL", "value": reward_url(recipe, name)})
        # Server and trainers alike: the token never appears in a manifest, only the reference.
        ref = {"name": token_secret_name(name), "key": TOKEN_KEY}
        env.append({"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": ref}})
    reserved = {e["name"] for e in env}
    for var, ref in sorted(k.secret_env.items()):
        if var in reserved:
            raise ValueError(f"launch.k8s.secret_env[{var!r}]: {var} is set by fgrpo and cannot come from a Secret")
        env.append(parse_secret_ref(var, ref))
    return env


def _pod_template(recipe: Recipe, name: str, run_name: str, subdomain: str | None) -> dict:
    k, la = recipe.launch.k8s, recipe.launch
    args = [
        f"--nnodes={la.nodes}",
        f"--nproc-per-node={recipe.procs_per_node}",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        "--master-addr=$(MASTER_ADDR)",
        f"--master-port={MASTER_PORT}",
        # On SIGTERM torchrun forwards the signal to its workers and SIGKILLs them after its
        # shutdown timeout (default 30 s; torch 2.13: --shutdown-timeout, env PET_SHUTDOWN_TIMEOUT
        # or TORCH_ELASTIC_SHUTDOWN_TIMEOUT). Match the pod's grace period so a checkpoint save
        # is bounded by the kubelet's SIGKILL only.
        f"--shutdown-timeout={k.termination_grace_period_s}",
        # Each rank's output also goes to the run folder on the PVC (the pod log keeps it too):
        # RUN/logs/torchrun/<run id>_*/attempt_N/<local rank>/{stdout,stderr}.log.
        "--log-dir=$(FGRPO_RUN_DIR)/logs/torchrun",
        "--tee=3",
        "-m",
        "fgrpo",
        "train",
        "--run-dir",
        "$(FGRPO_RUN_DIR)",
        "--recipe-file",
        "$(FGRPO_RECIPE_FILE)",
    ]
    limits = {"cpu": str(k.cpu), "memory": str(k.memory)}
    if la.gpus_per_node > 0:
        limits["nvidia.com/gpu"] = str(la.gpus_per_node)
    mounts = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        # The whole PVC at /runs, not a subPath per run: the run folder is /runs/<run_name> in
        # every pod and every restart (keyed by run name alone), rank 0 creates it on first
        # start (kubelet-created subPath folders are root-owned on many drivers and would not be
        # writable by a non-root uid), and the folder survives the deletion of every object here.
        {"name": "runs", "mountPath": RUNS_MOUNT},
        {"name": "recipe", "mountPath": RECIPE_DIR, "readOnly": True},
    ]
    volumes = [
        # Memory-backed: counts against the container's memory limit.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(k.shm_size)}},
        {"name": "runs", "persistentVolumeClaim": {"claimName": k.runs_pvc}},
        {"name": "recipe", "configMap": {"name": f"{name}-recipe", "defaultMode": 0o444}},
    ]
    if k.model_pvc:
        mounts.append({"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True})
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": k.model_pvc, "readOnly": True}})
    container = {
        "name": "trainer",
        "image": k.image,
        "command": ["torchrun"],  # no shell: Kubernetes expands $(VAR) from the env below
        "args": args,
        "env": _env(recipe, name, run_name),
        "ports": [{"name": "torch-master", "containerPort": MASTER_PORT, "protocol": "TCP"}],
        "resources": {"requests": dict(limits), "limits": limits},
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    spec = {
        "restartPolicy": "Never",  # required by podFailurePolicy; the Job/JobSet restarts pods
        "serviceAccountName": k.service_account,
        "automountServiceAccountToken": False,  # the pods never call the API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": k.termination_grace_period_s,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": k.run_as_user,
            "runAsGroup": k.run_as_user,
            "fsGroup": k.run_as_user,
            "fsGroupChangePolicy": "OnRootMismatch",  # no recursive chown of a large runs volume
        },
        "containers": [container],
        "volumes": volumes,
    }
    if subdomain:
        spec["subdomain"] = subdomain
    if k.node_selector:
        spec["nodeSelector"] = dict(k.node_selector)
    if k.tolerations:
        spec["tolerations"] = [parse_toleration(t) for t in k.tolerations]
    if k.priority_class:
        spec["priorityClassName"] = k.priority_class
    return {"metadata": {"labels": {RUN_LABEL: name}, "annotations": {RUN_ANNOTATION: run_name}}, "spec": spec}


def _reward_pod_template(recipe: Recipe, name: str, run_name: str) -> dict:
    """The trainer's pod (volumes, security, placement) running `fgrpo reward-server` on its own resources."""
    rs = recipe.reward_server
    template = _pod_template(recipe, name, run_name, subdomain=None)
    container = template["spec"]["containers"][0]
    limits = {"cpu": str(rs.cpus), "memory": f"{rs.mem_gb:g}Gi"}
    if rs.gpus:
        limits["nvidia.com/gpu"] = str(rs.gpus)
    container.update(
        {
            "name": "reward-server",
            "command": ["python"],
            "args": ["-m", "fgrpo", "reward-server", *reward_server_args(recipe, name)],
            "ports": [{"name": "reward", "containerPort": rs.port, "protocol": "TCP"}],
            "resources": {"requests": dict(limits), "limits": limits},
            # Ready once the reward models are loaded and it answers; the trainers wait for that too.
            "readinessProbe": {"httpGet": {"path": "/health", "port": rs.port}, "periodSeconds": 10},
        }
    )
    container["env"] = [e for e in container["env"] if e["name"] != "FGRPO_REWARD_URL"]
    return template


def _metadata(recipe: Recipe, name: str, run_name: str, queue: bool = False) -> dict:
    labels = {RUN_LABEL: name, "app.kubernetes.io/name": "fgrpo", "app.kubernetes.io/managed-by": "fgrpo"}
    if queue and recipe.launch.k8s.kueue_queue:
        # Kueue's webhook creates the workload suspended and un-suspends it on admission; on
        # preemption it suspends it again (pods are deleted, not failed). Nothing else needed.
        labels[QUEUE_LABEL] = recipe.launch.k8s.kueue_queue
    return {
        "name": name,
        "namespace": recipe.launch.k8s.namespace,
        "labels": labels,
        "annotations": {RUN_ANNOTATION: run_name},
    }


def _configmap(recipe: Recipe, name: str, run_name: str, recipe_json: str) -> dict:
    meta = _metadata(recipe, f"{name}-recipe", run_name)
    meta["labels"][RUN_LABEL] = name  # the run's, as on its workload: cancel finds it by this label
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"recipe.json": recipe_json}}


def _token_secret(recipe: Recipe, name: str, run_name: str) -> dict:
    """The reward server's token Secret, without its data (what --dry-run prints): the backend adds
    `stringData: {token: <random>}` when it creates it, so no printed manifest holds the token."""
    meta = _metadata(recipe, token_secret_name(name), run_name)
    meta["labels"][RUN_LABEL] = name  # the run's, as on its workload
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta}


def _jobset(recipe: Recipe, name: str, run_name: str) -> dict:
    nodes, k = recipe.launch.nodes, recipe.launch.k8s
    # Failure design (JobSet v1alpha2 FailurePolicy; rules are evaluated in order, first match wins):
    # - The child Job has backoffLimit 0, so any failed pod fails the Job at once, and a
    #   podFailurePolicy rule FailJob on the DisruptionTarget pod condition (set on preemption,
    #   eviction, node drain or taint-based deletion) makes that failure's Job condition reason
    #   `PodFailurePolicy` instead of `BackoffLimitExceeded`.
    # - Rule "Disruption" matches onJobFailureReasons [PodFailurePolicy] with action
    #   RestartJobSetAndIgnoreMaxRestarts: the whole set is recreated and only status.restarts
    #   grows, not restartsCountTowardsMax, so disruptions never use the failure budget.
    # - Rule "Failure" (no reasons: matches any other failure) is RestartJobSet: recreate all Jobs
    #   while restartsCountTowardsMax < maxRestarts, then fail the JobSet. (Also JobSet's default
    #   for unmatched failures; stated so the policy reads in one place.)
    # - restartStrategy BlockingRecreate (JobSet >= v0.7): new Jobs start only after every pod of
    #   the previous attempt is gone, so no new rank reads a checkpoint that a terminating pod is
    #   still saving within its grace period, and no new rank dials a dying master.
    # Kueue preemption suspends the JobSet instead (pods deleted, no Job failure, no restart
    # counted); on re-admission the Jobs start again and resume from the run folder.
    job_spec = {
        "parallelism": nodes,
        "completions": nodes,
        "completionMode": "Indexed",
        "backoffLimit": 0,
        "podFailurePolicy": {"rules": [{"action": "FailJob", "onPodConditions": [dict(_DISRUPTED)]}]},
        "template": _pod_template(recipe, name, run_name, subdomain=None),  # JobSet sets subdomain
    }
    replicated = [
        {
            "name": REPLICATED_JOB,
            "replicas": 1,
            "template": {"metadata": {"labels": {RUN_LABEL: name}}, "spec": job_spec},
        }
    ]
    if recipe.reward_server.launch:
        # Beside the workers, on its own node and GPUs. Not in the success policy: the set succeeds
        # when training does; the server then sees the run's final status and exits by itself.
        server_spec = {
            **job_spec,
            "parallelism": 1,
            "completions": 1,
            "template": _reward_pod_template(recipe, name, run_name),
        }
        replicated.append(
            {
                "name": REWARD_JOB,
                "replicas": 1,
                "template": {"metadata": {"labels": {RUN_LABEL: name}}, "spec": server_spec},
            }
        )
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": _metadata(recipe, name, run_name, queue=True),
        "spec": {
            "network": {"enableDNSHostnames": True, "subdomain": name, "publishNotReadyAddresses": True},
            "replicatedJobs": replicated,
            "successPolicy": {"operator": "All", "targetReplicatedJobs": [REPLICATED_JOB]},
            "failurePolicy": {
                "maxRestarts": k.max_restarts,
                "restartStrategy": "BlockingRecreate",
                "rules": [
                    {
                        "name": "Disruption",
                        "action": "RestartJobSetAndIgnoreMaxRestarts",
                        "onJobFailureReasons": ["PodFailurePolicy"],
                    },
                    {"name": "Failure", "action": "RestartJobSet"},
                ],
            },
        },
    }


def _service(recipe: Recipe, name: str, run_name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(recipe, name, run_name),
        "spec": {"clusterIP": "None", "selector": {RUN_LABEL: name}, "publishNotReadyAddresses": True},
    }


def _indexed_job(recipe: Recipe, name: str, run_name: str) -> dict:
    nodes, k = recipe.launch.nodes, recipe.launch.k8s
    # Without JobSet there is no group restart: a failed index is retried alone while the other
    # pods keep waiting in their collectives; torch then times out (NCCL / TCPStore), those ranks
    # fail too and are retried, and the group meets again and resumes from the newest checkpoint.
    # One real failure can thus cost up to `nodes` pod failures: backoffLimit = max_restarts *
    # nodes. Evictions and preemptions (DisruptionTarget) are ignored: not counted, pod replaced.
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(recipe, name, run_name, queue=True),
        "spec": {
            "parallelism": nodes,
            "completions": nodes,
            "completionMode": "Indexed",
            "backoffLimit": k.max_restarts * nodes,
            "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [dict(_DISRUPTED)]}]},
            "template": _pod_template(recipe, name, run_name, subdomain=name),
        },
    }


def render(recipe: Recipe, run_name: str, recipe_json: str) -> list[dict]:
    """The Kubernetes objects for one run, in creation order (plain dicts, no API calls)."""
    _check(recipe, run_name, recipe_json)
    name = object_name(run_name)
    objects = [_configmap(recipe, name, run_name, recipe_json)]
    if recipe.reward_server.launch:
        objects.append(_token_secret(recipe, name, run_name))
    if recipe.launch.k8s.api == "jobset":
        objects.append(_jobset(recipe, name, run_name))
    else:
        objects += [_service(recipe, name, run_name), _indexed_job(recipe, name, run_name)]
    return objects
