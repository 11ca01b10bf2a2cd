"""The real Wan2.1-T2V-1.3B architecture (30 layers, width 1536, 12 heads, text_dim 4096; random
weights, a 1-layer UMT5 of width 4096, the small VAE) trains one Flash-GRPO step in bf16 with LoRA
on the paper's target modules, on 4 processes (dp_shard=2 x tp=2: FSDP2 and tensor parallel at
once; one process is what every tiny-model test runs, and the suite's 45 minutes are spent where
the real shapes matter), through the same
`fgrpo launch` a user runs; the result exports to a diffusers folder that `WanPipeline` loads and
samples from. A tiny video (5 frames at 64x64: 32 tokens) keeps it to minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
from typing import cast

import pytest
import torch

from tests.conftest import REPO, run_fgrpo
from tests.helpers.runs import train_metrics

PRESET = "wan2.1-t2v-1.3b"
# The paper recipe with a tiny video, one prompt group, 2 sampling steps and a programmatic reward
# (HPSv3's 7B weights do not exist here); LoRA r16/a32 on to_q, to_k, to_v, to_out.0 as the paper.
ARGS = [
    "--rollout.frames",
    "5",
    "--rollout.height",
    "64",
    "--rollout.width",
    "64",
    "--rollout.steps",
    "2",
    "--rollout.ode-steps",  # the recipe's sub-grid (6 of 20 steps) at 2 steps: 1
    "1",
    "--rollout.group-size",
    "2",
    "--rollout.prompts-per-step",
    "2",
    "--rollout.micro-batch",
    "1",
    "--timesteps.window",
    "0",
    "1",
    "--model.max-text-tokens",
    "32",
    "--optim.max-steps",
    "1",
    "--rewards.0.name",
    "brightness",
    "--rewards.0.frame-aggregation",
    "mean",
    "--prompts.heldout",
    "0",
    "--checkpoint.interval",
    "1",
]


@pytest.fixture(scope="module")
def real_model_dir(tmp_path_factory):
    from fgrpo.models.wan.random_build import save_random_model

    return save_random_model(tmp_path_factory.mktemp("real") / "wan-1.3b", PRESET)


def launch(model_dir, runs, procs, *extra):
    res = run_fgrpo(
        "launch",
        str(REPO / "recipes" / "wan1_3b.py"),
        "--model.path",
        str(model_dir),
        "--logging.runs-dir",
        str(runs),
        "--logging.run-name",
        "run",
        "--launch.procs-per-node",
        str(procs),
        *ARGS,
        *extra,
        cwd=runs.parent,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return runs / "run"


@pytest.mark.parametrize(
    "procs,layout",
    [(4, ["--parallelism.dp-shard", "2", "--parallelism.tp", "2"])],
    ids=["dp_shard=2,tp=2"],
)
def test_real_1_3b_step_export_and_pipeline(real_model_dir, tmp_path, procs, layout):
    from diffusers import WanPipeline, WanTransformer3DModel
    from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

    from fgrpo.export import export_run

    run = launch(real_model_dir, tmp_path / "runs", procs, *layout)
    recipe = json.loads((run / "recipe.json").read_text())
    assert recipe["model"]["preset"] == PRESET and recipe["model"]["dtype"] == "bfloat16"
    assert recipe["lora"]["enabled"] and recipe["lora"]["rank"] == 16
    (m,) = train_metrics(run)
    assert torch.isfinite(torch.tensor([m["loss"], m["grad_norm"], m["reward_mean"]])).all()
    assert m["grad_norm"] > 0 and m["ratio_dev_max"] == 0.0 and m["clip_frac"] == 0.0

    out = export_run(run, tmp_path / "export", weights="model")
    transformer = WanTransformer3DModel.from_pretrained(out / "transformer", torch_dtype=torch.bfloat16)
    config = transformer.config
    assert config["num_layers"] == 30 and config["num_attention_heads"] == 12
    assert config["attention_head_dim"] == 128 and config["text_dim"] == 4096
    pipe = WanPipeline.from_pretrained(
        real_model_dir, transformer=transformer, torch_dtype=torch.bfloat16, local_files_only=True
    )
    output = pipe("a red kite over a beach", height=64, width=64, num_frames=5, num_inference_steps=1, output_type="pt")
    video = cast(WanPipelineOutput, output).frames  # return_dict defaults to True
    assert video.shape[1:] == (5, 3, 64, 64) and torch.isfinite(video.float()).all()
    pipe.load_lora_weights(str(out / "lora"))  # the adapter on its own loads too
