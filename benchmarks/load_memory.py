"""Peak host RSS of each rank while it loads Wan2.1, on 1 process and on 4 (dp_shard=4).

    python benchmarks/load_memory.py [--worlds 1 4] [--preset wan2.1-t2v-1.3b] [--lora | --full]
                                     [--model-path DIR] [--order brief|trainer] [--json OUT.json]
                                     [--no-breakdown] [--safetensors-backend mmap|pread]

Spawns, per world size, that many worker processes in the local launcher's torchrun-style
environment (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, OMP_NUM_THREADS = cores / world;
gloo), each loading the model with the project's own code exactly as `Trainer.__init__` does:

    transformer  build_on_meta -> add_lora (or requires_grad_) -> policy.apply_storage
                 -> parallelize_wan (FSDP2 over dp_shard = world) -> materialize (to_empty, DCP
                 HuggingFaceStorageReader reads this rank's slices, rope, LoRA init)
    vae          load_wan(..., with_transformer=False, with_text_encoder=False)
    text encoder LazyTextEncoder.load(), then .free()

Each worker measures its own resident set (/proc/self/status VmRSS: anonymous memory plus the
pages of memory-mapped safetensors files while they are mapped, which is what the host sees; the
page cache is never dropped): a thread samples VmRSS every --interval-ms, and at every phase and
sub-step boundary the kernel's high-water mark is reset (`5` > /proc/self/clear_refs) and read back
at the end, so a peak between two samples is not missed. A phase's peak is reported as the
increase over the RSS at the phase's start; "after" is the RSS retained when it ends (the
transformer and VAE stay loaded, as in the trainer; the text encoder is freed). Ranks gather their
numbers to rank 0 (all_gather_object), which writes them for the parent to print.

Default model: `random_model_path(preset)`, the preset's real transformer architecture with random
weights (built and cached on first use, ~2.9 GB for 1.3B; $FGRPO_CACHE). Its text encoder (a
1-layer UMT5 of the preset's width) and VAE (the tiny preset's) are small stand-ins, so their rows
measure the loading path, not UMT5-XXL's 11 GB or the real VAE. Prints one row per rank (GiB:
baseline RSS after imports and process-group set-up; each phase's peak increase; the mapped-file
part of the RSS at the transformer's peak, shared libraries included; the RSS after each phase;
the bytes of parameters the rank holds), a per-sub-step breakdown of the transformer phase (max
over ranks; `--no-breakdown` leaves materialize's callees unwrapped), and the goal: the largest
transformer peak increase of a rank at the largest world size over the 1-process one, PASS at
<= --goal (0.35); the ratio of absolute RSS (baseline included) is printed beside it.
`--safetensors-backend pread` is a what-if (not what the trainer does): DCP's reader reads with
pread(2) instead of memory-mapping, which removes the mapped-file part. A benchmark, not a test:
numbers depend on the machine, the kernel's page cache and the allocator.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from rss_monitor import RssMonitor, instrument_materialize, read_status, use_safetensors_backend  # noqa: E402

GiB = 2**30
PHASES = {"brief": ("transformer", "vae", "text_encoder"), "trainer": ("vae", "text_encoder", "transformer")}
TRANSFORMER_STEPS = (
    "build_on_meta",
    "add_lora",
    "apply_storage",
    "parallelize_wan",
    "materialize",
    "to_empty",
    "read_metadata",
    "dcp.load (plan)",
    "dcp.load (read_data)",
    "recompute_rope",
    "lora_init_tensors",
    "set_model_state_dict",
)


# ----------------------------------------------------------------------------- one rank


def worker(args) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # Everything the phases import lazily is imported here, so that import memory is baseline.
    import gc

    import diffusers
    import torch
    import torch.distributed as tdist
    import torch.distributed.checkpoint  # noqa: F401
    import torch.distributed.checkpoint.state_dict  # noqa: F401
    import transformers
    from diffusers import AutoencoderKLWan, WanTransformer3DModel  # noqa: F401
    from peft import LoraConfig  # noqa: F401
    from torch.distributed.tensor import DTensor
    from transformers import AutoTokenizer, UMT5EncoderModel  # noqa: F401

    from fgrpo.distributed import process_group as dist
    from fgrpo.distributed.parallel_dims import ParallelDims
    from fgrpo.distributed.precision import PrecisionPolicy
    from fgrpo.models.wan import load_wan
    from fgrpo.models.wan.lora import add_lora
    from fgrpo.models.wan.parallelize import parallelize_wan
    from fgrpo.models.wan.sharded_loading import build_on_meta, materialize
    from fgrpo.models.wan.text_encoder import LazyTextEncoder
    from fgrpo.recipe.config import Recipe

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if args.safetensors_backend != "mmap":
        use_safetensors_backend(args.safetensors_backend)
    recipe = Recipe()  # the paper's defaults: LoRA r16/a32 on to_q,to_k,to_v,to_out.0, bf16
    device = dist.init_distributed()
    dims = ParallelDims.from_config(1, -1, 1, dist.world_size())  # dp_shard = world
    dims.build_mesh(device.type)
    policy = PrecisionPolicy.from_name(args.dtype)
    folder = Path(args.model_path)
    keep: dict[str, object] = {}  # what the trainer keeps alive between phases

    def transformer_phase(monitor: RssMonitor) -> dict:
        monitor.mark("build_on_meta")
        transformer = cast(WanTransformer3DModel, build_on_meta(folder))  # from_config types a tuple too
        monitor.mark("add_lora")
        if args.full:
            transformer.requires_grad_(True)
        else:
            add_lora(transformer, args.lora_rank, args.lora_alpha, tuple(args.target_modules))
        monitor.mark("apply_storage")
        policy.apply_storage(transformer)
        monitor.mark("parallelize_wan")
        parallelize_wan(transformer, dims, policy, recipe.parallelism.activation_checkpointing)
        undo = instrument_materialize(monitor, transformer) if args.breakdown else []
        monitor.mark("materialize")
        try:
            materialize(transformer, folder, device, lora_seed=recipe.prompts.seed)
        finally:
            for u in undo:
                u()
        keep["transformer"] = transformer
        local = global_ = trainable = 0
        for p in transformer.parameters():
            t = p.to_local() if isinstance(p, DTensor) else p
            local += t.numel() * t.element_size()
            global_ += p.numel() * p.element_size()
            trainable += p.numel() if p.requires_grad else 0
        return dict(local_param_bytes=local, global_param_bytes=global_, trainable_params=trainable)

    def vae_phase(monitor: RssMonitor) -> dict:
        monitor.mark("load_wan")
        keep["components"] = components = load_wan(
            folder, args.dtype, args.max_text_tokens, str(device), with_transformer=False, with_text_encoder=False
        )
        return dict(param_bytes=sum(p.numel() * p.element_size() for p in components.vae.parameters()))

    def text_phase(monitor: RssMonitor) -> dict:
        monitor.mark("load")
        encoder = LazyTextEncoder(folder, policy.compute, args.max_text_tokens, device)
        encoder.load()
        loaded = read_status()["VmRSS"]
        monitor.mark("free")
        freed = encoder.free()
        del encoder
        gc.collect()
        return dict(param_bytes=freed, rss_loaded=loaded)

    run = {"transformer": transformer_phase, "vae": vae_phase, "text_encoder": text_phase}
    gc.collect()
    tdist.barrier()
    result: dict[str, Any] = dict(rank=rank, world=world, baseline=read_status()["VmRSS"], phases={})
    for phase in PHASES[args.order]:
        gc.collect()
        tdist.barrier()
        monitor = RssMonitor(args.interval_ms / 1000)
        t0 = time.perf_counter()
        extra = run[phase](monitor)
        gc.collect()
        monitor.close()
        steps = monitor.spans
        start = steps[next(iter(steps))]["start"]
        peak = max(s["peak"] for s in steps.values())
        at = max(steps.values(), key=lambda s: s["peak"])
        result["phases"][phase] = dict(
            start=start,
            peak=peak,
            after=read_status()["VmRSS"],
            peak_anon=at["peak_anon"],
            peak_file=at["peak_file"],
            seconds=time.perf_counter() - t0,
            hwm_ok=monitor.hwm_ok,
            samples=sum(s["samples"] for s in steps.values()),
            steps=steps,
            **extra,
        )
        tdist.barrier()
    gathered = [None] * world
    tdist.all_gather_object(gathered, result)
    if rank == 0:
        Path(args.out).write_text(json.dumps(gathered))
    tdist.barrier()
    tdist.destroy_process_group()


# ----------------------------------------------------------------------------- launching


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_model(args) -> str:
    """`random_model_path(preset)` in a child process, so that building it (gigabytes) never sits
    in this process's memory while the workers are measured."""
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from fgrpo.models.wan.random_build import random_model_path\n"
        "print(random_model_path(%r))"
    ) % (str(REPO), args.preset)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return res.stdout.strip().splitlines()[-1]


