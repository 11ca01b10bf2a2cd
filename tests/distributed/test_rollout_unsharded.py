"""Rollouts without resharding (fgrpo.distributed.unsharded), counted by the all-gather meter
(fgrpo.distributed.comm_meter).

(a) The `parallelism.rollout_unsharded` decision as a pure function.
(b) One spawn of 2 gloo processes: the tiny Wan model (LoRA, bf16 compute) FSDP2-sharded over
dp_shard=2, a rollout of 2 videos x 4 steps with CFG, micro-batch 1 (8 forwards): resharding as
usual, then inside `unsharded_weights`. The latents and log-probs must be bitwise equal; the
unsharded rollout all-gathers each FSDP group exactly once (its bytes: the padded gathered
weights), the plain one every non-root group once per forward (FSDP2's root keeps its weights
after forward anyway). Then: the settings are restored (a training forward + backward gathers
what it gathered before), and an exception raised mid-forward inside the block leaves the model
sharded and the next rollout unchanged.
"""

from __future__ import annotations

import json
import os
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import torch
import torch.distributed as dist

from fgrpo.distributed.unsharded import SAFE_FRACTION, fits_unsharded, rollout_unsharded_decision
from tests.helpers.spawn import spawn_ranks

GIB = 2**30
WORLD = 2
STEPS, VIDEOS, MICRO_BATCH = 4, 2, 1


# ---------------------------------------------------------------- (a) the decision


@pytest.mark.parametrize(
    "setting,device,gathered,free,expected",
    [
        ("on", "cuda", 100 * GIB, 1 * GIB, True),  # on: whatever the memory
        ("off", "cpu", 1, 100 * GIB, False),
        ("auto", "cpu", 100 * GIB, None, True),  # CPU: always
        ("auto", "cuda", 28 * GIB, 70 * GIB, True),  # 14B bf16 gathered, an 80 GB GPU after the shards
        ("auto", "cuda", 28 * GIB, 50 * GIB, False),  # more than half the free memory
        ("auto", "cuda", 25 * GIB, 50 * GIB, True),  # exactly half: kept
        ("auto", "cuda", 1, None, False),  # free memory unknown
        ("auto", "mps", 1, 100 * GIB, False),  # other devices: never automatically
    ],
)
def test_decision(setting, device, gathered, free, expected):
    assert rollout_unsharded_decision(setting, device, gathered, free) is expected


def test_fits_is_the_safe_fraction_of_free_memory():
    assert SAFE_FRACTION == 0.5
    assert fits_unsharded(50, 100) and not fits_unsharded(51, 100)
    assert fits_unsharded(0, 0) and not fits_unsharded(1, 0)


def test_decision_refuses_unknown_settings():
    with pytest.raises(ValueError, match="rollout_unsharded"):
        rollout_unsharded_decision(cast(Any, "yes"), "cpu", 0)  # not a Setting, on purpose


def test_policy_takes_the_recipe_setting():
    from dataclasses import fields

    from fgrpo.recipe.config import ParallelismConfig
    from fgrpo.trainer.policy import Policy

    assert ParallelismConfig().rollout_unsharded == "auto"
    assert {f.name: f.default for f in fields(Policy)}["rollout_unsharded"] == "auto"


# ---------------------------------------------------------------- (b) run inside the child processes


