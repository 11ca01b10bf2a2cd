"""Peak resident memory of labelled intervals of this process (benchmarks/load_memory.py's
measuring): a sampling thread plus resets of the kernel's high-water mark at every boundary, so a
peak between two samples is not missed, and the wrappers that label `sharded_loading.materialize`'s
sub-steps and switch safetensors' read backend."""

from __future__ import annotations

import threading


def read_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssMonitor:
    """A sampling thread plus VmHWM resets: the peak RSS (and its anon/file split at the sampled
    peak) of each labelled interval. `mark(label)` closes the current interval and opens the next."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.lock = threading.Lock()
        self.label: str | None = None
        self.spans: dict[str, dict] = {}
        self.stop_event = threading.Event()
        self.hwm_ok = reset_hwm()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _observe(self, s: dict[str, int]) -> None:
        span = self.spans.get(self.label) if self.label else None
        if span is not None and s["VmRSS"] > span["peak_sampled"]:
            span.update(peak_sampled=s["VmRSS"], peak_anon=s["RssAnon"], peak_file=s["RssFile"])

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            s = read_status()
            with self.lock:
                self._observe(s)
                if self.label:
                    self.spans[self.label]["samples"] += 1

    def mark(self, label: str | None) -> None:
        with self.lock:
            s = read_status()
            self._observe(s)
            if self.label:
                span = self.spans[self.label]
                span["end"] = s["VmRSS"]
                span["peak_hwm"] = s["VmHWM"] if self.hwm_ok else 0
                span["peak"] = max(span["peak_sampled"], span["peak_hwm"])
            self.hwm_ok = reset_hwm() and self.hwm_ok
            s = read_status()
            self.label = label
            if label:
                self.spans[label] = dict(
                    start=s["VmRSS"], peak_sampled=s["VmRSS"], peak_anon=s["RssAnon"], peak_file=s["RssFile"], samples=0
                )

    def close(self) -> None:
        self.mark(None)
        self.stop_event.set()
        self.thread.join()


def instrument_materialize(monitor: RssMonitor, transformer) -> list:
    """Mark the sub-steps of `sharded_loading.materialize` without changing what it does: each
    callee is wrapped to mark its label, then call through. Returns undo callbacks."""
    import torch.distributed.checkpoint as dcp
    import torch.distributed.checkpoint.state_dict as dcp_sd
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    from fgrpo.models.wan import sharded_loading as sl

    undo = []

    def wrap(owner, name, label, once=False):
        original = getattr(owner, name)
        calls = []

        def call(*a, **kw):
            if not (once and calls):
                monitor.mark(label)
            calls.append(1)
            return original(*a, **kw)

        setattr(owner, name, call)
        undo.append(lambda: setattr(owner, name, original))

    transformer.to_empty = (lambda orig: lambda *a, **kw: (monitor.mark("to_empty"), orig(*a, **kw))[1])(
        transformer.to_empty
    )
    undo.append(lambda: transformer.__dict__.pop("to_empty", None))
    # materialize's own read_metadata call; dcp.load reads the metadata again inside its planning.
    wrap(HuggingFaceStorageReader, "read_metadata", "read_metadata", once=True)
    wrap(dcp, "load", "dcp.load (plan)")
    wrap(HuggingFaceStorageReader, "read_data", "dcp.load (read_data)")
    wrap(sl, "recompute_rope", "recompute_rope")
    wrap(sl, "lora_init_tensors", "lora_init_tensors")
    wrap(dcp_sd, "set_model_state_dict", "set_model_state_dict")
    return undo


def use_safetensors_backend(backend: str) -> None:
    """What-if, not what the trainer does: DCP's HuggingFaceStorageReader opens every file with
    `safe_open(..., backend=backend)` (safetensors >= 0.8; "pread" reads each slice with pread(2)
    instead of faulting in memory-mapped pages). It imports `safe_open` at call time, so patching
    the module attribute reaches it."""
    import functools

    import safetensors

    safetensors.safe_open = functools.partial(safetensors.safe_open, backend=backend)
