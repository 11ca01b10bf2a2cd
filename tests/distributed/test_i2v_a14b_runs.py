"""Wan2.2 I2V-A14B trains end to end in fgrpo: the image path and the two experts together, on the
tiny I2V two-expert model (fgrpo/models/wan/tiny_i2v_a14b.py: 36 input channels, no CLIP, `transformer`
for steps 0-2 of the tiny recipe's grid, `transformer_2` for 3-7) in bf16, in 1 process and on
dp_shard=2 x tp=2 (each expert tensor-parallel on its own): launch one step, stop, resume for a
second (on policy), `fgrpo eval`, `fgrpo export`, and the export loaded by diffusers'
`WanImageToVideoPipeline.from_pretrained` with transformer_2 and boundary_ratio, and sampled with an
image. Full fine-tuning (the tiny recipe's), `lora.experts=both`, so each expert's patch embedding
of the condition channels (mask + image latent) trains.

Suite cost: 132 s measured on 2 cores shared with other jobs (load average 3-4): a launch and a
resume per layout (dp_shard=2 x tp=2, 4 processes: 76 s; 1 process: 32 s), eval and export once, on
the one-process run (19 s).
(The folder, and fgrpo's sampler against the pipeline: tests/test_tiny_i2v_a14b.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import run_fgrpo
from tests.helpers.image_prompts import write_image_prompts
from tests.helpers.pipeline_parity import sample_image_to_video
from tests.helpers.runs import (
    EXPERTS,
    assert_resumed_on_policy,
    assert_update_matches,
    checkpoint_state,
    initial_weights,
    runs_by_layout,
    train_metrics,
)

FRAMES, SIZE = 5, 32  # the tiny recipe's videos
LATENT_CHANNELS = 16  # the patch embedding's input channels past these are the image condition's
ARGS = [
    "--model.preset",
    "tiny-i2v-a14b",
    "--model.dtype",
    "bfloat16",
    "--algorithm.clip-range",
    "1e-3",  # the paper's: any on-policy drift would show as clipping
]
LAYOUTS = {
    "1": (1, []),
    # each expert sharded over the tp group on its own (fgrpo.models.wan.experts)
    "dp_shard=2,tp=2": (4, ["--parallelism.dp-shard", "2", "--parallelism.tp", "2"]),
}
HIGH_NOISE_STEPS = 3  # the tiny recipe's grid at boundary 0.7: steps 0-2 high noise (presets.py)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    """6 prompts with their 32 x 32 images: 4 trained (2 per step), 2 held out (BASE_ARGS)."""
    return write_image_prompts(tmp_path_factory.mktemp("i2v-a14b-prompts"), 6, (SIZE, SIZE))


@pytest.fixture(scope="module")
def trained(tiny_i2v_a14b_model_dir, prompts, tmp_path_factory):
    return runs_by_layout(
        tiny_i2v_a14b_model_dir, tmp_path_factory, "i2v-a14b", LAYOUTS, *ARGS, "--prompts.file", str(prompts)
    )


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_launch_stop_resume_trains_both_experts_on_the_image(trained, tiny_i2v_a14b_model_dir, layout):
    run = trained(layout)
    metrics = train_metrics(run)
    assert_resumed_on_policy(metrics)
    assert metrics[1]["ratio_dev_max"] < 1e-3  # after the resume: on-policy to the clip range
    assert (run.parent / ".cache" / "image-conditions").is_dir()
    drawn = [k for m in metrics for k in m["timestep_indices"]]
    assert min(drawn) < HIGH_NOISE_STEPS <= max(drawn), f"steps {drawn} do not reach both experts"
    weights = checkpoint_state(run, 2, "model.")
    assert weights and all(w.dtype == torch.float32 for w in weights.values()), "trained weights are not fp32"
    names = [k.removeprefix("model.") for k in weights]
    start = initial_weights(tiny_i2v_a14b_model_dir, names)
    for expert in EXPERTS:
        mine = [n for n in names if n.split(".", 1)[0] == expert]
        assert len(mine) == len(names) // 2, f"{expert}: not every weight in the checkpoint"
        patch = f"{expert}.patch_embedding.weight"
        assert weights[f"model.{patch}"].shape[1] == 36  # 16 noise + 4 mask + 16 image latent
        condition_side = weights[f"model.{patch}"][:, LATENT_CHANNELS:]
        assert not torch.equal(condition_side, start[patch][:, LATENT_CHANNELS:]), f"{expert}: image side untrained"
    ema = checkpoint_state(run, 2, "ema.")
    assert {k.removeprefix("ema.") for k in ema} == set(names)  # an EMA of each trained expert
    if layout != "1":
        assert_update_matches(run, trained("1"), start, f"I2V-A14B {layout}")


def _experts_of(folder: Path):
    from diffusers import WanTransformer3DModel

    return [WanTransformer3DModel.from_pretrained(folder, subfolder=s, torch_dtype=torch.bfloat16) for s in EXPERTS]


def test_eval_export_and_the_i2v_pipeline_with_two_experts(trained, tiny_i2v_a14b_model_dir, prompts, tmp_path):
    """On the one-process run (exporting a tp-sharded two-expert checkpoint: test_a14b_runs.py)."""
    from diffusers import WanImageToVideoPipeline

    from fgrpo.data.image_prompts import load_image

    run = trained("1")
    res = run_fgrpo("eval", str(run), "--steps", "2", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((run / "eval" / "step-2" / "eval.json").read_text())
    assert summary["step"] == 2 and len(summary["eval_rewards"]) == 2  # the 2 held-out prompts
    assert all(map(torch.isfinite, torch.tensor(summary["eval_rewards"])))

    out = tmp_path / "export"
    res = run_fgrpo("export", str(run), str(out), cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    info = json.loads((out / "export.json").read_text())
    assert (info["step"], info["weights"], info["lora"]) == (2, "ema", None)
    assert info["experts"] == {"boundary_ratio": 0.7, "trained": ["high", "low"]}
    high, low = _experts_of(out)
    ema = checkpoint_state(run, 2, "ema.")
    for expert, model in zip(EXPERTS, (high, low)):
        for n, p in model.state_dict().items():  # the EMA weights, rounded once to the storage dtype
            assert torch.equal(p, ema[f"ema.{expert}.{n}"].to(p.dtype)), n

    image = load_image(prompts.parent / "images" / "0.png")
    text = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(3))  # prompt, negative prompt
    pipe = WanImageToVideoPipeline.from_pretrained(tiny_i2v_a14b_model_dir, transformer=high, transformer_2=low)
    assert pipe.config["boundary_ratio"] == 0.7 and pipe.transformer_2 is low and pipe.image_encoder is None
    video = sample_image_to_video(pipe, image, text, FRAMES, SIZE)
    assert video.shape == (1, FRAMES, 3, SIZE, SIZE) and torch.isfinite(video).all()
    base_high, base_low = _experts_of(tiny_i2v_a14b_model_dir)
    before = WanImageToVideoPipeline.from_pretrained(
        tiny_i2v_a14b_model_dir, transformer=base_high, transformer_2=base_low
    )
    assert not torch.equal(video, sample_image_to_video(before, image, text, FRAMES, SIZE))
