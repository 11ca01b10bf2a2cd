"""The recipe's placement sections: where and how a run's processes are started (`launch`, and
its Kubernetes part `launch.k8s`). Part of the recipe (fgrpo.recipe.config re-exports them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .ranges import within


@dataclass
class KubernetesConfig:
    """Kubernetes placement (`--backend k8s`); see k8s/README.md."""

    image: str = ""
    """Container image with fgrpo installed (required for --backend k8s)."""
    namespace: str = "fgrpo"
    api: Literal["jobset", "indexed-job"] = "jobset"
    """`jobset` (jobset.x-k8s.io/v1alpha2), or an Indexed Job plus a headless Service for clusters without JobSet."""
    runs_pvc: str = "fgrpo-runs"
    """PersistentVolumeClaim holding run folders; each run uses the sub-path of its run name."""
    model_pvc: str | None = None
    """Optional PersistentVolumeClaim with model weights, mounted read-only at /models."""
    cpu: str = "8"
    """CPU request and limit per pod."""
    memory: str = "64Gi"
    """Memory request and limit per pod."""
    shm_size: str = "16Gi"
    """Size of the memory-backed /dev/shm."""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[str, ...] = ()
    """Each `key=value:Effect` or `key:Effect` (operator Exists)."""
    priority_class: str | None = None
    kueue_queue: str | None = None
    """Kueue LocalQueue name (adds the kueue.x-k8s.io/queue-name label; Kueue admits and preempts)."""
    secret_env: dict[str, str] = field(default_factory=dict)
    """Environment variables from Secrets: NAME -> secret-name/key (never inline values)."""
    service_account: str = "fgrpo"
    termination_grace_period_s: int = within("[1, inf)", 300)
    """Time between SIGTERM and SIGKILL; must cover a checkpoint save."""
    max_restarts: int = within("[0, inf)", 3)
    """Restarts of the whole group after real failures (evictions and preemptions do not count)."""
    run_as_user: int = within("[1, inf)", 1000)
    """Non-root uid the pods run as."""


@dataclass
class LaunchConfig:
    """Where and how the job runs; `--backend` picks the backend."""

    nodes: int = within("[1, inf)", 1)
    procs_per_node: int | None = within("[1, inf)", None)
    """Training processes per node (one per GPU). None: dp_replicate x dp_shard x sp x tp / nodes
    when dp_shard is set, else gpus_per_node (1 without GPUs)."""
    gpus_per_node: int = within("[0, inf)", 0)
    gpu_memory_gb: float = within("(0, inf)", 80.0)
    """Memory per GPU in GiB. `fgrpo launch --backend slurm|k8s` plans the run on its layout first
    (`fgrpo plan`) and refuses a recipe whose peak in any phase exceeds it (--no-preflight skips)."""
    cpus_per_task: int = within("[0, inf)", 0)
    """CPU cores per process (0: the cluster's default)."""
    mem_gb: float = within("[0, inf)", 0.0)
    """Memory per node in GB (0: the cluster's default)."""
    time_limit: str = "24:00:00"
    """Wall-clock limit per job, [D-]HH:MM:SS; a longer run is requeued and resumes."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    sbatch: dict[str, str] = field(default_factory=dict)
    """Any other sbatch option, e.g. --launch.sbatch constraint h100 exclusive ''."""
    setup: tuple[str, ...] = ()
    """Shell lines run before training in the job (module load, conda activate, export VAR=...)."""
    signal_delay_s: int = within("[0, inf)", 180)
    """Slurm sends USR2 this long before the time limit, for a checkpoint and requeue."""
    max_failures: int = within("[0, inf)", 3)
    """Requeue a job that failed for real (not a preemption) at most this many times."""
    collective_timeout_s: float = within("[1, inf)", 600.0)
    """How long a rank waits in a collective (and, at start, for its peers to join) before it fails:
    a rank that stalls (stopped, hung, its node lost) makes the others fail after this long, with
    an error naming this field, instead of hanging. It must cover the longest time one rank works
    while its peers wait (a checkpoint written to a slow filesystem; building the tiny or miniature
    model on first use). `fgrpo status` shows a running run as stalled once no step has finished
    for twice this (or twice its longest gap between steps, if longer)."""
    array_parallelism: int = within("[1, inf)", 16)
    """Sweeps: at most this many points of one job array run at once."""
    k8s: KubernetesConfig = field(default_factory=KubernetesConfig)
