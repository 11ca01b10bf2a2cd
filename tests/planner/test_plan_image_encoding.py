"""The planner's start-up image-encoding phase (fgrpo/planner/image_phase.py): image-to-video models
hold the VAE and, with image cross-attention (Wan2.1 I2V), the CLIP image encoder in float32 while
each prompt's image is encoded, before the transformer is built."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fgrpo.planner.phases import Phase
from tests.conftest import REPO


def _vit_h_14_vision_params() -> int:
    """Parameters of CLIP ViT-H/14's vision tower (Wan2.1 I2V's image_encoder), counted by hand:
    32 pre-norm blocks of width 1280 (q/k/v/out with biases, a 5120-wide MLP, two LayerNorms), a
    14 x 14 patch conv without bias, the class token, 257 positions, the pre and post LayerNorms."""
    d, ff, layers, tokens = 1280, 5120, 32, (224 // 14) ** 2 + 1
    block = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d
    return layers * block + 3 * 14 * 14 * d + d + tokens * d + 2 * 2 * d


def _image_phase(preset: str) -> Phase | None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fgrpo.planner.image_phase import image_encoding
    from fgrpo.planner.spec import ModelSpec
    from fgrpo.recipe.io import load_recipe_file

    recipe = load_recipe_file(REPO / "recipes" / "tiny.py")
    rollout = dataclasses.replace(recipe.rollout, frames=5, height=64, width=64)
    recipe = dataclasses.replace(recipe, rollout=rollout)
    return image_encoding(ModelSpec.from_preset(preset), recipe, FakeTensorMode(allow_non_fake_inputs=True))


def test_wan2_1_i2v_holds_its_clip_vit_h_14_in_float32():
    phase = _image_phase("wan2.1-i2v-14b-480p")
    assert phase is not None and phase.name == "image encoding"
    position_ids = 8 * ((224 // 14) ** 2 + 1)  # CLIP's int64 buffer of the 257 positions
    assert phase.parts["image encoder"] == 4 * _vit_h_14_vision_params() + position_ids
    assert phase.parts["VAE"] > 0 and phase.parts["activations"] > 0, phase.parts
    assert phase.peak == sum(phase.parts.values())
    assert phase.flops["clip"] > 0 and phase.flops["vae"] > 0


def test_wan2_2_i2v_encodes_the_image_without_a_clip_encoder():
    phase = _image_phase("wan2.2-i2v-a14b")  # condition channels, no image cross-attention
    assert phase is not None
    assert phase.parts["image encoder"] == 0 and "clip" not in phase.flops and phase.flops["vae"] > 0


@pytest.mark.parametrize("preset", ["wan2.1-t2v-14b", "wan2.2-ti2v-5b"])
def test_text_to_video_has_no_image_phase(preset):
    assert _image_phase(preset) is None


def test_plan_of_the_tiny_i2v_model_has_the_phase_and_its_cost(tmp_path):
    from fgrpo.planner import plan
    from fgrpo.planner.plan import FakeRun
    from fgrpo.recipe.io import load_recipe_file

    recipe = load_recipe_file(REPO / "recipes" / "tiny.py")
    model = dataclasses.replace(recipe.model, preset="tiny-i2v", max_text_tokens=512)
    p = plan(dataclasses.replace(recipe, model=model), 1, target="cpu")
    names = [ph.name for ph in p.phases]
    assert names[:3] == ["text encoding", "image encoding", "rollout"], names
    image = p.phase("image encoding")
    with torch.device("meta"):
        from transformers import CLIPVisionConfig, CLIPVisionModel

        from fgrpo.models.wan.tiny_i2v import tiny_clip_vision_config

        clip = CLIPVisionModel(CLIPVisionConfig(**tiny_clip_vision_config()))
    assert image.parts["image encoder"] == sum(t.nbytes for t in (*clip.parameters(), *clip.buffers()))
    assert p.flops["image encoding (per prompt)"] == sum(image.flops.values()) > 0
    assert p.to_dict()["phases"][1]["name"] == "image encoding"
    assert p.run is not None and FakeRun.from_dict(p.run.to_dict()).image == p.run.image


def test_folder_spec_reads_the_image_encoder_config(tiny_i2v_model_dir, tiny_model_dir):
    from fgrpo.planner import ModelSpec

    folder, preset = ModelSpec.from_folder(tiny_i2v_model_dir), ModelSpec.from_preset("tiny-i2v")
    assert folder.image_encoder is not None and preset.image_encoder is not None
    assert {k: folder.image_encoder[k] for k in preset.image_encoder} == preset.image_encoder
    assert ModelSpec.from_folder(tiny_model_dir).image_encoder is None
