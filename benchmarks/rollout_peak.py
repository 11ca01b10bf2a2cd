"""How near the machine's limit the rollout runs: its achieved FLOP/s as a share of a large GEMM's.

    python benchmarks/rollout_peak.py [--dtype bfloat16] [--rounds 3] [--gemm 2048] [--threads 1 2]
                                      [--compare-rope] [--steps 20] [--top 12] [--no-compile]

The rollout is rollout_vs_pipeline.py's fgrpo side, unchanged (the same CPU model, benchmarks/
cpu_model.py: 6 blocks, width 256, 7.0 M parameters; 8 videos of 17x96x96, 20 steps, CFG 4.5, one
SDE step per video; the trainer's model path with regional compilation, weights gathered once,
text side once per rollout). Measured, per thread count (`--threads`, default torch's own, which
is what the trainer's rollout uses):

* peak: the FLOP/s of `torch.matmul` of two `--gemm` x `--gemm` matrices in the same dtype on the
  same threads (best of 8 after a warm-up; float32 too, for reference): what this machine's BLAS
  reaches, the practical peak.
* FLOPs of one rollout: torch's FLOP counter (fgrpo.trainer.compute's formulas, attention
  included, as the trainer's compute/flops) on an uncompiled twin of the sampler (the counter sees
  eager operators; compilation changes how, not how much, is computed), checked against a closed
  form of the Wan forward (`closed_form_flops`).
* seconds of one rollout: the median of `--rounds` after a warm-up (compilation happens there).
  `--compare-rope` also builds the sampler with diffusers' own rotary embedding (what compiled
  blocks ran before fgrpo.models.wan.rotary) and alternates rounds with it: before and after under
  the same conditions.
* sync probe: the median time of one parallel elementwise op (a 2880x256 bf16 copy, one of the
  block's) on these threads. Near 0.02 ms on an idle machine; with another job on the cores each
  OpenMP region waits for its second thread to be scheduled (milliseconds), and that wait is
  booked to whichever operator runs (copy_ above all): read the profile only with a small probe.
* where the time goes: torch.profiler's operators by self CPU time over one rollout, grouped as
  attention, matrix products, compiled (fused elementwise) kernels, copies and the rest.

Prints one table row per sampler and thread count. A benchmark, not a test: numbers depend on
the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from cpu_model import TRANSFORMER as MODEL  # noqa: E402
from cpu_model import save_cpu_model  # noqa: E402
from rollout_vs_pipeline import fgrpo_sampler  # noqa: E402

MATRIX_OPS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::linear", "aten::matmul")
CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution", "aten::_convolution")
ATTENTION_OPS = ("scaled_dot_product", "flash_attention", "_efficient_attention")
CATEGORIES = ("attention", "matrix products", "compiled kernels", "copies", "rest")


def gemm_flops_per_s(n: int, dtype: torch.dtype, repeats: int = 8) -> float:
    """2 n^3 / seconds of an n x n @ n x n product (the best of `repeats`, after one warm-up: the
    practical peak, which other jobs on the cores can only lower)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        seconds.append(time.perf_counter() - t0)
    return 2 * n**3 / min(seconds)


def sync_probe_ms(repeats: int = 20) -> float:
    """Median ms of one parallel elementwise op of the block's size (see the module docstring)."""
    src = torch.randn(2880, 256).bfloat16()
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds) * 1e3


def rollout_flops(run, inputs) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from fgrpo.trainer.compute import cpu_attention_formulas

    counter = FlopCounterMode(display=False, custom_mapping=cpu_attention_formulas())
    with counter:
        run(*inputs)
    return counter.get_total_flops()


