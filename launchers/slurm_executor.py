"""submitit's Slurm executor for a run's training job or its reward server: every sbatch option of
the recipe's launch section. Used to submit (launchers.slurm) and, after a stop on USR2, by the
job itself to submit the run's next job (launchers.job)."""

from __future__ import annotations

import shutil
from pathlib import Path

from fgrpo.recipe.config import Recipe
from fgrpo.recipe.validate import time_limit_minutes

# Preemptions requeue without limit; submitit counts only timeouts, and a long run that hits its
# time limit many times must still finish, so that count is effectively unbounded too.
MAX_TIMEOUTS = 10_000


def executor_parameters(recipe: Recipe, name: str) -> dict:
    """submitit's SlurmExecutor parameters for a recipe's launch section (every sbatch option reachable)."""
    la = recipe.launch
    params = dict(
        job_name=name,
        nodes=la.nodes,
        ntasks_per_node=recipe.procs_per_node,
        time=time_limit_minutes(la.time_limit),
        signal_delay_s=la.signal_delay_s,
        additional_parameters={"requeue": True, **la.sbatch},
        array_parallelism=la.array_parallelism,
    )
    if la.gpus_per_node:
        params["gpus_per_node"] = la.gpus_per_node
    if la.cpus_per_task:
        params["cpus_per_task"] = la.cpus_per_task
    if la.mem_gb:
        params["mem"] = _mem(la.mem_gb)
    return {**params, **_placement(recipe)}


def _mem(gb: float) -> str:
    """--mem as submitit's AutoExecutor converts mem_gb: whole GB, else MB."""
    return f"{int(gb)}GB" if gb == int(gb) else f"{int(gb * 1024)}MB"


def _placement(recipe: Recipe) -> dict:
    """Partition, account, QOS and setup lines: the same for the training and reward-server jobs."""
    la = recipe.launch
    params = {key: getattr(la, key) for key in ("partition", "account", "qos") if getattr(la, key)}
    if la.setup:
        params["setup"] = list(la.setup)
    return params


def server_parameters(recipe: Recipe, name: str) -> dict:
    """A reward server's job: one task on a node of its own resources, where the training runs."""
    la, rs = recipe.launch, recipe.reward_server
    params = dict(
        job_name=name,
        nodes=1,
        ntasks_per_node=1,
        cpus_per_task=rs.cpus,
        time=time_limit_minutes(la.time_limit),
        signal_delay_s=la.signal_delay_s,
        additional_parameters={"requeue": True},
    )
    if rs.gpus:
        params["gpus_per_node"] = rs.gpus
    if rs.mem_gb:
        params["mem"] = _mem(rs.mem_gb)
    return {**params, **_placement(recipe)}


# What a submission without Slurm's commands says (a laptop, a container): one line, no traceback.
NOT_ON_PATH = "{} not found on PATH: the slurm backend submits from a Slurm login node; use --dry-run to preview"


def make_executor(folder: Path, recipe: Recipe, name: str, server: bool = False, preview: bool = False):
    """submitit's Slurm executor for the run's training job (or, with `server`, its reward server's).
    With `preview`, for --dry-run, it needs no Slurm on PATH and only writes the sbatch script: the
    one a submission writes, since the two executors differ by the srun check alone."""
    from submitit import SlurmExecutor

    if not preview:
        for command in ("sbatch", "srun"):  # submitit runs sbatch, and refuses to start without srun
            if shutil.which(command) is None:
                raise FileNotFoundError(NOT_ON_PATH.format(command))
    executor_class = _script_writer() if preview else SlurmExecutor
    ex = executor_class(folder, max_num_timeout=MAX_TIMEOUTS)
    ex.update_parameters(**(server_parameters(recipe, name) if server else executor_parameters(recipe, name)))
    return ex


def _script_writer():
    """SlurmExecutor less its refusal to exist where srun is not on PATH (a laptop): the same
    parameters make the same sbatch script. Used to write that script, never to submit."""
    from submitit import SlurmExecutor

    class ScriptWriter(SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            return 2  # what SlurmExecutor reports where srun is found

    return ScriptWriter
