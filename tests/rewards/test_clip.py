"""CLIP reward on a tiny random CLIPModel saved locally (no hub access)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fgrpo.rewards import WeightedRewards, aggregate_frames
from fgrpo.rewards import clip as clip_mod
from tests.helpers.served import assert_served_equals_in_process
from tests.helpers.tiny_clip_tokenizer import save_tiny_clip

WORDS = ["a", "red", "blue", "cat", "dog", "on", "the", "grass", "sky", "car", "runs", "in"]


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip", WORDS)


@pytest.fixture(scope="session")
def scorer(clip_dir):
    return clip_mod.get_scorer(clip_dir)


PROMPTS = ["a red cat on the grass", "a blue dog", "the car runs in the sky"]


def _frames(b=3, f=4, h=48, w=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, f, 3, h, w, generator=g)


def test_shape_finite_and_deterministic(scorer):
    frames = _frames()
    s1 = scorer.score_frames(frames, PROMPTS)
    s2 = scorer.score_frames(frames, PROMPTS)
    assert s1.shape == (3, 4) and s1.dtype == torch.float32
    assert torch.isfinite(s1).all()
    assert torch.equal(s1, s2)
    # Scores depend on both the frame and the prompt.
    assert s1.std() > 0
    assert not torch.allclose(s1[:1], scorer.score_frames(frames[:1], PROMPTS[1:2]))


def test_batching_invariance(scorer):
    frames = _frames()
    batched = scorer.score_frames(frames, PROMPTS, batch_size=5)  # chunks cross video boundaries
    single = torch.cat([scorer.score_frames(frames[i : i + 1], PROMPTS[i : i + 1], batch_size=1) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_formula_matches_model(scorer):
    frames = _frames(b=2, f=2)
    model, proc = scorer.model, scorer.processor
    pix = scorer.preprocess(frames.flatten(0, 1))
    tok = proc.tokenizer(PROMPTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=pix)
    # logits_per_image[i, j] = scale * cos(image_i, text_j); frame (b, f) goes with prompt b.
    want = torch.stack([out.logits_per_image[b * 2 : (b + 1) * 2, b] for b in range(2)])
    torch.testing.assert_close(scorer.score_frames(frames, PROMPTS[:2]), want, atol=1e-4, rtol=1e-4)


def test_preprocessing_matches_processor(scorer):
    from PIL import Image

    # uint8-exact frames so both paths start from identical pixels; 48x64 needs a resize + crop.
    frames = torch.randint(0, 256, (5, 3, 48, 64), generator=torch.Generator().manual_seed(2)) / 255.0
    frames = torch.nn.functional.avg_pool2d(frames, 3, stride=1, padding=1)  # smoother, like real video
    frames = (frames * 255).round() / 255
    mine = scorer.preprocess(frames)
    pil = [Image.fromarray((f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for f in frames]
    ref = scorer.processor.image_processor(images=pil, return_tensors="pt")["pixel_values"]
    assert mine.shape == ref.shape == (5, 3, 32, 32)
    assert (mine - ref).abs().max() < 2e-2


def test_registry_topk(clip_dir, scorer):
    frames = _frames(f=10)
    spec = SimpleNamespace(name="clip", weight=1.0, args={"model_path": clip_dir}, frame_aggregation="topk:0.3")
    total, comps = WeightedRewards([spec])(frames, PROMPTS)
    per_frame = scorer.score_frames(frames, PROMPTS)
    want = per_frame.topk(3, dim=1).values.mean(dim=1)
    assert total.shape == (3,)
    torch.testing.assert_close(total, want)
    torch.testing.assert_close(comps["clip"], aggregate_frames(per_frame, "topk:0.3"))
    assert clip_mod.get_scorer(clip_dir) is scorer  # loaded once


def test_missing_model_path():
    spec = SimpleNamespace(name="clip", weight=1.0, args={}, frame_aggregation="mean")
    with pytest.raises(ValueError, match="model_path"):
        WeightedRewards([spec])(_frames(b=1, f=1), ["a cat"])


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        clip_mod.ClipScorer(str(tmp_path / "nope"))


def test_served_equals_in_process(clip_dir):
    assert_served_equals_in_process(
        {"name": "clip", "args": {"model_path": clip_dir}, "frame_aggregation": "topk:0.3"}, _frames(), PROMPTS
    )
