"""Wan2.2-TI2V trains end to end in fgrpo (issue 23 points 3 and 6), on the tiny TI2V
architecture (fgrpo/models/wan/tiny_ti2v.py: Wan2.2's 16x residual VAE, 24 latent channels,
expand_timesteps in its pipeline config) in bf16, in 1 process and on dp_shard=2 x tp=2:
launch one step, stop, resume for a second, `fgrpo eval`, `fgrpo export`, and the export loaded by
diffusers' `WanPipeline.from_pretrained` (expand_timesteps=True, as Wan2.2-TI2V-5B-Diffusers) and
sampled. Full fine-tuning (the tiny recipe's), so every parameter of the architecture trains. Its
text+image mode (a JSONL with an image per prompt) in 1 process: launch, stop, resume on policy, eval.

Suite cost: about 100 CPU-seconds (two launches per layout, the second resuming; eval and export),
plus about 40 for the text+image run.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_fgrpo
from tests.helpers.image_prompts import write_image_prompts
from tests.helpers.runs import (
    assert_resumed_on_policy,
    assert_update_matches,
    checkpoint_state,
    initial_weights,
    launch_stop_and_resume,
    runs_by_layout,
    train_metrics,
)

FRAMES, SIZE = 5, 64  # the tiny recipe's 5 frames; 64 = 2 x the 16x VAE's patch multiple of 32
TI2V_ARGS = [
    "--model.preset",
    "tiny-ti2v",
    "--model.dtype",
    "bfloat16",
    "--rollout.height",
    str(SIZE),
    "--rollout.width",
    str(SIZE),
    "--algorithm.clip-range",
    "1e-3",  # the paper's: any on-policy drift would show as clipping
]
LAYOUTS = {"1": (1, []), "dp_shard=2,tp=2": (4, ["--parallelism.dp-shard", "2", "--parallelism.tp", "2"])}


@pytest.fixture(scope="module")
def trained(tiny_ti2v_model_dir, tmp_path_factory):
    return runs_by_layout(tiny_ti2v_model_dir, tmp_path_factory, "ti2v", LAYOUTS, *TI2V_ARGS)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_launch_stop_resume(trained, tiny_ti2v_model_dir, layout):
    run = trained(layout)
    metrics = train_metrics(run)
    assert_resumed_on_policy(metrics)
    weights = checkpoint_state(run, 2, "model.")
    assert weights and all(w.dtype == torch.float32 for w in weights.values()), "trained weights are not fp32"
    names = [k.removeprefix("model.") for k in weights]
    assert any(n.startswith("patch_embedding.") for n in names) and any(n.startswith("proj_out.") for n in names)
    start = initial_weights(tiny_ti2v_model_dir, names)
    assert start.keys() == set(names)
    assert any(not torch.equal(weights[f"model.{k}"], start[k]) for k in start), "no trained weight changed"
    if layout != "1":
        assert_update_matches(run, trained("1"), start, f"TI2V {layout}")


def _sample(pipe, seed: int = 0) -> torch.Tensor:
    from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

    out = pipe(
        "a red ball",
        height=SIZE,
        width=SIZE,
        num_frames=FRAMES,
        num_inference_steps=2,
        max_sequence_length=16,
        output_type="pt",
        generator=torch.Generator().manual_seed(seed),
    )
    assert isinstance(out, WanPipelineOutput)
    return out.frames


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_eval_export_and_diffusers_pipeline(trained, tiny_ti2v_model_dir, tmp_path, layout):
    from diffusers import WanPipeline, WanTransformer3DModel

    run = trained(layout)
    res = run_fgrpo("eval", str(run), "--steps", "2", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((run / "eval" / "step-2" / "eval.json").read_text())
    assert summary["step"] == 2 and len(summary["eval_rewards"]) == 2  # the 2 held-out prompts
    assert all(map(torch.isfinite, torch.tensor(summary["eval_rewards"])))
    assert (run / "eval" / "step-2" / "samples" / "videos.mp4").is_file()

    out = tmp_path / "export"
    res = run_fgrpo("export", str(run), str(out), cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    info = json.loads((out / "export.json").read_text())
    assert (info["step"], info["weights"], info["lora"]) == (2, "ema", None)
    merged = WanTransformer3DModel.from_pretrained(out, subfolder="transformer", torch_dtype=torch.bfloat16)
    ema = checkpoint_state(run, 2, "ema.")
    state = merged.state_dict()
    assert {f"ema.{n}" for n in state} == ema.keys()
    for n, p in state.items():  # the EMA weights, rounded once to the storage dtype
        assert torch.equal(p, ema[f"ema.{n}"].to(p.dtype)), n

    pipe = WanPipeline.from_pretrained(tiny_ti2v_model_dir, transformer=merged)
    assert pipe.config["expand_timesteps"], "the TI2V folder's pipeline config is Wan2.2-TI2V-5B's"
    video = _sample(pipe)
    assert video.shape == (1, FRAMES, 3, SIZE, SIZE) and torch.isfinite(video).all()
    base = WanTransformer3DModel.from_pretrained(
        tiny_ti2v_model_dir, subfolder="transformer", torch_dtype=torch.bfloat16
    )
    assert not torch.equal(video, _sample(WanPipeline.from_pretrained(tiny_ti2v_model_dir, transformer=base)))

    if layout == "1":  # `fgrpo eval --prompts` with an image: the image checked, named by file and line
        from fgrpo.cli.eval import cmd_eval

        prompts = tmp_path / "with-image.jsonl"
        prompts.write_text('{"prompt": "a red ball", "image": "ball.png"}\n')
        with pytest.raises(ValueError, match=r"--prompts: .*with-image.jsonl:1: image .*ball.png does not exist"):
            cmd_eval([str(run), "--prompts", str(prompts)])


@pytest.fixture(scope="module")
def image_run(tiny_ti2v_model_dir, tmp_path_factory):
    """TI2V's text+image mode in 1 process, bf16: 6 prompts with their 64 x 64 images (4 trained, 2
    held out), launched for step 1 (checkpoint, exit), then again to step 2 (resumed)."""
    folder = tmp_path_factory.mktemp("ti2v-image")
    prompts = write_image_prompts(folder, 6, (SIZE, SIZE))
    args = [*TI2V_ARGS, "--prompts.file", str(prompts)]
    return launch_stop_and_resume(tiny_ti2v_model_dir, folder / "runs", 1, *args), prompts


def test_text_and_image_launch_stop_resume_on_policy(image_run, tiny_ti2v_model_dir, tmp_path):
    """A JSONL prompt file with an image per prompt (issue 23 point 3): the image as each video's first
    latent frame (fgrpo/models/wan/first_frame.py), launch, stop, resume; step 1 exactly on-policy
    (log pi_old recomputed over the same sampled frames: ratio 1), the weights trained, the first-frame
    conditions cached (one kind: no CLIP), and `fgrpo eval` samples the held-out prompts from their
    images, shown beside their videos."""
    run, prompts = image_run
    assert_resumed_on_policy(train_metrics(run))
    (cache,) = (run.parent / ".cache" / "image-conditions").iterdir()
    assert cache.is_dir()
    weights = checkpoint_state(run, 2, "model.")
    names = [k.removeprefix("model.") for k in weights]
    start = {f"model.{n}": w for n, w in initial_weights(tiny_ti2v_model_dir, names).items()}
    assert start.keys() == weights.keys()
    assert any(not torch.equal(weights[k], start[k]) for k in start), "no trained weight changed"
    res = run_fgrpo("eval", str(run), "--steps", "2", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    index = json.loads((run / "eval" / "step-2" / "samples" / "videos.json").read_text())
    assert [e["image"] for e in index["videos"]] == [str(prompts.parent / "images" / f"{i}.png") for i in (4, 5)]
