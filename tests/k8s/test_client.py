"""KubernetesBackend over real HTTP: the kubernetes client talks to an in-memory API server
(ThreadingHTTPServer on 127.0.0.1) through a generated kubeconfig with a token user (the `kube`
fixture of tests/k8s/conftest.py)."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from fgrpo.recipe.io import load_recipe_file
from fgrpo.run_folder import RunFolder
from launchers.base import LaunchJob
from launchers.k8s.backend import KubernetesBackend, KubernetesError, workload_state

REPO = Path(__file__).resolve().parents[2]
NS = "fgrpo"
RUN = "tiny-r1"
JOBSETS = f"/apis/jobset.x-k8s.io/v1alpha2/namespaces/{NS}/jobsets"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
CONFIGMAPS = f"/api/v1/namespaces/{NS}/configmaps"
SERVICES = f"/api/v1/namespaces/{NS}/services"
PODS = f"/api/v1/namespaces/{NS}/pods"


class FakeKube:
    """Objects by collection path and name; records every request; injectable failures."""

    def __init__(self):
        self.objects: dict[tuple[str, str], dict] = {}
        self.requests: list[dict] = []
        self.faults: list[list] = []  # [method, path regex, status, times left]
        self.logs: dict[str, list[bytes]] = {}  # pod name -> chunks, sent one by one (chunked encoding)
        self.log_gate = threading.Event()  # the last chunk of a log waits for this
        self.log_gate.set()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                url = urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                fake.requests.append(
                    {
                        "method": self.command,
                        "path": url.path,
                        "query": parse_qs(url.query),
                        "body": body,
                        "auth": self.headers.get("Authorization"),
                    }
                )
                status, obj = fake.respond(self.command, url.path, parse_qs(url.query), body)
                if status == "log":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i, chunk in enumerate(obj):
                        if i == len(obj) - 1:
                            fake.log_gate.wait(10)
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self._send(status, obj)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def fail(self, method: str, pattern: str, status: int, times: int = 1) -> None:
        self.faults.append([method, pattern, status, times])

    def put(self, collection: str, obj: dict) -> None:
        self.objects[(collection, obj["metadata"]["name"])] = obj

    def sent(self, method: str | None = None) -> list[tuple[str, str]]:
        return [(r["method"], r["path"]) for r in self.requests if method in (None, r["method"])]

    @staticmethod
    def status(code: int, reason: str, message: str) -> tuple[int, dict]:
        return code, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }

    def respond(self, method: str, path: str, query: dict, body: Any) -> tuple[int | Literal["log"], Any]:
        """(HTTP status, JSON body), or ("log", the log's chunks)."""
        for f in self.faults:
            if f[0] == method and re.search(f[1], path) and f[3] > 0:
                f[3] -= 1
                return self.status(f[2], "Injected", f"injected {f[2]}")
        parts = path.strip("/").split("/")
        i = parts.index("namespaces")
        coll, rest = "/" + "/".join(parts[: i + 3]), parts[i + 3 :]
        if not rest and method == "POST":
            key = (coll, body["metadata"]["name"])
            if key in self.objects:
                return self.status(409, "AlreadyExists", f'{parts[i + 2]} "{key[1]}" already exists')
            self.objects[key] = body
            return 201, body
        if not rest and method == "GET":
            want = dict(kv.split("=", 1) for kv in query.get("labelSelector", [""])[0].split(",") if kv)
            items = [
                o
                for (c, _), o in self.objects.items()
                if c == coll and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in want.items())
            ]
            return 200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items}
        key = (coll, rest[0])
        if key not in self.objects:
            return self.status(404, "NotFound", f'{parts[i + 2]} "{rest[0]}" not found')
        if rest[1:] == ["log"]:
            return "log", self.logs[rest[0]]
        if method == "DELETE":
            return 200, self.objects.pop(key)
        return 200, self.objects[key]


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "mock-ctx",
                "clusters": [{"name": "mock", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "test-token"}}],
                "contexts": [{"name": "mock-ctx", "context": {"cluster": "mock", "user": "tester", "namespace": NS}}],
            }
        )
    )
    return path


def meta(name: str, run: str = RUN) -> dict:
    return {"name": name, "namespace": NS, "labels": {"fgrpo.dev/run": run}}