def _model():
    from diffusers import WanTransformer3DModel

    from fgrpo.models.wan.lora import add_lora
    from fgrpo.models.wan.presets import PRESETS

    torch.manual_seed(0)
    model = WanTransformer3DModel(**PRESETS["tiny"].transformer_config()).float()
    add_lora(model, 4, 8.0, ("to_q", "to_k", "to_v", "to_out.0"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn_like(p))
    return model


def _rollout(model):
    from fgrpo.algorithm import wan_sigmas
    from fgrpo.trainer.rollout import NoiseConfig, initial_latents, sample, video_generators

    g = torch.Generator().manual_seed(5)
    ctx, neg = torch.randn(VIDEOS, 8, 32, generator=g), torch.randn(VIDEOS, 8, 32, generator=g)
    gens = video_generators([11 + v for v in range(VIDEOS)])
    mask = torch.zeros(VIDEOS, STEPS, dtype=torch.bool)
    mask[0, 1] = mask[1, 2] = True
    return sample(
        model,
        initial_latents((16, 2, 4, 4), gens),
        ctx,
        neg,
        wan_sigmas(STEPS, 1.0),
        mask,
        NoiseConfig("dance-grpo", 1.0),
        2.0,
        gens,
        MICRO_BATCH,
        torch.bfloat16,
    )


def _train_pass(model):
    """A policy-gradient forward + backward, as training runs it."""
    from fgrpo.algorithm import wan_sigmas
    from fgrpo.trainer.rollout import NoiseConfig, transition_log_prob

    _, trans = _rollout(model)
    g = torch.Generator().manual_seed(5)
    ctx, neg = torch.randn(VIDEOS, 8, 32, generator=g), torch.randn(VIDEOS, 8, 32, generator=g)
    model.train()
    out = transition_log_prob(
        model, trans, ctx, neg, wan_sigmas(STEPS, 1.0), NoiseConfig("dance-grpo", 1.0), 2.0, torch.bfloat16
    )
    out.log_prob.sum().backward()
    model.zero_grad(set_to_none=True)
    model.eval()


def _measured(model, fn, unsharded: bool):
    """fn(model) from the all-sharded state, its all-gathers metered (the entry's included)."""
    from fgrpo.distributed.comm_meter import AllGatherMeter
    from fgrpo.distributed.unsharded import unsharded_weights

    model.reshard()  # FSDP2's root keeps its weights after a forward: start every measurement sharded
    with AllGatherMeter() as meter, unsharded_weights(model, enabled=unsharded):
        out = fn(model)
    return out, meter


def _sharded(model) -> bool:
    from torch.distributed.tensor import DTensor

    return all(isinstance(p, DTensor) for p in model.parameters())


def _scenario() -> dict:
    from fgrpo.distributed.comm_meter import AllGatherMeter
    from fgrpo.distributed.parallel_dims import ParallelDims
    from fgrpo.distributed.precision import PrecisionPolicy
    from fgrpo.distributed.unsharded import fsdp_modules, gathered_weight_bytes, unsharded_weights
    from fgrpo.models.wan.parallelize import parallelize_wan

    dims = ParallelDims.from_config(1, WORLD, 1, WORLD)
    dims.build_mesh("cpu")
    model = _model()
    policy = PrecisionPolicy.from_name("bfloat16")
    policy.apply_storage(model)
    parallelize_wan(model, dims, policy, activation_checkpointing=True)
    model.eval()

    _, train_before = _measured(model, _train_pass, unsharded=False)
    (final, trans), plain = _measured(model, _rollout, unsharded=False)
    (final_u, trans_u), kept = _measured(model, _rollout, unsharded=True)
    sharded_after = _sharded(model)
    _, train_after = _measured(model, _train_pass, unsharded=False)
    (final_again, trans_again), plain_again = _measured(model, _rollout, unsharded=False)

    # An exception raised mid-forward (in the second block) inside the block.
    hook = model.blocks[1].register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("boom")))
    try:
        with unsharded_weights(model):
            _rollout(model)
    except RuntimeError as e:
        raised = str(e)
    finally:
        hook.remove()
    sharded_after_error = _sharded(model)
    with AllGatherMeter() as recovered:
        final_r, trans_r = _rollout(model)

    mods = fsdp_modules(model)
    groups = [g for m in mods for g in m._get_fsdp_state()._fsdp_param_groups]
    root = model._get_fsdp_state()._fsdp_param_groups
    root_bytes = sum(fp.padded_sharded_param_size.numel() * WORLD * 2 for g in root for fp in g.fsdp_params)
    return {
        "groups": len(groups),
        "root_groups": len(root),
        "root_bytes": root_bytes,
        "gathered": gathered_weight_bytes(model),
        "gathered_padded": gathered_weight_bytes(model, padded=True),
        "plain": [plain.count, plain.bytes],
        "kept": [kept.count, kept.bytes],
        "plain_again": [plain_again.count, plain_again.bytes],
        "train_before": [train_before.count, train_before.bytes],
        "train_after": [train_after.count, train_after.bytes],
        "ops": sorted(plain.by_op),
        "sharded_after": sharded_after,
        "sharded_after_error": sharded_after_error,
        "raised": raised,
        "recovered": [recovered.count, recovered.bytes],
        "equal": {
            k: torch.equal(a, b)
            for k, a, b in [
                ("latents", final, final_u),
                ("x", trans.x, trans_u.x),
                ("x_next", trans.x_next, trans_u.x_next),
                ("log_prob", trans.log_prob, trans_u.log_prob),
                ("again", final, final_again),
                ("log_prob_again", trans.log_prob, trans_again.log_prob),
                ("after_error", final, final_r),
                ("log_prob_after_error", trans.log_prob, trans_r.log_prob),
            ]
        },
        "log_prob_dtype": str(trans.log_prob.dtype),
        "transitions": len(trans),
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120))
    try:
        result = _scenario()
    except Exception:  # noqa: BLE001 - reported to the parent, which fails the test
        result = {"error": traceback.format_exc()}
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("unsharded")
    results = spawn_ranks(_worker, WORLD, out_dir, "rollout-unsharded", timeout_s=240)
    for r in results:
        assert "error" not in r, r["error"]
    return results


