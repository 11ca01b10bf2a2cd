"""Kubernetes backend: one JobSet (or Indexed Job + headless Service) per run, created over the API.

Job ids are `KIND/NAMESPACE/NAME`, KIND `jobset` or `job`. The run folder lives on the runs PVC;
the local `runs/<name>/` keeps recipe.json and jobs.jsonl (through `fgrpo.run_folder.RunFolder`) for
`fgrpo status/logs/cancel/resume`.
JobSets and Jobs go through `CustomObjectsApi` (a Job is `batch/v1 jobs`): the typed `BatchV1Api`
validates bodies with pydantic and rejects valid manifests (`nvidia.com/gpu: 8` as an integer).
The reward server's token Secret is rendered without data and gets a fresh random token only in
the body sent to the API (`_with_token`): `describe` (--dry-run) never shows one.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Iterator

from fgrpo.run_folder import RunFolder

from ..base import Backend, LaunchJob, is_active  # noqa: F401  (is_active re-exported)

RUN_LABEL = "fgrpo.dev/run"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
# rendered kind -> (job id kind, (group, version, plural), label that names the workload on its pods)
WORKLOADS = {
    "JobSet": ("jobset", ("jobset.x-k8s.io", "v1alpha2", "jobsets"), "jobset.sigs.k8s.io/jobset-name"),
    "Job": ("job", ("batch", "v1", "jobs"), "job-name"),
}
BY_ID_KIND = {v[0]: (k, *v[1:]) for k, v in WORKLOADS.items()}
CORE = {"ConfigMap": "config_map", "Secret": "secret", "Service": "service"}
CREATE_ORDER = {"ConfigMap": 0, "Secret": 0, "Service": 1}  # then the workload, whose pods need them
FINISHED = {"COMPLETED", "FAILED", "NOT_FOUND"}


class KubernetesError(RuntimeError, ValueError):
    """A clear, user-facing failure (also a ValueError, so `fgrpo` prints it without a traceback)."""


def parse_job_id(job_id: str) -> tuple[str, str, str]:
    kind, ns, name = job_id.split("/", 2)
    if kind not in BY_ID_KIND:
        raise KubernetesError(f"{job_id!r} is not a Kubernetes job id (jobset/NAMESPACE/NAME or job/NAMESPACE/NAME)")
    return kind, ns, name


def workload_state(obj: dict) -> str:
    """RUNNING, PENDING, SUSPENDED, COMPLETED, FAILED or RESTARTING(n) from a JobSet's or Job's status."""
    spec, st = obj.get("spec") or {}, obj.get("status") or {}
    true = {c.get("type") for c in st.get("conditions") or [] if c.get("status") == "True"}
    if obj.get("kind") == "JobSet":
        if st.get("terminalState") == "Completed" or "Completed" in true:
            return "COMPLETED"
        if st.get("terminalState") == "Failed" or "Failed" in true:
            return "FAILED"
        restarts = int(st.get("restarts") or 0)
        expected = sum(int(rj.get("replicas", 1)) for rj in spec.get("replicatedJobs") or [])
        up = sum(int(r.get("ready") or 0) + int(r.get("succeeded") or 0) for r in st.get("replicatedJobsStatus") or [])
    else:
        if true & {"Complete", "SuccessCriteriaMet"}:
            return "COMPLETED"
        if true & {"Failed", "FailureTarget"}:
            return "FAILED"
        restarts = int(st.get("failed") or 0)  # pods replaced after a failure (within backoffLimit)
        expected = int(spec.get("parallelism") or spec.get("completions") or 1)
        up = int(st.get("ready") or 0) + int(st.get("succeeded") or 0)
    if "Suspended" in true or spec.get("suspend"):
        return "SUSPENDED"  # e.g. queued by Kueue
    if expected and up >= expected:
        return "RUNNING"
    return f"RESTARTING({restarts})" if restarts else "PENDING"


def _with_token(obj: dict) -> dict:
    """A rendered Secret without data (the reward server's token) with a fresh random token; any
    other object as it is."""
    if obj["kind"] != "Secret" or obj.get("data") or obj.get("stringData"):
        return obj
    from .manifests import TOKEN_KEY

    return {**obj, "stringData": {TOKEN_KEY: secrets.token_urlsafe(32)}}


def recipe_json(recipe) -> str:
    from fgrpo.recipe.io import to_dict

    return json.dumps(to_dict(recipe), indent=2, sort_keys=True) + "\n"  # as save_recipe_json writes it


def _body(resp) -> dict:
    """JSON of a raw (`_preload_content=False`) response; the connection goes back to the pool."""
    try:
        return json.loads(resp.data or b"{}")
    finally:
        resp.release_conn()


def _message(e) -> str:
    try:
        return json.loads(e.body).get("message") or str(e.reason)
    except (TypeError, ValueError, AttributeError):
        return str(e.body or e.reason)


def _lines(resp) -> Iterator[str]:
    buf = b""
    try:
        for chunk in resp.stream(64 * 1024, decode_content=True):
            *done, buf = (buf + chunk).split(b"\n")
            for line in done:
                yield line.decode("utf-8", "replace") + "\n"
        if buf:
            yield buf.decode("utf-8", "replace")
    finally:
        resp.close()
        resp.release_conn()


class KubernetesBackend(Backend):
    name = "k8s"

    def __init__(self, tries: int = 4, backoff_s: float = 0.5, delete_wait_s: float = 120.0):
        self.tries, self.backoff_s, self.delete_wait_s = tries, backoff_s, delete_wait_s
        self.context: str | None = None
        self._api = None

    # -- client -----------------------------------------------------------------------------
    def _client(self):
        """The API client, built on first use (describe/--dry-run never needs a cluster)."""
        if self._api is None:
            from kubernetes import client, config

            cfg = client.Configuration()
            source = "the pod's service account"
            try:
                if os.environ.get("KUBERNETES_SERVICE_HOST"):
                    self.context = "in-cluster service account"
                    config.load_incluster_config(client_configuration=cfg)
                else:
                    # Read KUBECONFIG now: the client's default was fixed when it was imported.
                    source = os.environ.get("KUBECONFIG") or "~/.kube/config"
                    self.context = config.list_kube_config_contexts(source)[1]["name"]
                    config.load_kube_config(config_file=source, client_configuration=cfg)
            except config.ConfigException as e:
                raise KubernetesError(
                    f"cannot load Kubernetes credentials (context {self.context or '?'}, from {source}): {e}; "
                    "refresh them (`kubectl get pods` / log in to the cluster again) or set KUBECONFIG"
                ) from e
            self._api = client.ApiClient(cfg)
        return self._api

    def server_version(self, timeout_s: float = 15.0) -> str:
        """The API server's version, asked once with this backend's credentials (`fgrpo doctor`:
        can this machine reach the cluster?). KubernetesError when the credentials do not load,
        the server does not answer, or it refuses them."""
        from kubernetes.client import VersionApi

        try:
            info = VersionApi(self._client()).get_code(_request_timeout=timeout_s)
        except KubernetesError:
            raise
        except Exception as e:  # noqa: BLE001 - unreachable, TLS, 401/403: all mean no access from here
            raise KubernetesError(
                f"the API server of context {self.context or '?'} did not answer: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from e
        return info.git_version

    def _core(self):
        from kubernetes.client import CoreV1Api

        return CoreV1Api(self._client())

    def _custom(self):
        from kubernetes.client import CustomObjectsApi

        return CustomObjectsApi(self._client())

    def _call(self, doing: str, fn, *args, retry: bool = True, missing_ok: bool = False, **kw):
        """fn(*args, **kw) with clear errors: 401/403 -> refresh credentials; 429, 5xx and connection
        errors retried with exponential backoff when `retry` (reads and deletes); a 404 gives None
        when `missing_ok`; any other API error is re-raised for the caller."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        tries = self.tries if retry else 1
        for attempt in range(tries):
            try:
                return fn(*args, **kw)
            except ApiException as e:
                if e.status == 404 and missing_ok:
                    return None
                if e.status in (401, 403):
                    raise KubernetesError(
                        f"{doing}: the Kubernetes API refused the credentials of context {self.context!r} "
                        f"({e.status} {e.reason}: {_message(e)}); they have expired or lack permission: refresh "
                        "them (`kubectl get pods` re-runs the login plugin, or log in again) and retry"
                    ) from e
                if e.status != 429 and not (e.status or 0) >= 500:
                    if not e.status:  # the client's own failure (TLS), not an HTTP answer
                        raise KubernetesError(f"{doing}: {e.reason}") from e
                    raise
                last = f"{e.status} {e.reason}: {_message(e)}"
            except (urllib3.exceptions.HTTPError, OSError) as e:
                last = f"{type(e).__name__}: {e}"
            if attempt + 1 < tries:
                time.sleep(self.backoff_s * 2**attempt)
        raise KubernetesError(
            f"{doing}: the Kubernetes API at {self._client().configuration.host} failed "
            f"{tries} time(s) (last: {last}); it may be overloaded or unreachable, try again later"
        )

    # -- objects ----------------------------------------------------------------------------
    def _create(self, obj: dict) -> None:
        ns, kind = obj["metadata"]["namespace"], obj["kind"]
        if kind in CORE:
            fn, args = getattr(self._core(), f"create_namespaced_{CORE[kind]}"), (ns, _with_token(obj))
        else:
            (g, v, plural), fn = WORKLOADS[kind][1], self._custom().create_namespaced_custom_object
            args = (g, v, ns, plural, obj)
        _body(
            self._call(
                f"creating {kind} {ns}/{obj['metadata']['name']}", fn, *args, retry=False, _preload_content=False
            )
        )

    def _delete(self, kind: str, ns: str, name: str) -> None:
        """Delete one object, its dependents first (Foreground: no pod outlives its Job); gone is fine."""
        if kind in CORE:
            fn, args = getattr(self._core(), f"delete_namespaced_{CORE[kind]}"), (name, ns)
        else:
            (g, v, plural), fn = WORKLOADS[kind][1], self._custom().delete_namespaced_custom_object
            args = (g, v, ns, plural, name)
        resp = self._call(
            f"deleting {kind} {ns}/{name}",
            fn,
            *args,
            missing_ok=True,
            propagation_policy="Foreground",
            _preload_content=False,
        )
        if resp is not None:
            _body(resp)

    def _get(self, job_id: str) -> dict | None:
        kind, ns, name = parse_job_id(job_id)
        group, version, plural = BY_ID_KIND[kind][1]
        return self._call(
            f"reading {job_id}",
            self._custom().get_namespaced_custom_object,
            group,
            version,
            ns,
            plural,
            name,
            missing_ok=True,
        )

    def _render(self, job: LaunchJob) -> list[dict]:
        from .manifests import render

        return render(job.recipe, job.run_dir.name, recipe_json(job.recipe))

    def _submit(self, job: LaunchJob, objs: list[dict]) -> str:
        work = next(o for o in objs if o["kind"] in WORKLOADS)
        ns, name = work["metadata"]["namespace"], work["metadata"]["name"]
        job_id = f"{WORKLOADS[work['kind']][0]}/{ns}/{name}"
        if job.kind in ("resume", "sweep"):  # the previous job of this run may still exist, finished
            self._clear_finished(job_id, objs)
        created: list[dict] = []
        try:
            for obj in sorted(objs, key=lambda o: CREATE_ORDER.get(o["kind"], 2)):
                self._create(obj)
                created.append(obj)
        except Exception as e:
            raise self._create_error(e, obj, job, self._rollback(created)) from e
        RunFolder(job.run_dir).record_job(self.name, job_id, job.kind)
        return job_id

    def _rollback(self, created: list[dict]) -> str:
        notes = []
        for obj in reversed(created):
            what = f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"
            try:
                self._delete(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
                notes.append(f"deleted {what}")
            except Exception as e:  # report it, keep the original error
                notes.append(f"could NOT delete {what} ({e}); delete it by hand")
        return "; ".join(notes) or "nothing had been created"

    def _create_error(self, e: Exception, obj: dict, job: LaunchJob, rollback: str) -> Exception:
        from kubernetes.client.exceptions import ApiException

        what = f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"
        if not isinstance(e, ApiException):
            return (
                KubernetesError(f"{e} (rolled back: {rollback})")
                if isinstance(e, KubernetesError)
                else KubernetesError(f"creating {what} failed: {type(e).__name__}: {e} (rolled back: {rollback})")
            )
        if e.status == 409:
            return KubernetesError(
                f"run {job.run_dir.name} already exists on the cluster ({what}: {_message(e)}); nothing new was "
                f"started (rolled back: {rollback}). See `fgrpo status {job.run_dir}`; continue a finished run with "
                f"`fgrpo resume {job.run_dir}`, or stop it with `fgrpo cancel {job.run_dir}`"
            )
        hint = ""
        if e.status == 404 and obj["kind"] == "JobSet":
            hint = " (is JobSet installed on the cluster? without it, use --launch.k8s.api indexed-job)"
        return KubernetesError(
            f"creating {what} was refused: {e.status} {e.reason}: {_message(e)}{hint} (rolled back: {rollback})"
        )

    def _clear_finished(self, job_id: str, objs: list[dict]) -> None:
        state = self.state(job_id)
        if state not in FINISHED:
            raise KubernetesError(f"{job_id} is still {state}; stop it first with `fgrpo cancel`")
        for obj in sorted(objs, key=lambda o: -CREATE_ORDER.get(o["kind"], 2)):
            self._delete(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        deadline = time.monotonic() + self.delete_wait_s
        while self._get(job_id) is not None:  # Foreground: the object stays until its pods are gone
            if time.monotonic() > deadline:
                raise KubernetesError(
                    f"{job_id} of the previous attempt was not deleted within "
                    f"{self.delete_wait_s:.0f} s; try again shortly"
                )
            time.sleep(1.0)

    # -- Backend ----------------------------------------------------------------------------
    def describe(self, job: LaunchJob) -> str:
        import yaml

        return yaml.safe_dump_all(self._render(job), sort_keys=False)

    def launch(self, job: LaunchJob) -> int:
        objs = self._render(job)
        job_id = self._submit(job, objs)
        kind, ns, name = parse_job_id(job_id)
        k8s, run = job.recipe.launch.k8s, job.run_dir
        print(
            f"created {BY_ID_KIND[kind][0]} {ns}/{name} (job {job_id})\n"
            f"  run folder: {run} (on the cluster: {run.name}/ on PVC {k8s.runs_pvc})\n"
            f"  follow: fgrpo status {run} | fgrpo logs {run} -f | fgrpo cancel {run}\n"
            f"  kubectl: kubectl -n {ns} get {kind} {name}; kubectl -n {ns} get pods -l "
            f"{BY_ID_KIND[kind][2]}={name}"
        )
        return 0

    def submit_array(self, runs: list[LaunchJob]) -> list[str]:
        """One JobSet/Job per point (Kubernetes has no arrays). With a Kueue queue all are created and
        Kueue caps how many run; without, at most `launch.array_parallelism` are created now."""
        if not runs:
            return []
        la = runs[0].recipe.launch
        cap = len(runs) if la.k8s.kueue_queue else max(1, la.array_parallelism)
        ids = [self._submit(r, self._render(r)) for r in runs[:cap]]
        if len(runs) > cap:
            print(
                f"{len(runs) - cap} point(s) wait (launch.array_parallelism={cap} and no launch.k8s.kueue_queue): "
                "run the same `fgrpo sweep` again when points finish to submit them: "
                + ", ".join(r.run_dir.name for r in runs[cap:])
            )
        return ids

    def state(self, job_id: str) -> str:
        obj = self._get(job_id)
        return "NOT_FOUND" if obj is None else workload_state(obj)

    def cancel(self, job_id: str) -> None:
        kind, ns, name = parse_job_id(job_id)
        obj = self._get(job_id)
        run = ((obj or {}).get("metadata", {}).get("labels") or {}).get(RUN_LABEL, name)
        self._delete(BY_ID_KIND[kind][0], ns, name)
        core = self._core()
        for kind_ in ("Service", "ConfigMap"):
            lister = getattr(core, f"list_namespaced_{CORE[kind_]}")
            items = (
                _body(
                    self._call(
                        f"listing {kind_}s of {job_id}",
                        lister,
                        ns,
                        label_selector=f"{RUN_LABEL}={run}",
                        _preload_content=False,
                    )
                ).get("items")
                or []
            )
            for item in items:
                self._delete(kind_, ns, item["metadata"]["name"])
        # The token Secret by name, never by listing (a list returns every Secret's data).
        from .manifests import REWARD_JOB, token_secret_name

        jobs = ((obj or {}).get("spec") or {}).get("replicatedJobs") or []
        if obj is None or any(rj.get("name") == REWARD_JOB for rj in jobs):
            self._delete("Secret", ns, token_secret_name(run))

    def reward_server_args(self, job: LaunchJob) -> list[str]:
        """The reward pod's arguments (a replicated job of the JobSet; see manifests.reward_server_args)."""
        from .manifests import object_name, reward_server_args

        return reward_server_args(job.recipe, object_name(job.run_dir.name))

    def stream_logs(self, run_dir: Path, job_id: str, rank: int, follow: bool) -> Iterator[str]:
        """Console lines of global rank `rank`: the pod of its node (pod index = rank // procs_per_node,
        from the run folder's recipe) shows its torchrun's output."""
        pod = rank // RunFolder(run_dir).read_recipe().procs_per_node
        return self._pod_log(job_id, pod, follow)

    def _pod_log(self, job_id: str, index: int, follow: bool) -> Iterator[str]:
        """Console lines (with their newline) of the pod with completion index `index` (its node rank);
        with `follow`, new lines until the container ends. Errors are raised here, not when iterating."""
        from kubernetes.client.exceptions import ApiException

        kind, ns, name = parse_job_id(job_id)
        core = self._core()
        pods = _body(
            self._call(
                f"listing the pods of {job_id}",
                core.list_namespaced_pod,
                ns,
                label_selector=f"{BY_ID_KIND[kind][2]}={name}",
                _preload_content=False,
            )
        )
        mine = [
            p
            for p in pods.get("items") or []
            if str(index)
            in (
                (p["metadata"].get("labels") or {}).get(INDEX_KEY),
                (p["metadata"].get("annotations") or {}).get(INDEX_KEY),
            )
        ]
        if not mine:
            raise KubernetesError(f"no pod for node rank {index} of {job_id} (job state: {self.state(job_id)})")
        pod = max(mine, key=lambda p: p["metadata"].get("creationTimestamp") or "")  # newest attempt
        pod_name = pod["metadata"]["name"]
        try:
            resp = self._call(
                f"reading the log of pod {ns}/{pod_name}",
                core.read_namespaced_pod_log,
                pod_name,
                ns,
                container=pod["spec"]["containers"][0]["name"],
                follow=follow,
                _preload_content=False,
                _request_timeout=None if follow else (10, 300),
            )
        except ApiException as e:
            phase = (pod.get("status") or {}).get("phase", "?")
            raise KubernetesError(
                f"pod {ns}/{pod_name} (node rank {index}, {phase}) has no log yet: {e.status} {_message(e)}"
            ) from e
        return _lines(resp)