def objects(api: str = "jobset", run: str = RUN) -> list[dict]:
    """Hand-made objects of the shape `launchers.k8s.manifests.render` returns."""
    pod = {
        "metadata": {"labels": {"fgrpo.dev/run": run}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "trainer", "image": "example.com/fgrpo:1", "resources": {"limits": {"nvidia.com/gpu": 8}}}
            ],
        },
    }
    job_spec = {"parallelism": 2, "completions": 2, "completionMode": "Indexed", "backoffLimit": 0, "template": pod}
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(f"{run}-recipe", run),
        "data": {"recipe.json": "{}\n"},
    }
    if api == "jobset":
        return [
            cm,
            {
                "apiVersion": "jobset.x-k8s.io/v1alpha2",
                "kind": "JobSet",
                "metadata": meta(run, run),
                "spec": {"replicatedJobs": [{"name": "workers", "replicas": 1, "template": {"spec": job_spec}}]},
            },
        ]
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(run, run),
        "spec": {"clusterIP": "None", "selector": {"fgrpo.dev/run": run}, "publishNotReadyAddresses": True},
    }
    return [cm, svc, {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta(run, run), "spec": job_spec}]


def recipe(**k8s):
    r = load_recipe_file(REPO / "recipes" / "tiny.py")
    k = dataclasses.replace(r.launch.k8s, image="example.com/fgrpo:1", namespace=NS, **k8s)
    return dataclasses.replace(r, launch=dataclasses.replace(r.launch, k8s=k))


def make_job(tmp_path: Path, run: str = RUN, kind: str = "launch", **k8s) -> LaunchJob:
    run_dir = tmp_path / "runs" / run
    run_dir.mkdir(parents=True, exist_ok=True)
    return LaunchJob(run_dir, recipe(**k8s), kind=kind)


def backend(api: str = "jobset") -> KubernetesBackend:
    b = KubernetesBackend(tries=4, backoff_s=0.01, delete_wait_s=2.0)
    b._render = lambda job: objects(api, job.run_dir.name)
    return b


@pytest.mark.parametrize(
    "api,paths",
    [
        ("jobset", [CONFIGMAPS, JOBSETS]),
        ("indexed-job", [CONFIGMAPS, SERVICES, JOBS]),
    ],
)
def test_launch_creates_objects_in_order(kube, tmp_path, capsys, api, paths):
    job = make_job(tmp_path)
    assert backend(api).launch(job) == 0
    posts = [r for r in kube.requests if r["method"] == "POST"]
    assert [r["path"] for r in posts] == paths
    assert [r["body"] for r in posts] == objects(api)  # unchanged: e.g. the integer GPU limit
    assert {r["auth"] for r in kube.requests} == {"Bearer test-token"}
    kind = "jobset" if api == "jobset" else "job"
    assert [(j["backend"], j["job_id"], j["kind"]) for j in RunFolder(job.run_dir).jobs()] == [
        ("k8s", f"{kind}/{NS}/{RUN}", "launch")
    ]
    out = capsys.readouterr().out
    assert f"{NS}/{RUN}" in out and f"fgrpo logs {job.run_dir} -f" in out and f"fgrpo cancel {job.run_dir}" in out


@pytest.mark.parametrize("api", ["jobset", "indexed-job"])
def test_launch_real_manifests(kube, tmp_path, api):
    manifests = pytest.importorskip("launchers.k8s.manifests")
    job = make_job(tmp_path, api=api)
    b = KubernetesBackend(backoff_s=0.01)
    job_id = b._submit(job, b._render(job))
    want = manifests.render(
        job.recipe, RUN, json.dumps(dataclasses.asdict(job.recipe), indent=2, sort_keys=True) + "\n"
    )
    assert [r["body"] for r in kube.requests if r["method"] == "POST"] == want
    assert job_id.split("/")[:2] == ["jobset" if api == "jobset" else "job", NS]
    assert yaml.safe_load_all(b.describe(job)) and list(yaml.safe_load_all(b.describe(job))) == want


def test_describe_needs_no_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    b = backend()
    assert list(yaml.safe_load_all(b.describe(make_job(tmp_path)))) == objects()
    assert b._api is None  # no client was built
    with pytest.raises(KubernetesError, match="cannot load Kubernetes credentials"):
        b.state(f"jobset/{NS}/{RUN}")


JOBSET_CASES = [
    ({}, {}, "PENDING"),
    ({}, {"replicatedJobsStatus": [{"name": "workers", "ready": 1, "active": 1}]}, "RUNNING"),
    ({}, {"terminalState": "Completed", "conditions": [{"type": "Completed", "status": "True"}]}, "COMPLETED"),
    ({}, {"conditions": [{"type": "Failed", "status": "True"}]}, "FAILED"),
    ({"suspend": True}, {"conditions": [{"type": "Suspended", "status": "True"}]}, "SUSPENDED"),
    ({}, {"restarts": 2, "replicatedJobsStatus": [{"name": "workers", "ready": 0, "active": 1}]}, "RESTARTING(2)"),
    ({}, {"restarts": 2, "replicatedJobsStatus": [{"name": "workers", "ready": 1, "active": 1}]}, "RUNNING"),
]
JOB_CASES = [
    ({}, {"active": 2}, "PENDING"),
    ({}, {"active": 2, "ready": 2}, "RUNNING"),
    ({}, {"succeeded": 2, "conditions": [{"type": "Complete", "status": "True"}]}, "COMPLETED"),
    ({}, {"failed": 4, "conditions": [{"type": "Failed", "status": "True"}]}, "FAILED"),
    ({"suspend": True}, {"conditions": [{"type": "Suspended", "status": "True"}]}, "SUSPENDED"),
    ({}, {"active": 2, "ready": 1, "failed": 1}, "RESTARTING(1)"),
]