def run_world(args, world: int, out: Path) -> list[dict]:
    port = free_port()
    base = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        # as launchers/local.py
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world))),
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", "--out", str(out), *worker_args(args)]
    procs = [
        subprocess.Popen(cmd, env={**os.environ, **base, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(world)
    ]
    deadline = time.time() + args.timeout
    while any(p.poll() is None for p in procs):
        failed = any(p.poll() not in (None, 0) for p in procs)
        if failed or time.time() > deadline:
            time.sleep(10 if failed else 0)  # a failed rank: let the others report their error
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.2)
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"world {world}: workers exited with {codes}")
    return json.loads(out.read_text())


def worker_args(args) -> list[str]:
    a = [
        "--model-path",
        args.model_path,
        "--dtype",
        args.dtype,
        "--max-text-tokens",
        str(args.max_text_tokens),
        "--lora-rank",
        str(args.lora_rank),
        "--lora-alpha",
        str(args.lora_alpha),
        "--order",
        args.order,
        "--interval-ms",
        str(args.interval_ms),
        "--safetensors-backend",
        args.safetensors_backend,
        "--target-modules",
        *args.target_modules,
    ]
    a += ["--full"] if args.full else []
    a += [] if args.breakdown else ["--no-breakdown"]
    return a


# ----------------------------------------------------------------------------- report


