"""Cumulative compute in every record, so that modes whose steps cost different amounts can be
compared at equal compute: optimizer steps, videos, transformer forward passes, FLOPs of the
rollout and of the training pass, wall seconds and device seconds.

    compute/optimizer_steps   steps applied (a non-finite step is skipped: not counted here)
    compute/videos            rollout videos of every step attempted, over the whole job (refill
                              rounds' included: rollout.refill_zero_variance)
    compute/forward_passes    transformer forwards over the whole job, one per video latent per call
                              (CFG's conditional and unconditional halves count as two)
    compute/flops_rollout     FLOPs up to the first training-mode forward of a step: sampling, VAE
                              decode, in-process rewards
    compute/flops_train       the rest: recomputed old log-probs, the training pass (forward and
                              backward), the optimizer
    compute/flops             their sum
    compute/wall_s            seconds the run's launches have run, set-up and evaluations included
    compute/device_s          wall seconds times the processes (devices) of each launch

FLOPs and forwards are measured once per launch, on rank 0's first step, by `measure_step`
(torch.utils.flop_counter.FlopCounterMode and a forward hook), scaled from rank 0's share to the
job (x the data-parallel degree), and reused for every later step: every step of a run has the
same shapes. `measure_step` is the one place that knows how; fgrpo/planner's counts can replace
it. A step's refill rounds (rollout.refill_zero_variance) roll out a varying number of extra
videos: each is costed at the measured step's rollout FLOPs and forwards per video (the measured
step's own refill videos divided out), so `compute/flops` includes them; the step's share is its
record's `refill_flops`. Caveat: under tensor parallelism FlopCounterMode counts the DTensor matmuls at their global
shapes but attention on the local heads, so attention is undercounted by (tp - 1) / tp.

A resumed launch continues the totals of the last record at or before its checkpoint (after
metrics.jsonl's rewind), so curves against compute continue across requeues. The FLOPs of steps
a killed launch did past its checkpoint are not counted: those steps are redone.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from dataclasses import dataclass

import torch

KEYS = (
    "compute/optimizer_steps",
    "compute/videos",
    "compute/forward_passes",
    "compute/flops_rollout",
    "compute/flops_train",
    "compute/flops",
    "compute/wall_s",
    "compute/device_s",
)


@dataclass
class StepCost:
    """One optimizer step over the whole job."""

    flops_rollout: int  # of the step's batch, without refill rounds
    flops_train: int
    forward_passes: int  # of the step's batch, without refill rounds
    forward_passes_rollout: int = 0  # the rollout's share of them (records before it existed: 0)


def cpu_attention_formulas() -> dict:
    """FlopCounterMode counts CUDA's SDPA kernels; CPU's flash kernel gets the same formula."""
    from torch.utils import flop_counter as fc

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)

    aten, out = torch.ops.aten, {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", forward),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", backward),
    ):
        if hasattr(aten, name):
            out[getattr(aten, name)] = formula
    return out


def measure_step(transformer: torch.nn.Module, run, dp: int):
    """Run `run()` (one optimizer step) counting its FLOPs and transformer forwards on this rank;
    returns (its result, the job's StepCost = this rank's count x `dp`)."""
    from torch.utils.flop_counter import FlopCounterMode

    seen = {"rows": 0, "rollout_flops": None, "rollout_rows": None}
    counter = FlopCounterMode(display=False, custom_mapping=cpu_attention_formulas())

    def count(module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        if module.training and seen["rollout_flops"] is None:
            seen["rollout_flops"], seen["rollout_rows"] = counter.get_total_flops(), seen["rows"]
        seen["rows"] += int(x.shape[0]) if x is not None else 1

    hook = transformer.register_forward_pre_hook(count, with_kwargs=True)
    try:
        with counter:
            result = run()
    finally:
        hook.remove()
    total = counter.get_total_flops()
    rollout = seen["rollout_flops"] if seen["rollout_flops"] is not None else total
    rollout_rows = seen["rollout_rows"] if seen["rollout_rows"] is not None else seen["rows"]
    return result, StepCost(rollout * dp, (total - rollout) * dp, seen["rows"] * dp, rollout_rows * dp)


def without_refill(cost: StepCost, videos: int, refill_videos: int) -> StepCost:
    """A measured step's cost less its refill rounds: its rollout parts scaled to its `videos`."""
    if refill_videos == 0:
        return cost
    rollout = cost.flops_rollout * videos // (videos + refill_videos)
    rows = cost.forward_passes_rollout * videos // (videos + refill_videos)
    return StepCost(rollout, cost.flops_train, cost.forward_passes - cost.forward_passes_rollout + rows, rows)


