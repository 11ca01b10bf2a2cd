"""Wan2.2 A14B's two experts train end to end in fgrpo (issue 23 point 2), on the tiny two-expert
model (fgrpo/models/wan/tiny_a14b.py: `transformer` for steps 0-2 of the tiny recipe's grid,
`transformer_2` for 3-7) in bf16, in 1 process and on dp_shard=2 x tp=2 (each expert tensor-parallel
on its own; two data-parallel ranks, as dp_shard=2 alone has): launch one step, stop, resume for
a second (on policy), `fgrpo eval`, `fgrpo export`, and the export loaded by diffusers'
`WanPipeline.from_pretrained` with transformer_2 and boundary_ratio, and sampled. Full fine-tuning
(the tiny recipe's), `lora.experts=both`: step 1 draws steps (1, 2) (high noise), step 2 (3, 1) (one
group per expert: with two data-parallel ranks each rank's micro-batch needs another expert). And `lora.experts=high`
with LoRA and a KL term: only the high-noise expert's adapters train, the low-noise expert holds no
trained weights, no optimizer state, and is exported as it was. Each expert guided at its own scale
(rollout.cfg_scale 2, cfg_scale_2 3): rollouts, the training pass (step 2's micro-batches hold both
experts' transitions) and evaluation.

Suite cost: about 190 s on 2 cores (two launches per layout, one for experts=high; eval and export).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import run_fgrpo
from tests.helpers.runs import (
    EXPERTS,
    assert_resumed_on_policy,
    assert_update_matches,
    checkpoint_state,
    initial_weights,
    launch_tiny,
    runs_by_layout,
    train_metrics,
)

FRAMES, SIZE = 5, 32  # the tiny recipe's videos
A14B_ARGS = [
    "--model.preset",
    "tiny-a14b",
    "--model.dtype",
    "bfloat16",
    "--algorithm.clip-range",
    "1e-3",  # the paper's: any on-policy drift would show as clipping
    "--rollout.cfg-scale-2",
    "3.0",  # the low-noise expert's steps guided at 3, the high-noise ones at the tiny recipe's 2
]
LAYOUTS = {
    "1": (1, []),
    # each expert sharded over the tp group on its own (fgrpo.models.wan.experts)
    "dp_shard=2,tp=2": (4, ["--parallelism.dp-shard", "2", "--parallelism.tp", "2"]),
}


@pytest.fixture(scope="module")
def trained(tiny_a14b_model_dir, tmp_path_factory):
    return runs_by_layout(tiny_a14b_model_dir, tmp_path_factory, "a14b", LAYOUTS, *A14B_ARGS)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_launch_stop_resume_trains_both_experts(trained, tiny_a14b_model_dir, layout):
    run = trained(layout)
    metrics = train_metrics(run)
    assert_resumed_on_policy(metrics)
    assert [m["timestep_indices"] for m in metrics] == [[1, 2], [3, 1]]  # step 2 reaches the low-noise expert
    assert metrics[1]["ratio_dev_max"] < 1e-3  # after the resume: on-policy to the clip range
    weights = checkpoint_state(run, 2, "model.")
    assert weights and all(w.dtype == torch.float32 for w in weights.values()), "trained weights are not fp32"
    names = [k.removeprefix("model.") for k in weights]
    start = initial_weights(tiny_a14b_model_dir, names)
    for expert in EXPERTS:
        mine = [n for n in names if n.split(".", 1)[0] == expert]
        assert len(mine) == len(names) // 2, f"{expert}: not every weight in the checkpoint"
        assert any(not torch.equal(weights[f"model.{n}"], start[n]) for n in mine), f"{expert} did not change"
    ema = checkpoint_state(run, 2, "ema.")
    assert {k.removeprefix("ema.") for k in ema} == set(names)  # an EMA of each trained expert
    if layout != "1":
        assert_update_matches(run, trained("1"), start, f"A14B {layout}")


def _sample(pipe, seed: int = 0) -> torch.Tensor:
    from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

    out = pipe(
        "a red ball",
        height=SIZE,
        width=SIZE,
        num_frames=FRAMES,
        num_inference_steps=2,  # sigma 1.0 (high noise), 0.5 (low): both experts
        max_sequence_length=16,
        output_type="pt",
        generator=torch.Generator().manual_seed(seed),
    )
    assert isinstance(out, WanPipelineOutput)
    return out.frames


def _export(run: Path, out: Path, cwd: Path) -> dict:
    res = run_fgrpo("export", str(run), str(out), cwd=cwd, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads((out / "export.json").read_text())


def _experts_of(folder: Path, subfolders=EXPERTS):
    from diffusers import WanTransformer3DModel

    return [WanTransformer3DModel.from_pretrained(folder, subfolder=s, torch_dtype=torch.bfloat16) for s in subfolders]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_eval_export_and_diffusers_pipeline(trained, tiny_a14b_model_dir, tmp_path, layout):
    from diffusers import WanPipeline

    run = trained(layout)
    res = run_fgrpo("eval", str(run), "--steps", "2", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((run / "eval" / "step-2" / "eval.json").read_text())
    assert summary["step"] == 2 and len(summary["eval_rewards"]) == 2  # the 2 held-out prompts
    assert all(map(torch.isfinite, torch.tensor(summary["eval_rewards"])))

    out = tmp_path / "export"
    info = _export(run, out, tmp_path)
    assert (info["step"], info["weights"], info["lora"]) == (2, "ema", None)
    assert info["experts"] == {"boundary_ratio": 0.7, "trained": ["high", "low"]}
    high, low = _experts_of(out)
    ema = checkpoint_state(run, 2, "ema.")
    for expert, model in zip(EXPERTS, (high, low)):
        state = model.state_dict()
        assert {f"ema.{expert}.{n}" for n in state} == {k for k in ema if k.startswith(f"ema.{expert}.")}
        for n, p in state.items():  # the EMA weights, rounded once to the storage dtype
            assert torch.equal(p, ema[f"ema.{expert}.{n}"].to(p.dtype)), n

    pipe = WanPipeline.from_pretrained(tiny_a14b_model_dir, transformer=high, transformer_2=low)
    assert pipe.config["boundary_ratio"] == 0.7 and pipe.transformer_2 is low
    video = _sample(pipe)
    assert video.shape == (1, FRAMES, 3, SIZE, SIZE) and torch.isfinite(video).all()
    base_high, base_low = _experts_of(tiny_a14b_model_dir)
    base = _sample(WanPipeline.from_pretrained(tiny_a14b_model_dir, transformer=base_high, transformer_2=base_low))
    assert not torch.equal(video, base)


def test_lora_experts_high_trains_only_the_high_noise_expert(tiny_a14b_model_dir, tmp_path):
    """LoRA (rank 4) on the high-noise expert only, its window within its steps (1, 3), a KL term to
    the adapters-disabled reference: the low-noise expert has no adapters, no trained weights and no
    optimizer state, and is exported unchanged; the high-noise one's adapter is exported in lora/."""
    from diffusers import WanPipeline

    extra = ["--lora.enabled", "--lora.rank", "4", "--lora.experts", "high", "--timesteps.window", "1", "3"]
    run = launch_tiny(tiny_a14b_model_dir, tmp_path / "runs", 1, 2, *A14B_ARGS, *extra, "--algorithm.kl-beta", "0.01")
    metrics = train_metrics(run)
    assert [m["step"] for m in metrics] == [1, 2] and metrics[0]["ratio_dev_max"] == 0.0
    assert all(k in (1, 2) for m in metrics for k in m["timestep_indices"])
    assert metrics[1]["kl"] > 0  # the adapters moved the policy from the reference
    model, optim = checkpoint_state(run, 2, "model."), checkpoint_state(run, 2, "optim.")
    assert model and all(k.startswith("model.transformer.") and ".lora_" in k for k in model)
    assert any(float(w.abs().max()) > 0 for k, w in model.items() if "lora_B" in k), "no adapter trained"
    assert optim and not [k for k in optim if "transformer_2" in k], "the frozen expert has optimizer state"
    assert any(k.startswith("optim.state.transformer.") for k in optim)

    out = tmp_path / "export"
    info = _export(run, out, tmp_path)
    assert info["experts"] == {"boundary_ratio": 0.7, "trained": ["high"]}
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file() and not (out / "lora_2").exists()
    high, low = _experts_of(out)
    base_high, base_low = _experts_of(tiny_a14b_model_dir)
    assert all(torch.equal(p, base_low.state_dict()[n]) for n, p in low.state_dict().items())
    assert any(not torch.equal(p, base_high.state_dict()[n]) for n, p in high.state_dict().items())
    # diffusers' own LoRA loading into the base high-noise expert gives a working pipeline
    pipe = WanPipeline.from_pretrained(tiny_a14b_model_dir, transformer=base_high, transformer_2=base_low)
    pipe.load_lora_weights(out / "lora")
    assert torch.isfinite(_sample(pipe)).all()
