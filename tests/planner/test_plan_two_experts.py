"""`fgrpo plan` of the T2V-A14B recipe with `lora.experts=both`: the second expert planned as trained
(its LoRA weights, gradients, AdamW moments and EMA resident beside the first's) instead of frozen;
and with `rollout.cfg_scale_2 1`, its low-noise steps planned as one pass each.

Cheap: the recipe's architecture, mesh (8 GPUs: sp 4 x dp_shard 2) and LoRA at 2 of its 40 blocks
(and a 2-layer UMT5), on a 5-frame 64 x 64 video; every per-block part scales with the blocks alike,
so the comparison between the two settings is the recipe's."""

from __future__ import annotations

import dataclasses

import pytest

from fgrpo.planner import Gpu, plan
from fgrpo.planner.spec import ModelSpec
from fgrpo.recipe.io import load_recipe_file
from tests.conftest import REPO

GIB = 2**30


def _recipe(experts: str):
    recipe = load_recipe_file(REPO / "recipes" / "wan2_2_t2v_a14b.py")
    rollout = dataclasses.replace(recipe.rollout, frames=5, height=64, width=64)
    # both: a window that reaches both experts (shift 12: steps 0-7 high noise, 8-11 low)
    window = recipe.timesteps.window if experts == "high" else (0, recipe.rollout.steps)
    return dataclasses.replace(
        recipe,
        rollout=rollout,
        timesteps=dataclasses.replace(recipe.timesteps, window=window),
        lora=dataclasses.replace(recipe.lora, experts=experts),
    )


@pytest.fixture(scope="module")
def plans():
    full = ModelSpec.from_preset("wan2.2-t2v-a14b")
    spec = dataclasses.replace(
        full,
        transformer={**full.transformer, "num_layers": 2},
        text_encoder={**full.text_encoder, "num_layers": 2},
    )
    return {e: plan(_recipe(e), 8, Gpu(), spec=spec) for e in ("high", "both")}


def test_both_plans_the_second_experts_trained_state(plans):
    high, both = plans["high"], plans["both"]
    for name in ("rollout", "VAE decode", "training", "evaluation"):
        h, b = high.phase(name).parts, both.phase(name).parts
        assert "other expert" in h and "other expert" not in b, name  # trained now, not frozen
        # One expert's trainable state per rank: its LoRA weights (fp32), as its EMA shadow.
        lora = h["EMA"]
        assert lora > 0 and h["optimizer"] >= 2 * lora  # AdamW: two moments (and a step count) per weight
        assert b["EMA"] == 2 * lora, name  # each expert's shadow
        assert b["optimizer"] == 2 * h["optimizer"], name  # each expert's moments
        # The second expert's frozen base now among the trained weights, with its LoRA masters and its
        # buffers (the rotary tables, 1 MiB, which the frozen expert's part did not count).
        buffers = b["weights"] - h["weights"] - h["other expert"] - lora
        assert 0 <= buffers <= 2**21, (name, buffers)
        # Resident in every phase: its LoRA weights, two moments and EMA (4 x its LoRA); in training its
        # gradients, in evaluation the EMA swap's backup of its trained weights.
        extra = both.phase(name).peak - high.phase(name).peak
        grads = lora if name == "training" else 0
        backup = lora if name == "evaluation" else 0
        print(f"{name}: both - high = {extra / 2**20:.2f} MiB, the second expert's LoRA {lora / 2**20:.2f} MiB")
        assert extra == pytest.approx(4 * lora + grads + backup + buffers, rel=0.01), (name, extra / lora)
        # One expert gathered and running at a time: its gathered weights and activations, as with high
        # (the second expert's gradients at the training peak, zero-filled by the AdamW step outside FSDP2's
        # hooks, are counted among the temporaries).
        assert b["gathered"] == h["gathered"], name
        assert b["activations"] + b["grads"] == pytest.approx(h["activations"] + h["grads"] + grads, rel=0.01), name
        assert b["batch"] == h["batch"] + backup, name  # the evaluation's backup is registered with the batch
    note = next(n for n in both.notes if n.startswith("experts: 2 "))
    assert "both: each is planned as trained" in note and "not planned" not in note


def test_steps_at_guidance_scale_1_are_planned_as_one_pass(plans):
    """rollout.cfg_scale_2 1: the low-noise expert's steps run the conditional pass alone (fgrpo.planner.guidance).
    On the recipe's grid (12 steps, shift 12) steps 8-11 are the low-noise expert's: 8 x 2 + 4 x 1 = 20
    passes per video instead of 24; the training window (0, 6) holds high-noise steps only (unchanged).
    Re-planned on the same fake run: the phases measure a guided forward either way (cfg_scale 4)."""
    from fgrpo.planner.guidance import step_passes

    high = plans["high"]
    recipe = _recipe("high")
    unguided_low = dataclasses.replace(recipe, rollout=dataclasses.replace(recipe.rollout, cfg_scale_2=1.0))
    assert step_passes(unguided_low, 12) == [2] * 8 + [1] * 4
    low1 = plan(unguided_low, 8, Gpu(), run=high.run)
    f = high.phase("rollout").flops  # one guided forward (2 passes): the first step's, a later one's
    videos, mb = high.sizes.videos, high.sizes.micro_batch
    assert high.flops["rollout"] == (f["first"] + f["later"] * 11) * videos // mb
    assert low1.flops["rollout"] == (f["first"] + f["later"] * 11 - f["later"] // 2 * 4) * videos // mb
    assert low1.flops["training"] == high.flops["training"]
    assert low1.flops["evaluation"] < high.flops["evaluation"]  # the 50-step evaluation's low-noise steps too
    assert [p.peak for p in low1.phases] == [p.peak for p in high.phases]  # memory: a guided step's