def closed_form_flops(args) -> int:
    """The rollout's matmul, convolution and attention FLOPs from the model's shapes (2 per
    multiply-add, attention 4·S_q·S_k·width): every step runs the whole batch with CFG doubled; the
    text projection and the cross-attention keys and values run once (the text cache)."""
    from fgrpo.models.wan import latent_shape

    channels, frames, height, width = latent_shape(args.frames, args.size, args.size)
    pt, ph, pw = MODEL["patch_size"]
    n = 2 * args.videos  # CFG: conditional and unconditional rows in one batch
    tokens = (frames // pt) * (height // ph) * (width // pw)
    d, f, text = MODEL["num_attention_heads"] * MODEL["attention_head_dim"], MODEL["ffn_dim"], args.text_tokens
    patch = channels * pt * ph * pw
    block = (
        2 * n * tokens * d * d * 6  # self-attention q, k, v, out; cross-attention q, out
        + 4 * n * tokens * tokens * d  # self-attention
        + 4 * n * tokens * text * d  # cross-attention
        + 2 * n * tokens * d * f * 2  # feed-forward
    )
    time_embedding = 2 * n * (MODEL["freq_dim"] * d + d * d + d * 6 * d)
    per_forward = MODEL["num_layers"] * block + 2 * n * tokens * patch * d * 2 + time_embedding  # + patch in, out
    once = 2 * n * text * (MODEL["text_dim"] * d + d * d) + MODEL["num_layers"] * 2 * n * text * d * d * 2
    return args.steps * per_forward + once


def category(key: str) -> str:
    if any(a in key for a in ATTENTION_OPS):
        return "attention"
    if key in MATRIX_OPS or key in CONV_OPS:
        return "matrix products"
    if key.startswith("## Call CompiledFxGraph") or key.startswith("graph_"):
        return "compiled kernels"
    return "copies" if key == "aten::copy_" else "rest"


def time_split(run, inputs, top: int) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """(seconds per category, the top operators) by self CPU time, over one rollout."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(*inputs)
    rows = [(e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()]
    rows.sort(key=lambda r: -r[1])
    split: dict[str, float] = {name: 0.0 for name in CATEGORIES}
    for key, sec in rows:
        split[category(key)] += sec
    return split, rows[:top]


def with_diffusers_rope(run):
    """The sampler's compiled blocks back on diffusers' `WanAttnProcessor` (the rotary embedding
    before fgrpo.models.wan.rotary); call before the first rollout (compilation)."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    for block in run.transformer.blocks:
        old, new = block.attn1.processor, WanAttnProcessor()
        new._attention_backend = old._attention_backend
        block.attn1.set_processor(new)
    return run


def timed(run, inputs) -> float:
    t0 = time.perf_counter()
    run(*inputs)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--rounds", type=int, default=3, help="timed rollouts (the median is the result)")
    p.add_argument("--gemm", type=int, default=2048, help="the peak GEMM's matrix size")
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    p.add_argument("--compare-rope", action="store_true", help="also time diffusers' rotary embedding")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--top", type=int, default=12, help="operators listed by self CPU time")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    a = p.parse_args()
    # rollout_vs_pipeline.py's settings, so the two benchmarks measure the same rollout.
    args = argparse.Namespace(
        dtype=a.dtype, compile=a.compile, unsharded=True, text_cache=True, steps=a.steps, cfg=4.5, videos=8,
        frames=17, size=96, flow_shift=3.0, text_tokens=512,
    )  # fmt: skip
    from fgrpo.models.wan import latent_shape

    dtype = getattr(torch, a.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_cpu_model(Path(tmp) / "model", seed=0)
        samplers = {"fgrpo": fgrpo_sampler(folder, args)}
        if a.compare_rope:
            samplers = {"diffusers rope": with_diffusers_rope(fgrpo_sampler(folder, args)), **samplers}
        counted_run = fgrpo_sampler(folder, argparse.Namespace(**{**vars(args), "compile": False}))
        gen = torch.Generator().manual_seed(0)
        latents = torch.randn(args.videos, *latent_shape(args.frames, args.size, args.size), generator=gen)
        context = torch.randn(args.videos, args.text_tokens, MODEL["text_dim"], generator=gen)
        neg = torch.randn(1, args.text_tokens, MODEL["text_dim"], generator=gen).expand(args.videos, -1, -1)
        inputs = (latents, context, neg)
        flops, closed = rollout_flops(counted_run, inputs), closed_form_flops(args)
        outputs = {name: run(*inputs) for name, run in samplers.items()}  # warm-up: compilation
        same = all(torch.equal(out, outputs["fgrpo"]) for out in outputs.values())
        results = []
        for threads in a.threads:
            torch.set_num_threads(threads)
            peak, peak32 = gemm_flops_per_s(a.gemm, dtype), gemm_flops_per_s(a.gemm, torch.float32)
            probe = sync_probe_ms()
            seconds = {name: [] for name in samplers}
            for _ in range(a.rounds):  # alternating, so the samplers share the machine's conditions
                for name, run in samplers.items():
                    seconds[name].append(timed(run, inputs))
            for name, run in samplers.items():
                split, top = time_split(run, inputs, a.top)
                results.append((name, threads, peak, peak32, probe, seconds[name], split, top))
    print(
        f"{a.dtype}, compile={a.compile}; rollout: {args.videos} videos {args.frames}x{args.size}x{args.size}, "
        f"{args.steps} steps, CFG {args.cfg}; samplers' outputs bitwise equal: {same}"
    )
    print(f"rollout FLOPs: {flops / 1e9:.1f} G (torch's FLOP counter), closed form {closed / 1e9:.1f} G")
    print(
        f"| sampler | threads | GEMM peak {a.dtype} (fp32) GFLOP/s | sync probe ms | rollout s (median; rounds) "
        "| achieved GFLOP/s | of GEMM peak |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, threads, peak, peak32, probe, secs, _, _ in results:
        s = statistics.median(secs)
        print(
            f"| {name} | {threads} | {peak / 1e9:.0f} ({peak32 / 1e9:.0f}) | {probe:.2f} | {s:.2f} "
            f"({', '.join(f'{x:.2f}' for x in secs)}) | {flops / s / 1e9:.1f} | {flops / s / peak:.1%} |"
        )
    for name, threads, _, _, _, _, split, top in results:
        total = sum(split.values())
        shares = ", ".join(f"{k} {v / total:.0%}" for k, v in split.items())
        print(f"profile, {name}, {threads} threads ({total:.2f} s): {shares}")
        for key, sec in top:
            print(f"  {sec:8.3f} s  {sec / total:5.1%}  {key[:90]}")


if __name__ == "__main__":
    main()
