"""fgrpo's sampler against `diffusers.WanPipeline.__call__`: same model, same settings, one process.

    python benchmarks/rollout_vs_pipeline.py [--rounds 5] [--dtype bfloat16] [--no-compile] ...

The model is benchmarks/cpu_model.py's compute-bound Wan-architecture transformer (6 blocks,
width 256, FFN 1024, text width 256: 7.0 M parameters) with random weights, built from config and
saved as a diffusers folder here (no download). Both sides sample 8 videos of 17x96x96 (latents 16x5x12x12) with 20
steps, CFG 4.5 against an empty-prompt encoding, flow shift 3, from precomputed text encodings
(512 tokens; the pipeline gets them as `prompt_embeds`, fgrpo caches them), latents out (no VAE).

  * pipeline: the transformer from `from_pretrained(..., torch_dtype)` (diffusers keeps Wan's fp32
    modules), `WanPipeline` with its default UniPC scheduler, `output_type="latent"`.
  * fgrpo: the trainer's model path (`prepare_on_meta` + `materialize`: storage dtypes, FSDP2 with
    the precision policy, `parallelism.compile` regional compilation), a Flash-GRPO rollout
    (`fgrpo.trainer.rollout.sample`, one SDE step per video, CFG batched) inside what the
    trainer's `Policy.rollout()` enters: weights kept gathered (`parallelism.rollout_unsharded`)
    and the text side computed once per rollout (fgrpo.models.wan.cross_attention_cache). Each
    can be switched off (--no-compile, --no-unsharded, --no-text-cache) to see its share.

Rounds alternate fgrpo, pipeline, fgrpo, ... after one warm-up each (compilation happens there);
each round's ratio fgrpo/pipeline is printed and the median is the result. Goal: <= 0.85.
A benchmark, not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from cpu_model import TRANSFORMER as MODEL  # noqa: E402
from cpu_model import parameter_count, save_cpu_model  # noqa: E402


def fgrpo_sampler(folder: Path, args):
    """The trainer's model on a one-process group, and a function that runs one rollout."""
    from diffusers import WanTransformer3DModel

    from fgrpo.algorithm import wan_sigmas
    from fgrpo.distributed.parallel_dims import ParallelDims
    from fgrpo.distributed.precision import PrecisionPolicy
    from fgrpo.distributed.process_group import init_distributed
    from fgrpo.distributed.unsharded import unsharded_weights
    from fgrpo.models.wan.cross_attention_cache import cached_text_projections
    from fgrpo.models.wan.sharded_loading import build_on_meta, materialize, prepare_on_meta
    from fgrpo.trainer.rollout import NoiseConfig, sample, video_generators

    device = init_distributed()
    dims = ParallelDims.from_config(1, -1, 1, 1)
    dims.build_mesh(device.type)
    precision = PrecisionPolicy.from_name(args.dtype)
    meta = cast(WanTransformer3DModel, build_on_meta(folder))  # from_config types a tuple too
    transformer = prepare_on_meta(meta, dims, precision, None, False, compile=args.compile)
    materialize(transformer, folder, device)
    transformer.eval()
    sigmas = wan_sigmas(args.steps, args.flow_shift)
    mask = torch.zeros(args.videos, args.steps, dtype=torch.bool)
    mask[:, args.steps // 2] = True  # Flash-GRPO: one SDE step per video
    noise = NoiseConfig("wan", 0.7)

    def run(latents, context, neg):
        gens = video_generators(list(range(args.videos)))
        with (
            torch.no_grad(),
            unsharded_weights(transformer, enabled=args.unsharded),
            cached_text_projections(transformer, enabled=args.text_cache),
        ):
            finals, _ = sample(
                transformer, latents, context, neg, sigmas, mask, noise, args.cfg, gens, args.videos, precision.compute
            )
        return finals

    run.transformer = transformer  # pyright: ignore[reportFunctionMemberAccess]  # for rollout_peak.py
    return run


def pipeline_sampler(folder: Path, args):
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    dtype = getattr(torch, args.dtype)
    transformer = WanTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=dtype).eval()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=args.flow_shift
    )
    # diffusers types every component as required and the scheduler as FlowMatchEuler; a latent-only
    # run from embeddings needs no tokenizer, text encoder or VAE, and Wan's own scheduler is UniPC.
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, transformer=transformer)  # pyright: ignore[reportArgumentType]
    pipe.set_progress_bar_config(disable=True)

    def run(latents, context, neg):
        return pipe(
            prompt_embeds=context.to(dtype),
            negative_prompt_embeds=neg.to(dtype),
            latents=latents.clone(),
            height=args.size,
            width=args.size,
            num_frames=args.frames,
            num_inference_steps=args.steps,
            guidance_scale=args.cfg,
            output_type="latent",
            return_dict=False,
        )[0]

    return run


def timed(fn, *inputs) -> float:
    t0 = time.perf_counter()
    fn(*inputs)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per side, alternating")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fgrpo side: parallelism.compile (regional compilation)",
    )
    p.add_argument(
        "--unsharded",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fgrpo side: parallelism.rollout_unsharded (weights gathered once per rollout)",
    )
    p.add_argument(
        "--text-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fgrpo side: text projection and cross-attention keys/values once per rollout",
    )
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.5)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", type=int, default=96, help="height = width in pixels")
    p.add_argument("--flow-shift", type=float, default=3.0)
    p.add_argument("--text-tokens", type=int, default=512)
    args = p.parse_args()

    from fgrpo.models.wan import latent_shape

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_cpu_model(Path(tmp) / "model", seed=0)
        ours, theirs = fgrpo_sampler(folder, args), pipeline_sampler(folder, args)
        gen = torch.Generator().manual_seed(0)
        latents = torch.randn(args.videos, *latent_shape(args.frames, args.size, args.size), generator=gen)
        context = torch.randn(args.videos, args.text_tokens, MODEL["text_dim"], generator=gen)
        neg = torch.randn(1, args.text_tokens, MODEL["text_dim"], generator=gen).expand(args.videos, -1, -1)
        inputs = (latents, context, neg)
        print(
            f"model: Wan architecture, {MODEL['num_layers']} blocks, width "
            f"{MODEL['num_attention_heads'] * MODEL['attention_head_dim']}, "
            f"{parameter_count() / 1e6:.2f} M parameters, "
            f"{args.dtype}; {args.videos} videos {args.frames}x{args.size}x{args.size}, {args.steps} steps, "
            f"CFG {args.cfg}; fgrpo compile={args.compile} rollout_unsharded={args.unsharded} "
            f"text_cache={args.text_cache}; "
            f"{torch.get_num_threads()} threads",
            flush=True,
        )
        warm = timed(ours, *inputs), timed(theirs, *inputs)
        print(f"warm-up: fgrpo {warm[0]:.2f} s (compilation included), pipeline {warm[1]:.2f} s", flush=True)
        ratios = []
        for r in range(args.rounds):
            a, b = timed(ours, *inputs), timed(theirs, *inputs)
            ratios.append(a / b)
            print(f"round {r + 1}: fgrpo {a:.2f} s  pipeline {b:.2f} s  ratio {a / b:.3f}", flush=True)
        med = statistics.median(ratios)
        print(f"median fgrpo/pipeline: {med:.3f} (goal <= 0.85: {'PASS' if med <= 0.85 else 'FAIL'})")


if __name__ == "__main__":
    main()
