"""`fgrpo doctor`'s machine checks: each a small function returning one `Check`, so each is testable.

Probing what this machine has (`detect_gpus`, `cpu_bf16_problem`) is kept apart from judging it:
the checks take the probed values, so tests hand them a fake GPU list or fake free memory. The
model and reward file checks are in doctor_files.py; the 1-step tiny run in doctor_smoke.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail", "skip"]
GIB = 2**30
HEADROOM = 2 * GIB  # what a plan leaves out (CUDA context, NCCL buffers, allocator rounding): docs/design.md
SLURM_TOOLS = ("sbatch", "squeue", "scancel", "sinfo")  # submit (submitit runs sbatch), state, cancel, the probe
# Recipe problems about files: the model folder and reward rows report them, with more detail.
FILE_FIELDS = re.compile(r"^(model\.path|rewards\.\d+\.args\.\w+):")


@dataclass(frozen=True)
class Check:
    """One row of the doctor's table. `fail` is blocking (exit status 1); `warn` is shown and not
    blocking; `skip` says why a check did not apply."""

    name: str
    status: Status
    detail: str

    @property
    def blocking(self) -> bool:
        return self.status == "fail"


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total: int
    """Bytes."""
    free: int
    """Bytes free now (other processes' memory excluded)."""
    capability: tuple[int, int]

    @property
    def bf16(self) -> bool:
        return self.capability >= (8, 0)  # Ampere and newer compute in bf16 natively


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def plural(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "es" if what.endswith("s") else "s")


def sm(gpu: GpuInfo) -> str:
    return f"sm_{gpu.capability[0]}{gpu.capability[1]}"


def detect_gpus() -> list[GpuInfo]:
    """This machine's visible GPUs (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        props = torch.cuda.get_device_properties(i)
        out.append(GpuInfo(i, props.name, total, free, (props.major, props.minor)))
    return out


def cpu_bf16_problem() -> str | None:
    """Why a bf16 matmul fails on this CPU, or None (the CPU runs compute in the recipe dtype too)."""
    import torch

    try:
        a = torch.ones(8, 8, dtype=torch.bfloat16)
        (a @ a).float().sum().item()
    except Exception as e:  # noqa: BLE001 - any failure means no bf16 here
        return f"{type(e).__name__}: {e}"
    return None


def torch_check() -> Check:
    """torch, its CUDA/cuDNN/NCCL versions, and the process-group backends the trainer needs."""
    import torch
    import torch.distributed as dist

    parts = [f"torch {torch.__version__}"]
    if torch.version.cuda:
        parts.append(f"CUDA {torch.version.cuda}")
        if torch.backends.cudnn.is_available():
            parts.append(f"cuDNN {torch.backends.cudnn.version()}")
    elif getattr(torch.version, "hip", None):
        parts.append(f"ROCm {torch.version.hip}")
    else:
        parts.append("CPU build (no CUDA)")
    if not dist.is_available():
        return Check(
            "torch",
            "fail",
            "; ".join(parts) + "; torch.distributed is missing from this build: every fgrpo run uses a process group",
        )
    if dist.is_nccl_available():
        import torch.cuda.nccl  # loaded by torch already; torch.cuda's own module does not import it

        version = torch.cuda.nccl.version()  # a tuple (an int in older releases)
        parts.append("NCCL " + (".".join(map(str, version)) if isinstance(version, tuple) else str(version)))
    else:
        parts.append("no NCCL")
    if not dist.is_gloo_available():  # the control collectives (stop flags, metrics) run on gloo, on GPUs too
        return Check("torch", "fail", "; ".join(parts) + "; no gloo backend: fgrpo's control collectives need it")
    return Check("torch", "ok", "; ".join(parts) + "; gloo")


def gpus_check(gpus: list[GpuInfo], backend: str, world: int | None, torch_has_cuda: bool) -> Check:
    """The visible GPUs; on the local backend, one per process of the recipe."""
    if not gpus:
        where = (
            "training here runs on the CPU (gloo)"
            if backend == "local"
            else f"the {backend} jobs' GPUs are on the cluster's nodes (run `fgrpo doctor` in a job to check them)"
        )
        why = (
            "torch is a CPU build (README, 'GPU clusters': install the CUDA build)"
            if not torch_has_cuda
            else "torch has CUDA but sees no GPU (driver? CUDA_VISIBLE_DEVICES?)"
        )
        return Check("GPUs", "warn", f"no GPU: {where}; {why}")
    listing = ", ".join(f"{g.index}: {g.name} {size(g.total)} ({size(g.free)} free, {sm(g)})" for g in gpus)
    if backend == "local" and world and world > len(gpus):
        return Check(
            "GPUs",
            "fail",
            f"the recipe runs {world} processes, one per GPU, on "
            f"{plural(len(gpus), 'GPU')} here: "
            f"set --launch.procs-per-node {len(gpus)} (and the parallelism to match) or use a cluster "
            f"backend; {listing}",
        )
    return Check("GPUs", "ok", f"{plural(len(gpus), 'GPU')}: {listing}")


def bf16_check(gpus: list[GpuInfo], dtype: str | None, cpu_problem: str | None) -> Check:
    """bf16 compute where the run computes; blocking only when the recipe's model.dtype is bfloat16."""
    wanted = dtype == "bfloat16"
    status = "fail" if wanted else "warn"
    need = (
        "; model.dtype is bfloat16: use a GPU with compute capability >= 8.0 or --model.dtype float32" if wanted else ""
    )
    if gpus:
        lacking = [g for g in gpus if not g.bf16]
        if lacking:
            names = ", ".join(f"{g.index} ({g.name}, {sm(g)})" for g in lacking)
            return Check("bf16", status, f"GPU {names} lack bf16 (compute capability < 8.0){need}")
        return Check("bf16", "ok", "every GPU computes in bf16 (compute capability >= 8.0)")
    if cpu_problem:
        return Check("bf16", status, f"no GPU, and a bf16 matmul fails on this CPU: {cpu_problem}{need}")
    return Check("bf16", "ok", "no GPU; bf16 matmuls run on this CPU")


def recipe_check(recipe) -> Check:
    """The recipe's own validation (what `fgrpo launch` refuses), file problems left to their rows."""
    from fgrpo.recipe.validate import recipe_problems

    problems = [p for p in recipe_problems(recipe) if not FILE_FIELDS.match(p)]
    if problems:
        return Check("recipe", "fail", "; ".join(problems))
    return Check(
        "recipe",
        "ok",
        f"{recipe.name}: valid, {plural(recipe.world_size, 'process')}, model.dtype {recipe.model.dtype}",
    )


def attention_check(
    field: str,
    name: str,
    backward: bool,
    device: str,
    dtype: str,
    head_dim: int,
    must_run_here: bool,
    backend: str = "local",
) -> Check:
    """Backend `name` of `field` known, trainable when `backward`, its package present and one small
    attention call through it (and its backward) running on `device`. A failure to run is blocking
    when the run computes on this machine's devices (`must_run_here`), else a warning."""
    from fgrpo.distributed.precision import DTYPES
    from fgrpo.models.wan.attention import FORWARD_ONLY_BACKENDS, check_backend_here, training_problem

    label = "attention" if backward else "rollout attention"
    problem = training_problem(name)
    if problem and (backward or name not in FORWARD_ONLY_BACKENDS):
        return Check(label, "fail", f"{field}: {problem}")
    what = "forward and backward" if backward else "forward"
    try:
        check_backend_here(name, field, device, DTYPES[dtype], head_dim, backward)
    except ValueError as e:
        if must_run_here:
            return Check(label, "fail", str(e))
        return Check(
            label, "warn", f"{str(e).rstrip('.')}; the {backend} job checks it again on its own devices at start-up"
        )
    return Check(label, "ok", f"{field}={name}: {what} ran on {device} in {dtype}")


def attention_checks(recipe, gpus: list[GpuInfo], backend: str) -> list[Check]:
    """The training backend (with backward) and a different rollout backend (forward only)."""
    from fgrpo.models.wan import PRESETS

    m = recipe.model
    preset = PRESETS.get(m.preset)
    head_dim = preset.head_dim if preset else 64
    device = f"cuda:{gpus[0].index}" if gpus else "cpu"
    must_run_here = backend == "local" or bool(gpus)
    rows = [
        attention_check(
            "model.attention_backend", m.attention_backend, True, device, m.dtype, head_dim, must_run_here, backend
        )
    ]
    if m.rollout_attention_backend not in (None, m.attention_backend):
        rows.append(
            attention_check(
                "model.rollout_attention_backend",
                m.rollout_attention_backend,
                False,
                device,
                m.dtype,
                head_dim,
                must_run_here,
                backend,
            )
        )
    return rows


def memory_check(gpus: list[GpuInfo], processes: int, peak: int, phase: str) -> Check:
    """The plan's peak per GPU against the free memory of each GPU the run's processes use here."""
    if not gpus:
        return Check("memory", "skip", "no GPU: plan skipped")
    used = gpus[: max(1, min(processes, len(gpus)))]
    short = [g for g in used if g.free < peak]
    if short:
        where = ", ".join(f"GPU {g.index} ({size(g.free)} free)" for g in short)
        return Check(
            "memory",
            "fail",
            f"the plan's peak, {size(peak)} per GPU in {phase}, exceeds {where}: "
            "`fgrpo plan RECIPE.py` shows its parts and what to change",
        )
    least = min(g.free for g in used)
    if least - peak < HEADROOM:
        return Check(
            "memory",
            "warn",
            f"peak {size(peak)} per GPU in {phase} leaves {size(least - peak)} of "
            f"{size(least)} free: the plan leaves out the CUDA context, NCCL buffers and allocator "
            "rounding; leave headroom",
        )
    return Check(
        "memory",
        "ok",
        f"peak {size(peak)} per GPU in {phase} (`fgrpo plan`); at least {size(least)} "
        f"free on GPU {', '.join(str(g.index) for g in used)}",
    )


def plan_memory_check(recipe, gpus: list[GpuInfo]) -> Check:
    """`fgrpo plan`'s planner at the recipe's world size for the detected GPU, then memory_check."""
    if not gpus:
        return memory_check(gpus, 0, 0, "")
    from fgrpo.planner import Gpu, plan

    p = plan(recipe, recipe.world_size, Gpu(memory=gpus[0].total))
    return memory_check(gpus, recipe.world_size, p.peak.peak, p.peak.name)


def slurm_check(partition: str | None = None, timeout_s: float = 30.0) -> Check:
    """Slurm's commands on PATH, submitit importable, and `sinfo` answering (the controller reachable)."""
    missing = [t for t in SLURM_TOOLS if shutil.which(t) is None]
    if missing:
        return Check(
            "slurm",
            "fail",
            f"{', '.join(missing)} not on PATH: the slurm backend submits with sbatch "
            "(through submitit) and asks squeue, scancel and sinfo; run on a Slurm login node or load "
            "its environment module",
        )
    try:
        import submitit  # noqa: F401
    except ImportError as e:
        return Check("slurm", "fail", f"the slurm backend's client is missing ({e}): pip install submitit")
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Check("slurm", "fail", f"sinfo did not answer within {timeout_s:g} s: is slurmctld reachable from here?")
    if res.returncode != 0:
        why = (res.stderr.strip() or res.stdout.strip() or "no output").splitlines()[0]
        return Check("slurm", "fail", f"sinfo failed (exit {res.returncode}): {why}")
    partitions = res.stdout.split()
    detail = f"{', '.join(SLURM_TOOLS)} on PATH; sinfo answered: partitions {', '.join(partitions) or '(none)'}"
    if partition and partition not in {p.rstrip("*") for p in partitions}:
        return Check("slurm", "warn", f"launch.partition {partition!r} is not among sinfo's partitions; {detail}")
    return Check("slurm", "ok", detail)


def k8s_check(timeout_s: float = 15.0) -> Check:
    """The kubernetes client, a kubeconfig (or the pod's service account) and the API server answering."""
    try:
        import kubernetes  # noqa: F401
    except ImportError as e:
        return Check("kubernetes", "fail", f"the k8s backend's client is missing ({e}): pip install kubernetes")
    from launchers.k8s.backend import KubernetesBackend, KubernetesError

    kubectl = (
        "kubectl on PATH" if shutil.which("kubectl") else "kubectl not on PATH (optional: fgrpo uses the Python client)"
    )
    backend = KubernetesBackend()
    try:
        version = backend.server_version(timeout_s)
    except KubernetesError as e:
        return Check("kubernetes", "fail", f"{e}; {kubectl}")
    return Check("kubernetes", "ok", f"API server {version} answered (context {backend.context}); {kubectl}")


__all__ = [
    "Check",
    "GpuInfo",
    "attention_check",
    "attention_checks",
    "bf16_check",
    "cpu_bf16_problem",
    "detect_gpus",
    "gpus_check",
    "k8s_check",
    "memory_check",
    "plan_memory_check",
    "plural",
    "recipe_check",
    "size",
    "sm",
    "slurm_check",
    "torch_check",
]
