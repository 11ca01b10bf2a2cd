"""How near the machine's limit the rollout runs: its achieved FLOP/s as a share of a large GEMM's.

    python benchmarks/rollout_peak.py [--dtype bfloat16] [--rounds 3] [--gemm 2048] [--top 12] [--no-compile]

The rollout is rollout_vs_pipeline.py's fgrpo side, unchanged (the same CPU model, benchmarks/
cpu_model.py: 6 blocks, width 256, 7.0 M parameters; 8 videos of 17x96x96, 20 steps, CFG 4.5, one
SDE step per video; the trainer's model path with regional compilation, weights gathered once,
text side once per rollout). Measured:

* peak: the FLOP/s of `torch.matmul` of two `--gemm` x `--gemm` matrices in the same dtype on the
  same threads (median of 10 after a warm-up): what this machine's BLAS reaches, the practical peak.
* FLOPs of one rollout: torch's FLOP counter (fgrpo.trainer.compute's formulas, attention
  included) on an uncompiled twin of the sampler (the counter sees eager operators; compilation
  changes how, not how much, is computed).
* seconds of one rollout: the median of `--rounds` after a warm-up (compilation happens there).
* where the time goes: torch.profiler's operators by self CPU time over one rollout, grouped as
  matrix products (mm, bmm, addmm, linear, attention) and the rest (elementwise, norms, copies,
  Python between them).

Prints achieved FLOP/s / peak. A benchmark, not a test: numbers depend on the machine and on what
else runs on it.
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
ATTENTION_OPS = ("scaled_dot_product", "flash_attention", "_efficient_attention")


def gemm_flops_per_s(n: int, dtype: torch.dtype, repeats: int = 10) -> float:
    """2 n^3 / seconds of an n x n @ n x n product (median of `repeats`, after one warm-up)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        seconds.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(seconds)


def rollout_flops(run, inputs) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from fgrpo.trainer.compute import cpu_attention_formulas

    counter = FlopCounterMode(display=False, custom_mapping=cpu_attention_formulas())
    with counter:
        run(*inputs)
    return counter.get_total_flops()


def time_split(run, inputs, top: int) -> tuple[float, float, list[tuple[str, float]]]:
    """(seconds in matrix products and attention, seconds in everything else, the top operators)
    by self CPU time, over one rollout."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(*inputs)
    rows = [(e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()]
    rows.sort(key=lambda r: -r[1])
    matrix = sum(s for k, s in rows if k in MATRIX_OPS or any(a in k for a in ATTENTION_OPS))
    return matrix, sum(s for _, s in rows) - matrix, rows[:top]


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--rounds", type=int, default=3, help="timed rollouts (the median is the result)")
    p.add_argument("--gemm", type=int, default=2048, help="the peak GEMM's matrix size")
    p.add_argument("--top", type=int, default=12, help="operators listed by self CPU time")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    a = p.parse_args()
    # rollout_vs_pipeline.py's settings, so the two benchmarks measure the same rollout.
    args = argparse.Namespace(
        dtype=a.dtype, compile=a.compile, unsharded=True, text_cache=True, steps=20, cfg=4.5, videos=8,
        frames=17, size=96, flow_shift=3.0, text_tokens=512,
    )  # fmt: skip
    from fgrpo.models.wan import latent_shape

    dtype = getattr(torch, a.dtype)
    peak = gemm_flops_per_s(a.gemm, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_cpu_model(Path(tmp) / "model", seed=0)
        timed_run = fgrpo_sampler(folder, args)
        counted_run = fgrpo_sampler(folder, argparse.Namespace(**{**vars(args), "compile": False}))
        gen = torch.Generator().manual_seed(0)
        latents = torch.randn(args.videos, *latent_shape(args.frames, args.size, args.size), generator=gen)
        context = torch.randn(args.videos, args.text_tokens, MODEL["text_dim"], generator=gen)
        neg = torch.randn(1, args.text_tokens, MODEL["text_dim"], generator=gen).expand(args.videos, -1, -1)
        inputs = (latents, context, neg)
        flops = rollout_flops(counted_run, inputs)
        timed_run(*inputs)  # warm-up: compilation
        seconds = []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            timed_run(*inputs)
            seconds.append(time.perf_counter() - t0)
        matrix_s, other_s, top = time_split(timed_run, inputs, a.top)
    s = statistics.median(seconds)
    print(
        f"{a.dtype}, {torch.get_num_threads()} threads, compile={a.compile}; rollout: {args.videos} videos "
        f"{args.frames}x{args.size}x{args.size}, {args.steps} steps, CFG {args.cfg}"
    )
    print(f"peak ({a.gemm}^2 GEMM): {peak / 1e9:.1f} GFLOP/s")
    print(f"rollout: {flops / 1e9:.1f} GFLOP in {s:.2f} s (rounds {', '.join(f'{x:.2f}' for x in seconds)})")
    print(f"achieved: {flops / s / 1e9:.1f} GFLOP/s = {flops / s / peak:.1%} of the GEMM peak")
    total = matrix_s + other_s
    print(
        f"profiled rollout: matrix products and attention {matrix_s:.2f} s ({matrix_s / total:.0%}), "
        f"rest {other_s:.2f} s"
    )
    for key, sec in top:
        print(f"  {sec:8.3f} s  {sec / total:5.1%}  {key}")


if __name__ == "__main__":
    main()
