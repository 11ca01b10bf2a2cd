"""`fgrpo plan` of a Wan2.2 image-to-video recipe, as a user runs it (a small video: a real size
takes minutes on 2 cores; the architecture, layout and parts are the real ones).

Each plan costs about 90 s of the suite, so one recipe stands for the five: I2V-A14B (two experts and
an image condition). TI2V-5B (Wan2.2's VAE, one dense transformer) was dropped to keep the suite
within 45 minutes: its numbers are pinned by tests/test_wan_presets.py and its 8-rank layout by
tests/distributed/test_wan_layouts.py. The other three differ from these two only in numbers the
preset tests check."""

from __future__ import annotations

import json

from fgrpo.models.wan.presets import PRESETS
from tests.conftest import REPO, run_fgrpo
from tests.test_wan_presets import counted_params

SMALL = ("--rollout.frames", "5", "--rollout.height", "64", "--rollout.width", "64")
RECIPE, PRESET = "wan2_2_i2v_a14b", "wan2.2-i2v-a14b"


def test_plan_runs_for_the_i2v_a14b_recipe_on_8_gpus():
    res = run_fgrpo("plan", f"recipes/{RECIPE}.py", "--gpus", "8", "--json", *SMALL, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    plan = json.loads(res.stdout)
    preset = PRESETS[PRESET]
    assert preset.experts == 2 and preset.image_to_video  # what this recipe stands for
    assert plan["model"] == f"preset {PRESET}"
    assert plan["layout"]["dp_shard"] * plan["layout"]["sp"] == 8  # FSDP2 shards over dp_shard x sp
    # image encoding: start-up, after the text's
    names = ["text encoding", "image encoding", "rollout", "VAE decode", "training", "evaluation"]
    assert [p["name"] for p in plan["phases"]] == names
    assert plan["sizes"]["latent"] == list(preset.latent_shape(5, 64, 64))
    assert plan["flops_per_rank"]["training"] > 0
    rollout = plan["phases"][names.index("rollout")]["parts"]
    frozen = counted_params(PRESET) * 2 / 8  # bf16, sharded over 8 (Wan's few fp32 modules: more)
    assert frozen <= rollout["other expert"] < 1.01 * frozen, rollout
    assert any(n.startswith("experts: 2 ") for n in plan["notes"])
    assert frozen <= rollout["weights"]  # frozen shards of the trained expert (+ LoRA masters)
    assert any(n.startswith("image-to-video: ") for n in plan["notes"])
    # The paper recipes need --model.path and the HPSv3 files to launch, not to plan: this recipe
    # sets neither (it stands for tests/planner/test_plan_cli.py's Wan2.1 1.3B plan too, dropped to
    # keep the suite within 45 minutes).
    recipe_text = (REPO / "recipes" / f"{RECIPE}.py").read_text()
    assert 'preset="wan2.2-i2v-a14b", path=None' in recipe_text and 'name="hpsv3", frame' in recipe_text
    hpsv3 = plan["rewards"][0]
    assert hpsv3["name"] == "hpsv3" and 7.7e9 < hpsv3["params"] < 7.8e9  # Qwen2-VL-7B without lm_head + head
    assert rollout["reward model"] == hpsv3["bytes"]
