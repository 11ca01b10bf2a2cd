"""`fgrpo plan` of the Wan2.2 and image-to-video recipes, as a user runs it (a small video: a real
size takes minutes on 2 cores; the architecture, layout and parts are the real ones).

Each plan costs about 90 s of the suite, so two recipes stand for the five: TI2V-5B (Wan2.2's VAE,
one dense transformer) and I2V-A14B (two experts and an image condition). The other three differ from
these only in numbers the preset tests check (tests/test_wan_presets.py)."""

from __future__ import annotations

import json

import pytest

from fgrpo.models.wan.presets import PRESETS
from tests.conftest import run_fgrpo
from tests.test_wan_presets import counted_params

SMALL = ("--rollout.frames", "5", "--rollout.height", "64", "--rollout.width", "64")
RECIPES = {"wan2_2_ti2v_5b": "wan2.2-ti2v-5b", "wan2_2_i2v_a14b": "wan2.2-i2v-a14b"}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_plan_runs_for_the_recipe_on_8_gpus(name):
    res = run_fgrpo("plan", f"recipes/{name}.py", "--gpus", "8", "--json", *SMALL, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    plan = json.loads(res.stdout)
    preset = PRESETS[RECIPES[name]]
    assert plan["model"] == f"preset {RECIPES[name]}"
    assert plan["layout"]["dp_shard"] * plan["layout"]["sp"] == 8  # FSDP2 shards over dp_shard x sp
    image = ["image encoding"] if preset.image_to_video else []  # start-up, after the text's
    names = ["text encoding", *image, "rollout", "VAE decode", "training", "evaluation"]
    assert [p["name"] for p in plan["phases"]] == names
    assert plan["sizes"]["latent"] == list(preset.latent_shape(5, 64, 64))
    assert plan["flops_per_rank"]["training"] > 0
    rollout = plan["phases"][names.index("rollout")]["parts"]
    frozen = counted_params(RECIPES[name]) * 2 / 8  # bf16, sharded over 8 (Wan's few fp32 modules: more)
    if preset.experts > 1:
        assert frozen <= rollout["other expert"] < 1.01 * frozen, rollout
        assert any(n.startswith("experts: 2 ") for n in plan["notes"])
    else:
        assert "other expert" not in rollout
    assert frozen <= rollout["weights"]  # frozen shards of the trained expert (+ LoRA masters)
    assert any(n.startswith("image-to-video: ") for n in plan["notes"]) == preset.image_to_video
