"""Export: a trained tiny run becomes a merged diffusers transformer plus a diffusers LoRA file."""

import dataclasses
import json
from typing import cast

import pytest
import torch
from torch.distributed.tensor import DTensor

from fgrpo.export import export_run, load_trained_transformer
from fgrpo.recipe.io import save_recipe_json
from tests.helpers.recipes import small_recipe

R = dataclasses.replace


def train(recipe, run_dir):
    from fgrpo.trainer.trainer import Trainer

    run_dir.mkdir(parents=True)
    save_recipe_json(recipe, run_dir / "recipe.json")  # as `fgrpo launch` does
    trainer = Trainer(recipe, run_dir)
    assert trainer.run() == 0
    return trainer


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    r = small_recipe(tiny_model_dir, max_steps=2)
    # alpha != rank: the exported LoRA file must carry alpha, or diffusers would assume alpha = rank.
    r = R(r, lora=R(r.lora, rank=4, alpha=8.0))
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    return run_dir, train(r, run_dir)


@torch.no_grad()
def forward(transformer):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 2, 4, 4, generator=g)
    ctx = torch.randn(2, 16, 32, generator=g)
    t = torch.tensor([900.0, 300.0])
    return transformer(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]


def load_exported(out):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(out, subfolder="transformer").eval()


def assert_close(a, b):
    assert (a - b).abs().max().item() <= 1e-5, (a - b).abs().max().item()


@pytest.mark.parametrize("weights", ["model", "ema"])
def test_lora_export_matches_trained_model(lora_run, tiny_model_dir, tmp_path, weights):
    from diffusers import WanPipeline, WanTransformer3DModel
    from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

    run_dir, trainer = lora_run
    out = export_run(run_dir, tmp_path / "export", weights=weights)
    assert out == tmp_path / "export"
    info = json.loads((out / "export.json").read_text())
    assert info["step"] == 2 and info["weights"] == weights
    assert info["lora"]["rank"] == 4 and info["lora"]["alpha"] == 8.0
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert not list(tmp_path.glob(".*partial*"))

    merged = load_exported(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    # (a) the merged transformer computes what the trained LoRA model computes
    trained = trainer.policy.transformer.eval()
    if weights == "ema":
        with trainer.ema.swapped_in():
            expected = forward(trained)
    else:
        expected = forward(trained)
    got = forward(merged)
    assert_close(got, expected)
    reloaded, _, step, used = load_trained_transformer(run_dir, weights=weights)
    assert (step, used) == (2, weights)
    assert_close(forward(reloaded), got)

    # (c) training changed the weights: the merged model is not the base model
    base = WanTransformer3DModel.from_pretrained(tiny_model_dir, subfolder="transformer").eval()
    base_sd, merged_sd = base.state_dict(), merged.state_dict()
    assert base_sd.keys() == merged_sd.keys()
    changed = [k for k in base_sd if not torch.equal(base_sd[k], merged_sd[k])]
    assert changed and all(k.endswith("weight") and ".attn" in k for k in changed), changed
    assert (forward(base) - got).abs().max().item() > 1e-4

    # (b) diffusers' own LoRA loader on the base pipeline gives the same model
    pipe = WanPipeline.from_pretrained(tiny_model_dir)
    pipe.load_lora_weights(str(out / "lora"))
    assert any("lora" in n for n, _ in pipe.transformer.named_parameters())
    assert_close(forward(pipe.transformer.eval()), got)

    # the merged transformer drops into a WanPipeline
    pipe = WanPipeline.from_pretrained(tiny_model_dir, transformer=merged)
    output = pipe(
        "a red ball",
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=2,
        max_sequence_length=16,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    video = cast(WanPipelineOutput, output).frames  # return_dict defaults to True
    assert video.shape[1:3] == (5, 3) and torch.isfinite(video).all()


def test_export_replaces_previous_export_and_refuses_other_folders(lora_run, tmp_path):
    run_dir, _ = lora_run
    out = tmp_path / "export"
    export_run(run_dir, out, weights="model")
    (out / "stale").write_text("x")
    export_run(run_dir, out)
    assert not (out / "stale").exists() and json.loads((out / "export.json").read_text())["weights"] == "ema"
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError):
        export_run(run_dir, other)
    assert (other / "precious.txt").exists()
    with pytest.raises(FileNotFoundError, match="step 7"):
        export_run(run_dir, tmp_path / "x", step=7)


def test_run_without_checkpoints_raises(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "empty-run"
    run_dir.mkdir()
    save_recipe_json(small_recipe(tiny_model_dir, max_steps=2), run_dir / "recipe.json")
    (run_dir / "checkpoints" / "step-4").mkdir(parents=True)  # incomplete: no .metadata
    with pytest.raises(FileNotFoundError, match=str(run_dir)):
        export_run(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_full_finetune_export(tiny_model_dir, tmp_path):
    r = small_recipe(tiny_model_dir, max_steps=2)
    r = R(r, lora=R(r.lora, enabled=False), ema=R(r.ema, enabled=False))
    trainer = train(r, tmp_path / "run")
    with pytest.warns(UserWarning, match="no EMA"):
        out = export_run(tmp_path / "run", tmp_path / "export")  # weights="ema" falls back to "model"
    info = json.loads((out / "export.json").read_text())
    assert info["weights"] == "model" and info["lora"] is None
    assert not (out / "lora").exists()
    merged = load_exported(out)
    assert_close(forward(merged), forward(trainer.policy.transformer.eval()))
    for n, p in trainer.policy.transformer.named_parameters():  # DTensors: FSDP2 on one rank too
        detached = p.detach()
        full = detached.full_tensor() if isinstance(detached, DTensor) else detached  # (unsharded after a forward)
        assert torch.equal(merged.state_dict()[n], full), n
