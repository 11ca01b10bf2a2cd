"""Wan2.1 image-to-video trains end to end in fgrpo (issue 23 point 4), on the tiny I2V architecture
(fgrpo/models/wan/tiny_i2v.py: 36 input channels, image cross-attention, a CLIP image encoder) in
bf16, in 1 process, on dp_shard=2 x tp=2 (tp shards the image attention with the
text's heads, fgrpo/models/wan/tensor_parallel.py) and on sp=2 (Ulysses; the image cross-attention
runs unchanged on each rank's tokens, fgrpo/models/wan/sequence_parallel.py): launch one step,
stop, resume for a second, the first step on-policy (ratio exactly 1: the recomputed log pi_old sees
the same image condition as the loss), `fgrpo eval`, `fgrpo export`, and the export loaded by
diffusers' `WanImageToVideoPipeline.from_pretrained` and sampled with an image. Full fine-tuning
(the tiny recipe's), so the image embedder and image attention train too.

Suite cost, measured on 2 idle cores: 1 process 28 s, dp_shard=2 x tp=2 48 s, sp=2 37 s (two launches
per layout, the second resuming), eval and export once 24 s.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_fgrpo
from tests.helpers.image_prompts import write_image_prompts
from tests.helpers.pipeline_parity import sample_image_to_video
from tests.helpers.runs import (
    assert_resumed_on_policy,
    assert_update_matches,
    checkpoint_state,
    initial_weights,
    runs_by_layout,
    train_metrics,
)

FRAMES, SIZE = 5, 32  # the tiny recipe's videos
I2V_ARGS = [
    "--model.preset",
    "tiny-i2v",
    "--model.dtype",
    "bfloat16",
    "--model.max-text-tokens",
    "512",  # diffusers' image attention takes the context's last 512 tokens as text
    "--algorithm.clip-range",
    "1e-3",  # the paper's: any on-policy drift would show as clipping
]
LAYOUTS = {
    "1": (1, []),
    "dp_shard=2,tp=2": (4, ["--parallelism.dp-shard", "2", "--parallelism.tp", "2"]),
    "sp=2": (2, ["--parallelism.sp", "2"]),  # image cross-attention on each rank's tokens
}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    """6 prompts with their 32 x 32 images: 4 trained (2 per step), 2 held out (BASE_ARGS)."""
    return write_image_prompts(tmp_path_factory.mktemp("i2v-prompts"), 6, (SIZE, SIZE))


@pytest.fixture(scope="module")
def trained(tiny_i2v_model_dir, prompts, tmp_path_factory):
    return runs_by_layout(
        tiny_i2v_model_dir, tmp_path_factory, "i2v", LAYOUTS, *I2V_ARGS, "--prompts.file", str(prompts)
    )


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_launch_stop_resume_on_policy(trained, tiny_i2v_model_dir, layout):
    run = trained(layout)
    metrics = train_metrics(run)
    assert_resumed_on_policy(metrics)
    assert (run.parent / ".cache" / "image-conditions").is_dir()
    weights = checkpoint_state(run, 2, "model.")
    names = [k.removeprefix("model.") for k in weights]
    image_side = [n for n in names if n.startswith("condition_embedder.image_embedder.") or ".attn2.add_k_proj." in n]
    assert image_side, "the image embedder and image attention are not among the trained weights"
    start = initial_weights(tiny_i2v_model_dir, names)
    assert start.keys() == set(names)
    assert any(not torch.equal(weights[f"model.{n}"], start[n]) for n in image_side)
    if layout != "1":
        assert_update_matches(run, trained("1"), start, f"I2V {layout}")


def test_eval_export_and_the_i2v_pipeline(trained, tiny_i2v_model_dir, prompts, tmp_path):
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

    from fgrpo.cli.eval import cmd_eval
    from fgrpo.data.image_prompts import load_image

    run = trained("1")
    res = run_fgrpo("eval", str(run), "--steps", "2", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((run / "eval" / "step-2" / "eval.json").read_text())
    assert summary["step"] == 2 and len(summary["eval_rewards"]) == 2  # the 2 held-out prompts
    assert all(map(torch.isfinite, torch.tensor(summary["eval_rewards"])))
    assert (run / "eval" / "step-2" / "samples" / "videos.mp4").is_file()
    shown = [
        e["image"] for e in json.loads((run / "eval" / "step-2" / "samples" / "videos.json").read_text())["videos"]
    ]
    assert shown == [str(prompts.parent / "images" / f"{i}.png") for i in (4, 5)]  # beside the held-out videos
    text_only = tmp_path / "text.txt"
    text_only.write_text("a ball\n")
    with pytest.raises(ValueError, match=r"--prompts: .*holds text only.*image-to-video"):
        cmd_eval([str(run), "--prompts", str(text_only)])

    out = tmp_path / "export"
    res = run_fgrpo("export", str(run), str(out), cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    merged = WanTransformer3DModel.from_pretrained(out, subfolder="transformer", torch_dtype=torch.bfloat16)
    ema = checkpoint_state(run, 2, "ema.")
    state = merged.state_dict()
    assert {f"ema.{n}" for n in state} == ema.keys()
    for n, p in state.items():  # the EMA weights, rounded once to the storage dtype
        assert torch.equal(p, ema[f"ema.{n}"].to(p.dtype)), n

    image = load_image(prompts.parent / "images" / "0.png")
    text = torch.randn(2, 512, 32, generator=torch.Generator().manual_seed(3))  # prompt, negative prompt
    pipe = WanImageToVideoPipeline.from_pretrained(tiny_i2v_model_dir, transformer=merged)
    video = sample_image_to_video(pipe, image, text, FRAMES, SIZE)
    assert video.shape == (1, FRAMES, 3, SIZE, SIZE) and torch.isfinite(video).all()
    base = WanTransformer3DModel.from_pretrained(
        tiny_i2v_model_dir, subfolder="transformer", torch_dtype=torch.bfloat16
    )
    before = WanImageToVideoPipeline.from_pretrained(tiny_i2v_model_dir, transformer=base)
    assert not torch.equal(video, sample_image_to_video(before, image, text, FRAMES, SIZE))
