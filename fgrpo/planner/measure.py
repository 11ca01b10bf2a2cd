"""Measure a real run phase by phase, to check the planner against (tests, benchmarks/plan_vs_measured.py).

`measure_run` builds the real `Trainer` in this process's process group, runs one warm-up step
(AdamW's moments appear at the first step), then one measured step and one evaluation, and
reports per phase, for this rank:

* `tensors`: peak bytes of live tensor storage, by torch's `MemTracker` in real mode, entered
  before anything is built, so every tensor is tracked from its allocation (FSDP2's storage
  resizes included). This is what the planner predicts, and what `torch.cuda.max_memory_allocated`
  reports on a GPU: the caching allocator's rounding and a kernel's internal scratch are not in it.
  Module hooks are off: the trainer calls the root module many times per phase, which the
  tracker's per-module statistics refuse.
* `rss`: the process's peak resident set during the phase (the kernel's VmHWM, reset at the
  phase's start by writing 5 to /proc/self/clear_refs) minus the resident set before the model
  was built. It counts everything the process really holds (allocator slack, kernels' scratch,
  library code paged in, Python objects), so it is an independent check where tensors dominate;
  on a tiny model its noise (tens of MB) dominates instead. Run with MALLOC_MMAP_THRESHOLD_ set
  (the benchmark does), so freed tensors leave the resident set at once.
* `flops`: `FlopCounterMode` over the phase, counting each rank's local work (`count_flops`).

A phase is every call of the trainer function that is that phase, wrapped for the measurement:
text encoding the encoder's call on a batch of prompts (after it is loaded: loading's host-side
buffers are not on a GPU), rollout `sample` (one micro-batch each), VAE decode
`Policy.decode`, training from `PolicyUpdate.zero_grad` to `PolicyUpdate.step`, evaluation
`evaluate_heldout` up to rank 0's writing of the sample videos (`write_samples`, from CPU copies
of the thumbnails: host memory on a GPU run). A phase's peak is the largest over its calls, its
FLOPs the sum; a call inside another phase belongs to that phase (evaluation decodes). Garbage is
collected at each phase's start (tensors in reference cycles left from before are not the phase's).
"""

from __future__ import annotations

import functools
import gc
from contextlib import ExitStack, contextmanager
from pathlib import Path

from torch.distributed._tools.mem_tracker import MemTracker

from .world import count_flops

__all__ = ["RealTracker", "PhaseMeter", "measure_run", "rss_bytes"]


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_bytes() -> int:
    return _status("VmRSS")


def _reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")


class RealTracker(MemTracker):
    """torch's MemTracker without per-module statistics, with a peak per phase."""

    def _pre_fw_hook(self, module, inputs) -> None:
        pass

    def _post_fw_hook(self, module, inputs, outputs) -> None:
        pass

    def _pre_bw_hook(self, module, args) -> None:
        pass

    def _post_bw_hook(self, module, args) -> None:
        pass

    def start_phase(self) -> None:
        current = self.get_tracker_snapshot("current")
        self._peak_mem = {dev: snap.get("Total", 0) for dev, snap in current.items()}
        self._peak_mem_snap = current

    def peak_total(self) -> int:
        return sum(snap.get("Total", 0) for snap in self.get_tracker_snapshot("peak").values())


class PhaseMeter:
    def __init__(self):
        self.tracker = RealTracker()
        self.baseline_rss = rss_bytes()
        self.recording = True
        self.results: dict[str, dict] = {}
        self._active: str | None = None
        self._stack: ExitStack | None = None
        self._flops = None

    def begin(self, name: str) -> bool:
        if self._active is not None or not self.recording:
            return False
        gc.collect()  # garbage left from before the phase (reference cycles) is not the phase's
        self._active = name
        self._stack = ExitStack()
        self._flops = self._stack.enter_context(count_flops())
        self.tracker.start_phase()
        _reset_hwm()
        return True

    def end(self, name: str) -> None:
        if self._active != name:
            return
        rss = _status("VmHWM") - self.baseline_rss
        tensors = self.tracker.peak_total()
        assert self._flops is not None and self._stack is not None  # set by begin(name)
        flops = self._flops.get_total_flops()
        self._stack.close()
        self._active, self._stack, self._flops = None, None, None
        r = self.results.setdefault(name, {"tensors": 0, "rss": 0, "flops": 0, "calls": 0})
        r["tensors"], r["rss"] = max(r["tensors"], tensors), max(r["rss"], rss)
        r["flops"] += flops
        r["calls"] += 1

    @contextmanager
    def phase(self, name: str):
        started = self.begin(name)
        try:
            yield
        finally:
            if started:
                self.end(name)

    def wrap(self, fn, name: str):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)

        return inner