def test_unsharded_rollout_is_bitwise_identical(ranks):
    for r in ranks:
        assert r["transitions"] == 2 and r["log_prob_dtype"] == "torch.float32"
        assert all(r["equal"].values()), r["equal"]


def test_unsharded_rollout_gathers_each_group_once(ranks):
    forwards = STEPS * VIDEOS // MICRO_BATCH
    for r in ranks:
        print(
            f"\nall-gathers per rollout: plain {r['plain']}, unsharded {r['kept']} (count, bytes); "
            f"{r['groups']} groups, gathered weights {r['gathered']} B ({r['gathered_padded']} B padded)"
        )
        assert r["ops"] == ["c10d::_allgather_base_"]  # FSDP2's unshard, seen by the meter
        assert r["kept"] == [r["groups"], r["gathered_padded"]]
        # The root (one group) keeps its weights after forward: gathered once either way.
        assert r["root_groups"] == 1
        assert r["plain"] == [
            forwards * (r["groups"] - 1) + 1,
            forwards * (r["gathered_padded"] - r["root_bytes"]) + r["root_bytes"],
        ]
        assert r["gathered"] <= r["gathered_padded"] < 1.01 * r["gathered"]


def test_settings_are_restored(ranks):
    for r in ranks:
        assert r["sharded_after"]
        assert r["plain_again"] == r["plain"]
        assert r["train_after"] == r["train_before"]  # the root still keeps its weights for backward


def test_exception_mid_forward_reshards(ranks):
    for r in ranks:
        assert r["raised"] == "boom" and r["sharded_after_error"]
        assert r["recovered"] == r["plain"]


def test_planner_line():
    from fgrpo.planner.phases import Phase
    from fgrpo.planner.plan import rollout_unsharded_note

    # 80 GiB GPU; the rollout holds 20 GiB besides one gathered block (1) and activations (5).
    rollout = Phase("rollout", 26 * GIB, {"weights": 20 * GIB, "gathered": 1 * GIB, "activations": 5 * GIB})
    line = rollout_unsharded_note("auto", 28 * GIB, rollout, 80 * GIB, "gpu")
    assert line == (
        "rollout weights gathered: 28.00 GiB per GPU; rollout_unsharded=auto keeps them for the whole "
        "rollout (at most 50% of the ~60.00 GiB free at its start); rollout peak then ~53.00 GiB"
    )
    assert "more than 50% of the ~20.00 GiB free" in rollout_unsharded_note("auto", 28 * GIB, rollout, 40 * GIB, "gpu")
    assert rollout_unsharded_note("off", 28 * GIB, rollout, 80 * GIB, "gpu").endswith("reshards after every block")
    assert "keeps" in rollout_unsharded_note("auto", 28 * GIB, rollout, 1 * GIB, "cpu")