def refill_cost(cost: StepCost, videos: int, refill_videos: int) -> tuple[int, int]:
    """(FLOPs, forwards) of `refill_videos` more rollout videos, at the step's cost per video."""
    return cost.flops_rollout * refill_videos // videos, cost.forward_passes_rollout * refill_videos // videos


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """This process's peak memory: CUDA's max allocated, else the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_max_rss"


def gather_per_rank(value: float, device: torch.device) -> list[float]:
    """`value` of every rank, by global rank (a collective: every rank calls it)."""
    import torch.distributed as td

    if not (td.is_available() and td.is_initialized()) or td.get_world_size() == 1:
        return [float(value)]
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    out = [torch.zeros_like(t) for _ in range(td.get_world_size())]
    td.all_gather(out, t)
    return [float(x.item()) for x in out]


class ComputeMeter:
    """The cumulative totals of a run, continued across launches."""

    def __init__(self, videos_per_step: int, world_size: int, dp: int, started: float | None = None):
        self.videos_per_step, self.world, self.dp = videos_per_step, world_size, dp
        self.started = time.time() if started is None else started
        self.totals = {k: 0 for k in KEYS}
        self.base_wall = self.base_device = 0.0
        self.cost: StepCost | None = None
        self.unmeasured_steps = 0  # steps done before a cost was measured (trained on kept rollouts)
        self.unmeasured_refill_videos = 0  # their refill rounds' videos

    def restore(self, record: dict | None, step: int) -> None:
        """Continue from a record's totals (the last one at or before the checkpoint of `step`); a
        run logged before these totals existed continues from its step count alone."""
        if not record:
            self.totals["compute/optimizer_steps"] = step
            return
        cost = [record.get(f"compute/step_{f.name}", f.default) for f in dataclasses.fields(StepCost)]
        numbers = [c for c in cost if isinstance(c, (int, float))]
        if len(numbers) == len(cost):
            # Measured by an earlier launch: not again. Measuring runs the step under
            # FlopCounterMode, whose dispatch path can round differently, and a resumed run must
            # repeat the uninterrupted one bit for bit (only the run's first step is measured).
            self.cost = StepCost(*(int(c) for c in numbers))
        for k in KEYS:
            if isinstance(record.get(k), (int, float)):
                self.totals[k] = record[k]
        self.base_wall = float(self.totals["compute/wall_s"])
        self.base_device = float(self.totals["compute/device_s"])

    def run_step(self, transformer, run, measure: bool):
        """`run()` one step; measured (FLOPs, forwards) when `measure` and not yet this launch."""
        if measure and self.cost is None:
            result, cost = measure_step(transformer, run, self.dp)
            self.cost = without_refill(cost, self.videos_per_step, getattr(result, "refill_videos", 0))
            for _ in range(self.unmeasured_steps):  # they cost a whole step, their rollout in an earlier job
                self._add_cost(0)
            self._add_refill(self.unmeasured_refill_videos)
            self.unmeasured_steps = self.unmeasured_refill_videos = 0
            return result
        return run()

    def _add_cost(self, refill_videos: int) -> int:
        """Add a step's cost with `refill_videos` refill videos; returns the refill's FLOPs."""
        t, cost = self.totals, self.cost
        assert cost is not None
        t["compute/forward_passes"] += cost.forward_passes
        t["compute/flops_rollout"] += cost.flops_rollout
        t["compute/flops_train"] += cost.flops_train
        return self._add_refill(refill_videos)

    def _add_refill(self, refill_videos: int) -> int:
        t = self.totals
        assert self.cost is not None
        flops, forwards = refill_cost(self.cost, self.videos_per_step, refill_videos)
        t["compute/forward_passes"] += forwards
        t["compute/flops_rollout"] += flops
        t["compute/flops"] = t["compute/flops_rollout"] + t["compute/flops_train"]
        return flops

    def add_step(self, applied: bool, refill_videos: int = 0) -> int | None:
        """Count a step that rolled out `refill_videos` refill videos beyond its batch; returns the
        refill's FLOPs (None where no cost is measured: ranks other than 0, or not yet)."""
        t = self.totals
        t["compute/optimizer_steps"] += int(applied)
        t["compute/videos"] += self.videos_per_step + refill_videos
        if self.cost is not None:
            return self._add_cost(refill_videos)
        self.unmeasured_steps += 1
        self.unmeasured_refill_videos += refill_videos
        return None

    def snapshot(self) -> dict:
        """The totals now (wall and device seconds up to this moment)."""
        elapsed = time.time() - self.started
        cost = (
            {}
            if self.cost is None
            else {f"compute/step_{f.name}": getattr(self.cost, f.name) for f in dataclasses.fields(self.cost)}
        )
        return {
            **self.totals,
            "compute/wall_s": round(self.base_wall + elapsed, 3),
            "compute/device_s": round(self.base_device + elapsed * self.world, 3),
            **cost,
        }