@contextmanager
def _patched(meter: PhaseMeter):
    """The trainer's phase functions wrapped by `meter` (restored afterwards)."""
    from fgrpo.models.wan import text_encoder
    from fgrpo.trainer import evaluate, flash_grpo, policy, trainer, update

    saved = []

    def patch(obj, attr, new):
        saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, new)

    # Weights that from_pretrained reads from safetensors are created without a dispatched op, so
    # torch's tracker would not see them: the VAE and the text encoder are registered when loaded.
    def tracked_load_wan(*args, **kwargs):
        components = load_wan(*args, **kwargs)
        meter.tracker.track_external(components.vae)
        return components

    def tracked_encoder_load(self):
        encoder_load(self)
        meter.tracker.track_external(self.text_encoder)

    def encode_batch(self, prompts):  # loading (host-side buffers, then the weights) is not the phase
        if not self.loaded:
            self.load()
        with meter.phase("text encoding"):
            return encode(self, prompts)

    load_wan, encoder_load = policy.load_wan, text_encoder.LazyTextEncoder.load
    encode = text_encoder.LazyTextEncoder.__call__
    patch(policy, "load_wan", tracked_load_wan)
    patch(text_encoder.LazyTextEncoder, "load", tracked_encoder_load)
    patch(text_encoder.LazyTextEncoder, "__call__", encode_batch)
    patch(flash_grpo, "sample", meter.wrap(flash_grpo.sample, "rollout"))
    patch(policy.Policy, "decode", meter.wrap(policy.Policy.decode, "VAE decode"))
    patch(trainer, "evaluate_heldout", meter.wrap(trainer.evaluate_heldout, "evaluation"))

    def samples_after_evaluation(*args, **kwargs):  # rank 0's sample videos, from CPU copies: host memory on GPUs
        meter.end("evaluation")
        return write_samples(*args, **kwargs)

    write_samples = evaluate.write_samples
    patch(evaluate, "write_samples", samples_after_evaluation)
    zero_grad, step = update.PolicyUpdate.zero_grad, update.PolicyUpdate.step
    after_step = [False]

    def zero_grad_then_train(self):  # the step's first zero_grad opens training; the one after step() does not
        if not after_step[0]:
            meter.begin("training")
        after_step[0] = False
        return zero_grad(self)

    def step_ends_training(self):
        out = step(self)
        meter.end("training")
        after_step[0] = True
        return out

    patch(update.PolicyUpdate, "zero_grad", zero_grad_then_train)
    patch(update.PolicyUpdate, "step", step_ends_training)
    try:
        yield
    finally:
        for obj, attr, old in reversed(saved):
            setattr(obj, attr, old)


def measure_run(recipe, run_dir: Path, evaluate: bool = True) -> dict:
    """Per-phase measurements of one steady-state step (and one evaluation) of `recipe` on this
    rank (collective: every rank of the process group calls it). Returns
    {phase: {"tensors", "rss", "flops", "calls"}} and "baseline_rss"."""
    from fgrpo.trainer.trainer import Trainer

    meter = PhaseMeter()
    with _patched(meter), meter.tracker:
        t = Trainer(recipe, Path(run_dir))
        t.connect_rewards()
        rewards = t.rewards
        assert rewards is not None  # connect_rewards set it
        try:
            for step in range(2):
                meter.recording = step == 1  # step 0 is the warm-up: AdamW's moments appear in it
                t.run_step(t.sampler.next(recipe.rollout.prompts_per_step), lambda: None)
                t.step += 1
            if evaluate and t.heldout_prompts:
                t.evaluate("measured")
        finally:
            rewards.close()
    return {**meter.results, "baseline_rss": meter.baseline_rss}