def gib(b: float) -> str:
    return f"{b / GiB:.3f}"


def summarise(results: dict[int, list[dict]], goal: float) -> dict:
    def tpeak(rank_result):
        p = rank_result["phases"]["transformer"]
        return p["peak"] - p["start"]

    worlds = sorted(results)
    one, big = worlds[0], worlds[-1]
    s = {"worlds": worlds, "goal": goal}
    if one == 1 and big > 1:
        single = tpeak(results[1][0])
        worst = max(tpeak(r) for r in results[big])
        abs_single = results[1][0]["phases"]["transformer"]["peak"]
        abs_worst = max(r["phases"]["transformer"]["peak"] for r in results[big])
        s.update(
            single_peak=single,
            worst_peak=worst,
            ratio=worst / single,
            big_world=big,
            ratio_absolute=abs_worst / abs_single,
            passed=worst / single <= goal,
        )
    return s


def print_report(results: dict[int, list[dict]], summary: dict, args) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=170)
    mode = (
        "full fine-tune (fp32 masters)" if args.full else f"LoRA r{args.lora_rank} on {','.join(args.target_modules)}"
    )
    what_if = "" if args.safetensors_backend == "mmap" else f", WHAT-IF safetensors backend {args.safetensors_backend}"
    console.print(f"model {args.model_path} ({args.preset}), {args.dtype}, {mode}, phase order: {args.order}{what_if}")
    t = Table(title="peak host RSS per rank (GiB): peak = max increase over the phase's start; after = RSS at its end")
    for col in (
        "world",
        "rank",
        "baseline",
        "transformer\npeak",
        "mapped file\nat peak",
        "transformer\nafter",
        "local\nparams",
        "VAE\nparams",
        "VAE\npeak",
        "VAE\nafter",
        "text enc\nparams",
        "text enc\npeak",
        "text enc\nafter free",
    ):
        t.add_column(col, justify="right")
    for world in sorted(results):
        for r in results[world]:
            ph = r["phases"]
            tr, vae, te = ph["transformer"], ph["vae"], ph["text_encoder"]
            t.add_row(
                str(world),
                str(r["rank"]),
                gib(r["baseline"]),
                "+" + gib(tr["peak"] - tr["start"]),
                gib(tr["peak_file"]),
                gib(tr["after"]),
                gib(tr["local_param_bytes"]),
                gib(vae["param_bytes"]),
                "+" + gib(vae["peak"] - vae["start"]),
                gib(vae["after"]),
                gib(te["param_bytes"]),
                "+" + gib(te["peak"] - te["start"]),
                gib(te["after"]),
            )
    console.print(t)
    if args.breakdown:
        b = Table(title="transformer phase by sub-step: peak increase over the phase's start, max over ranks (GiB)")
        b.add_column("sub-step")
        for world in sorted(results):
            b.add_column(f"world {world} peak", justify="right")
            b.add_column(f"world {world} end", justify="right")
        labels = [
            x
            for x in TRANSFORMER_STEPS
            if any(x in r["phases"]["transformer"]["steps"] for rs in results.values() for r in rs)
        ]
        for label in labels:
            row = [label]
            for world in sorted(results):
                vals = [
                    (s["peak"] - r["phases"]["transformer"]["start"], s["end"] - r["phases"]["transformer"]["start"])
                    for r in results[world]
                    if (s := r["phases"]["transformer"]["steps"].get(label))
                ]
                row += [gib(max(v[0] for v in vals)), gib(max(v[1] for v in vals))] if vals else ["", ""]
            b.add_row(*row)
        console.print(b)
    if "ratio" in summary:
        verdict = "[green]PASS[/]" if summary["passed"] else "[red]FAIL[/]"
        console.print(
            f"transformer: worst rank at {summary['big_world']} processes +{gib(summary['worst_peak'])} GiB vs "
            f"+{gib(summary['single_peak'])} GiB on 1 process: ratio {summary['ratio']:.3f} "
            f"(goal <= {summary['goal']}) {verdict}; absolute RSS ratio {summary['ratio_absolute']:.3f}"
        )


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 4], help="process counts (dp_shard = world)")
    ap.add_argument("--preset", default="wan2.1-t2v-1.3b")
    ap.add_argument("--model-path", default=None, help="diffusers folder (default: random_model_path(preset))")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--lora", dest="full", action="store_false", help="LoRA (default)")
    mode.add_argument("--full", dest="full", action="store_true", help="full fine-tune: every weight fp32")
    ap.set_defaults(full=False)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--lora-alpha", type=float, default=32.0)
    ap.add_argument("--target-modules", nargs="+", default=["to_q", "to_k", "to_v", "to_out.0"])
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--max-text-tokens", type=int, default=512)
    ap.add_argument(
        "--order",
        default="brief",
        choices=sorted(PHASES),
        help="brief: transformer, VAE, text encoder; trainer: VAE, text encoder, transformer",
    )
    ap.add_argument("--interval-ms", type=float, default=5.0, help="RSS sampling period")
    ap.add_argument(
        "--no-breakdown", dest="breakdown", action="store_false", help="do not mark materialize's sub-steps"
    )
    ap.add_argument(
        "--safetensors-backend",
        default="mmap",
        choices=("mmap", "pread"),
        help="what-if: the backend DCP's reader opens the safetensors with (default mmap, as the trainer)",
    )
    ap.add_argument("--goal", type=float, default=0.35)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per world size")
    ap.add_argument("--json", default=None, help="also write every rank's numbers and the summary here")
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main() -> None:
    args = parse()
    if args._worker:
        return worker(args)
    if args.model_path is None:
        args.model_path = resolve_model(args)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.worlds:
            results[world] = run_world(args, world, Path(tmp) / f"world{world}.json")
    summary = summarise(results, args.goal)
    print_report(results, summary, args)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"args": vars(args), "summary": summary, "ranks": {str(w): r for w, r in results.items()}}, indent=1
            )
        )


if __name__ == "__main__":
    main()
