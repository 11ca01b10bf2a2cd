"""Rollouts of two FSDP2 experts gather one expert at a time (fgrpo.models.wan.experts, issue 23
point 2): one spawn of 2 gloo processes, two tiny Wan transformers (different seeds) each sharded
over dp_shard=2 as `WanExperts` (boundary 0.7), a rollout of 2 videos x 4 steps (sigma 0.999, 0.749,
0.4995, 0.25: two steps per expert) with CFG and an SDE step in each expert's range. Inside
`one_gathered`, every forward of one expert finds it unsharded and the other sharded; both are
sharded after the block, also after an exception raised mid-forward; and the latents and log-probs
are bitwise those of the plain (resharding) rollout.

Suite cost: about 20 CPU-seconds (one spawn of 2 processes, four 4-step rollouts of 8-token videos).
"""

from __future__ import annotations

import json
import os
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from tests.helpers.spawn import spawn_ranks
from tests.helpers.wan import wan_blocks

WORLD, STEPS, VIDEOS = 2, 4, 2


def _experts():
    from diffusers import WanTransformer3DModel

    from fgrpo.models.wan.experts import WanExperts
    from fgrpo.models.wan.presets import PRESETS

    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(WanTransformer3DModel(**PRESETS["tiny-a14b"].transformer_config()).float())
    return WanExperts(models[0], models[1], 0.7)


def _rollout(experts):
    from fgrpo.algorithm import wan_sigmas
    from fgrpo.trainer.rollout import NoiseConfig, initial_latents, sample, video_generators

    g = torch.Generator().manual_seed(5)
    ctx, neg = torch.randn(VIDEOS, 8, 32, generator=g), torch.randn(VIDEOS, 8, 32, generator=g)
    gens = video_generators([11 + v for v in range(VIDEOS)])
    mask = torch.zeros(VIDEOS, STEPS, dtype=torch.bool)
    mask[0, 1] = mask[1, 2] = True  # an SDE step at each expert
    final, trans = sample(
        experts,
        initial_latents((16, 2, 4, 4), gens),
        ctx,
        neg,
        wan_sigmas(STEPS, 1.0),
        mask,
        NoiseConfig("dance-grpo", 1.0),
        2.0,
        gens,
        1,
        torch.bfloat16,
    )
    return final, trans.log_prob


def _sharded(module) -> bool:
    from torch.distributed.tensor import DTensor

    return all(isinstance(p, DTensor) for p in module.parameters())


def _scenario() -> dict:
    from fgrpo.distributed.parallel_dims import ParallelDims
    from fgrpo.distributed.precision import PrecisionPolicy
    from fgrpo.models.wan.parallelize import parallelize_wan

    dims = ParallelDims.from_config(1, WORLD, 1, WORLD)
    dims.build_mesh("cpu")
    experts = _experts()
    policy = PrecisionPolicy.from_name("bfloat16")
    for expert in experts.experts:
        policy.apply_storage(expert)
        parallelize_wan(expert, dims, policy, activation_checkpointing=False)
    experts.eval()
    seen: list[list] = []  # per forward: [expert, it unsharded, the other sharded]
    for e, expert in enumerate(experts.experts):
        other = experts.experts[1 - e]
        expert.register_forward_pre_hook(
            lambda *_, e=e, me=expert, o=other: seen.append([e, not _sharded(me), _sharded(o)])
        )

    plain_final, plain_lp = _rollout(experts)
    plain_seen, seen[:] = list(seen), []
    with experts.one_gathered():
        final, lp = _rollout(experts)
    gathered_seen = list(seen)
    sharded_after = [_sharded(x) for x in experts.experts]
    hook = wan_blocks(experts.transformer_2)[1].register_forward_pre_hook(
        lambda *_: (_ for _ in ()).throw(RuntimeError("boom"))
    )
    raised = ""
    try:
        with experts.one_gathered():
            _rollout(experts)
    except RuntimeError as err:
        raised = str(err)
    finally:
        hook.remove()
    return {
        "plain_experts": [s[0] for s in plain_seen],
        "gathered": gathered_seen,
        "bitwise": bool(torch.equal(final, plain_final) and torch.equal(lp, plain_lp)),
        "sharded_after": sharded_after,
        "raised": raised,
        "sharded_after_error": [_sharded(x) for x in experts.experts],
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120))
    try:
        result = _scenario()
    except Exception:
        result = {"error": traceback.format_exc()}
    finally:
        dist.destroy_process_group()
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))


def test_rollout_gathers_one_expert_at_a_time(tmp_path):
    results = spawn_ranks(_worker, WORLD, tmp_path, "two-expert gather")
    for r in results:
        assert "error" not in r, r.get("error")
        # 2 videos, micro-batch 1, 4 steps: high, high, low, low for each video
        assert r["plain_experts"] == [0, 0, 1, 1] * VIDEOS
        assert [s[0] for s in r["gathered"]] == r["plain_experts"]
        assert all(unsharded and other_sharded for _, unsharded, other_sharded in r["gathered"]), r["gathered"]
        assert r["bitwise"], "gathering one expert at a time changed the rollout"
        assert r["sharded_after"] == [True, True]
        assert r["raised"] == "boom" and r["sharded_after_error"] == [True, True]