@pytest.mark.parametrize(
    "api,spec,status,want", [("jobset", *c) for c in JOBSET_CASES] + [("indexed-job", *c) for c in JOB_CASES]
)
def test_state_over_http(kube, api, spec, status, want):
    obj = objects(api)[-1]
    obj["spec"].update(spec)
    obj["status"] = status
    kube.put(JOBSETS if api == "jobset" else JOBS, obj)
    kind = "jobset" if api == "jobset" else "job"
    assert backend().state(f"{kind}/{NS}/{RUN}") == want
    assert backend().state(f"{kind}/{NS}/other") == "NOT_FOUND"
    assert workload_state(obj) == want


def pod(name: str, index: int, created: str, label: str = "jobset.sigs.k8s.io/jobset-name") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "creationTimestamp": created,
            "labels": {label: RUN, "batch.kubernetes.io/job-completion-index": str(index)},
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "spec": {"containers": [{"name": "trainer", "image": "x"}]},
        "status": {"phase": "Running"},
    }


def run_with_recipe(tmp_path: Path, procs_per_node: int) -> Path:
    """A local run folder as `fgrpo launch` leaves it: the recipe says how many ranks share a pod."""
    job = make_job(tmp_path)
    r = job.recipe
    RunFolder(job.run_dir).write_recipe(
        dataclasses.replace(r, launch=dataclasses.replace(r.launch, nodes=2, procs_per_node=procs_per_node))
    )
    return job.run_dir


def test_stream_logs_follows_chunked_output(kube, tmp_path):
    kube.put(PODS, pod("p0", 0, "2026-01-01T00:00:00Z"))
    kube.put(PODS, pod("p1-old", 1, "2026-01-01T00:00:00Z"))
    kube.put(PODS, pod("p1-new", 1, "2026-01-02T00:00:00Z"))
    kube.logs["p1-new"] = [b"step 1 loss", b" 0.5\nstep 2", b" loss 0.4\n", b"done"]
    kube.log_gate.clear()  # the last chunk waits: lines must arrive while the stream is open
    # Global rank 5 with 4 processes per pod: node rank 1, the pod with completion index 1.
    lines = backend().stream_logs(run_with_recipe(tmp_path, 4), f"jobset/{NS}/{RUN}", rank=5, follow=True)
    assert next(lines) == "step 1 loss 0.5\n"
    assert next(lines) == "step 2 loss 0.4\n"
    kube.log_gate.set()
    assert list(lines) == ["done"]
    listing, log = [r for r in kube.requests if r["method"] == "GET"]
    assert listing["path"] == PODS and listing["query"]["labelSelector"] == [f"jobset.sigs.k8s.io/jobset-name={RUN}"]
    assert log["path"] == f"{PODS}/p1-new/log" and log["query"] == {"container": ["trainer"], "follow": ["true"]}


def test_stream_logs_of_indexed_job_and_missing_rank(kube, tmp_path):
    kube.put(PODS, pod("j0", 0, "2026-01-01T00:00:00Z", label="job-name"))
    kube.logs["j0"] = [b"hello\n"]
    run_dir = run_with_recipe(tmp_path, 1)
    assert list(backend().stream_logs(run_dir, f"job/{NS}/{RUN}", 0, follow=False)) == ["hello\n"]
    with pytest.raises(KubernetesError, match="no pod for node rank 3"):
        backend().stream_logs(run_dir, f"job/{NS}/{RUN}", 3, follow=False)


@pytest.mark.parametrize("api", ["jobset", "indexed-job"])
def test_cancel_deletes_everything_foreground(kube, api):
    coll = {"ConfigMap": CONFIGMAPS, "Service": SERVICES, "JobSet": JOBSETS, "Job": JOBS}
    for obj in objects(api) + objects(api, run="other-run"):
        kube.put(coll[obj["kind"]], obj)
    backend().cancel(f"{'jobset' if api == 'jobset' else 'job'}/{NS}/{RUN}")
    deletes = [r for r in kube.requests if r["method"] == "DELETE"]
    want = [f"{coll[o['kind']]}/{o['metadata']['name']}" for o in reversed(objects(api))]
    assert [r["path"] for r in deletes] == want
    assert all(r["query"].get("propagationPolicy") == ["Foreground"] for r in deletes)
    assert {name for _, name in kube.objects} == {"other-run", "other-run-recipe"}  # others untouched


