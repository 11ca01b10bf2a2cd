"""All-gathers per rollout with FSDP2 resharding after every forward (parallelism.rollout_unsharded
off) and with the weights kept gathered for the whole rollout (on).

    python benchmarks/rollout_allgather.py [--preset tiny] [--layers N] [--steps 20] [--videos 2] [--micro-batch 1]

Two gloo processes on CPU, dp_shard=2: a Wan transformer of the preset's architecture (random
weights, LoRA rank 4 on the attention projections as the recipes train it; `--layers` overrides
the preset's depth so that a wide preset fits a CPU), stored and computed as the bf16 precision
policy says, parallelised by the trainer's own `parallelize_wan` (FSDP2 per block, per fp32-kept
module, root). Each rank samples `--videos` videos of `--steps` steps with CFG (one batched
forward per step and micro-batch) through `fgrpo.trainer.rollout.sample`, starting from sharded
weights as a training step's rollout does. Counted by fgrpo.distributed.comm_meter on rank 0:
all-gather calls and the bytes they produce (the gathered buffers, all ranks' pieces included).
The rollouts of both modes are checked bitwise equal. Seconds are wall time of one rollout on
this machine's CPUs (gloo over loopback), indicative only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

WORLD = 2
MIB = 2**20


def _model(args):
    from diffusers import WanTransformer3DModel

    from fgrpo.models.wan.lora import add_lora
    from fgrpo.models.wan.presets import PRESETS

    preset = PRESETS[args.preset]
    if args.layers:
        preset = dataclasses.replace(preset, num_layers=args.layers)
    torch.manual_seed(0)
    model = WanTransformer3DModel(**preset.transformer_config()).float()
    add_lora(model, 4, 8.0, ("to_q", "to_k", "to_v", "to_out.0"))
    return model, preset


def _rollout(model, args, preset, steps: int):
    from fgrpo.algorithm import wan_sigmas
    from fgrpo.trainer.rollout import NoiseConfig, initial_latents, sample, video_generators

    g = torch.Generator().manual_seed(5)
    n = args.videos
    ctx = torch.randn(n, args.text_tokens, preset.text_dim, generator=g)
    neg = torch.randn(n, args.text_tokens, preset.text_dim, generator=g)
    gens = video_generators([11 + v for v in range(n)])
    mask = torch.zeros(n, steps, dtype=torch.bool)
    mask[:, steps // 2] = True  # one SDE step per video (Flash-GRPO)
    return sample(
        model,
        initial_latents((16, args.latent_frames, args.latent_size, args.latent_size), gens),
        ctx,
        neg,
        wan_sigmas(steps, 3.0),
        mask,
        NoiseConfig("wan", 0.7),
        4.5,
        gens,
        args.micro_batch,
        torch.bfloat16,
    )


def _worker(rank: int, port: int, args, out: str) -> None:
    import warnings

    from fgrpo.distributed.comm_meter import AllGatherMeter
    from fgrpo.distributed.parallel_dims import ParallelDims
    from fgrpo.distributed.precision import PrecisionPolicy
    from fgrpo.distributed.unsharded import fsdp_modules, gathered_weight_bytes, unsharded_weights
    from fgrpo.models.wan.parallelize import parallelize_wan

    # As the trainer: FSDP2 warns that Wan's output is a view; velocity() never modifies it in place.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // WORLD))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=600))
    try:
        dims = ParallelDims.from_config(1, WORLD, 1, WORLD)
        dims.build_mesh("cpu")
        model, preset = _model(args)
        policy = PrecisionPolicy.from_name("bfloat16")
        policy.apply_storage(model)
        parallelize_wan(model, dims, policy, activation_checkpointing=True)
        model.eval()
        _rollout(model, args, preset, steps=1)  # warm-up (lazy init, first allocations)
        rows, outputs = {}, {}
        for mode in ("off", "on"):
            model.reshard()  # sharded at the start, as after a training step's backward
            dist.barrier()
            t0 = time.perf_counter()
            with AllGatherMeter() as meter, unsharded_weights(model, enabled=mode == "on"):
                outputs[mode] = _rollout(model, args, preset, args.steps)
            rows[mode] = {"count": meter.count, "bytes": meter.bytes, "seconds": time.perf_counter() - t0}
        (f_off, t_off), (f_on, t_on) = outputs["off"], outputs["on"]
        same = torch.equal(f_off, f_on) and torch.equal(t_off.log_prob, t_on.log_prob)
        if rank == 0:
            groups = sum(len(m._get_fsdp_state()._fsdp_param_groups) for m in fsdp_modules(model))
            Path(out).write_text(
                json.dumps(
                    {
                        "rows": rows,
                        "identical": same,
                        "groups": groups,
                        "params": sum(p.numel() for p in model.parameters()),
                        "gathered": gathered_weight_bytes(model),
                        "gathered_padded": gathered_weight_bytes(model, padded=True),
                        "forwards": args.steps * -(-args.videos // args.micro_batch),
                        "layers": preset.num_layers,
                    }
                )
            )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument(
        "--preset", default="tiny", help="Wan preset (fgrpo.models.wan.presets): tiny, wan2.1-t2v-1.3b, ..."
    )
    ap.add_argument("--layers", type=int, default=0, help="override the preset's number of blocks (0: the preset's)")
    ap.add_argument("--steps", type=int, default=20, help="denoising steps of the rollout (N)")
    ap.add_argument("--videos", type=int, default=2, help="videos per rank")
    ap.add_argument("--micro-batch", type=int, default=1, help="videos per forward")
    ap.add_argument("--latent-frames", type=int, default=2)
    ap.add_argument("--latent-size", type=int, default=4, help="latent height = width (even)")
    ap.add_argument("--text-tokens", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.start_processes(_worker, args=(_free_port(), args, out), nprocs=WORLD, start_method="spawn")
        r = json.loads(Path(out).read_text())
    rows = r["rows"]
    print(
        f"{args.preset} ({r['layers']} blocks, {r['params'] / 1e6:.2f}M parameters), dp_shard={WORLD}, bf16, "
        f"LoRA; {args.videos} videos x {args.steps} steps with CFG, micro-batch {args.micro_batch}: "
        f"{r['forwards']} forwards, {r['groups']} FSDP groups"
    )
    print(
        f"gathered weights per rank: {r['gathered'] / MIB:.3f} MiB ({r['gathered_padded'] / MIB:.3f} MiB "
        f"all-gather buffers, dim 0 padded)"
    )
    print()
    print(f"{'rollout_unsharded':<18}{'all-gathers':>12}{'MiB gathered':>14}{'seconds':>10}")
    for mode in ("off", "on"):
        row = rows[mode]
        print(f"{mode:<18}{row['count']:>12}{row['bytes'] / MIB:>14.3f}{row['seconds']:>10.2f}")
    off, on = rows["off"], rows["on"]
    print(
        f"{'off / on':<18}{off['count'] / on['count']:>11.1f}x{off['bytes'] / on['bytes']:>13.1f}x"
        f"{off['seconds'] / on['seconds']:>9.2f}x"
    )
    print(f"latents and log-probs bitwise identical: {r['identical']}")


if __name__ == "__main__":
    main()