def test_conflict_names_the_run_and_rolls_back(kube, tmp_path):
    existing = objects()[-1]
    kube.put(JOBSETS, existing)
    job = make_job(tmp_path)
    with pytest.raises(KubernetesError) as e:
        backend().launch(job)
    msg = str(e.value)
    assert f"run {RUN} already exists" in msg and "fgrpo status" in msg and "fgrpo resume" in msg
    assert f"deleted ConfigMap {NS}/{RUN}-recipe" in msg
    assert kube.sent("DELETE") == [("DELETE", f"{CONFIGMAPS}/{RUN}-recipe")]  # only what this call created
    assert list(kube.objects) == [(JOBSETS, RUN)] and kube.objects[(JOBSETS, RUN)] is existing
    assert RunFolder(job.run_dir).jobs() == []


def test_conflict_on_first_object_deletes_nothing(kube, tmp_path):
    kube.put(CONFIGMAPS, objects()[0])
    with pytest.raises(KubernetesError, match="already exists.*nothing had been created"):
        backend().launch(make_job(tmp_path))
    assert kube.sent("DELETE") == [] and kube.sent("POST") == [("POST", CONFIGMAPS)]


def test_resume_replaces_a_finished_run_but_not_an_active_one(kube, tmp_path):
    old = objects()
    old[-1]["status"] = {"terminalState": "Completed", "conditions": [{"type": "Completed", "status": "True"}]}
    kube.put(CONFIGMAPS, old[0])
    kube.put(JOBSETS, old[-1])
    job = make_job(tmp_path, kind="resume")
    assert backend().launch(job) == 0
    assert kube.sent("DELETE") == [("DELETE", f"{JOBSETS}/{RUN}"), ("DELETE", f"{CONFIGMAPS}/{RUN}-recipe")]
    assert kube.sent("POST") == [("POST", CONFIGMAPS), ("POST", JOBSETS)]
    assert "status" not in kube.objects[(JOBSETS, RUN)]
    kube.requests.clear()
    with pytest.raises(KubernetesError, match="still PENDING"):
        backend().launch(job)
    assert kube.sent("POST") == kube.sent("DELETE") == []


def test_read_5xx_is_retried_then_succeeds(kube):
    kube.put(JOBSETS, objects()[-1])
    kube.fail("GET", "/jobsets/", 503, times=2)
    assert backend().state(f"jobset/{NS}/{RUN}") == "PENDING"
    assert len(kube.sent("GET")) == 3


def test_persistent_5xx_gives_a_clear_error(kube):
    kube.fail("GET", "/jobsets/", 500, times=100)
    with pytest.raises(KubernetesError, match=r"failed 4 time\(s\) \(last: 500"):
        backend().state(f"jobset/{NS}/{RUN}")
    assert len(kube.sent("GET")) == 4


def test_unreachable_api_gives_a_clear_error(kube, tmp_path, monkeypatch):
    kube.stop()
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "dead", kube.url)))
    with pytest.raises(KubernetesError, match="unreachable"):
        backend().state(f"jobset/{NS}/{RUN}")


@pytest.mark.parametrize("code", [401, 403])
def test_rejected_credentials(kube, tmp_path, code):
    kube.fail("GET", "/jobsets/", code)
    with pytest.raises(KubernetesError, match=r"credentials of context 'mock-ctx'.*kubectl get pods"):
        backend().state(f"jobset/{NS}/{RUN}")
    assert len(kube.sent("GET")) == 1  # not retried
    kube.fail("POST", "/configmaps", code)
    with pytest.raises(KubernetesError, match=r"refresh them.*nothing had been created"):
        backend().launch(make_job(tmp_path))
    assert kube.objects == {}


@pytest.mark.parametrize("queue,created", [(None, 2), ("team-a", 3)])
def test_submit_array_caps_without_kueue(kube, tmp_path, capsys, queue, created):
    runs = []
    for i in range(3):
        j = make_job(tmp_path, run=f"tiny-p{i}", kind="sweep", kueue_queue=queue)
        j.recipe.launch.array_parallelism = 2
        runs.append(j)
    ids = backend().submit_array(runs)
    assert ids == [f"jobset/{NS}/tiny-p{i}" for i in range(created)]
    assert len(kube.sent("POST")) == 2 * created
    out = capsys.readouterr().out
    assert ("1 point(s) wait" in out and "tiny-p2" in out) == (queue is None)


def test_in_cluster_config(tmp_path, monkeypatch):
    from kubernetes.config import incluster_config

    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("not a real certificate")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    b = KubernetesBackend()
    cfg = b._client().configuration
    assert cfg.host == "https://10.0.0.1:443" and b.context == "in-cluster service account"
    assert "sa-token" in str(cfg.api_key)
