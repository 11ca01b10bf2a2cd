"""HPSv3 reward on a tiny random Qwen2-VL reward model saved like the release (no hub access)."""

import numpy as np
import pytest
import torch
from torch import nn

from fgrpo.rewards import WeightedRewards, aggregate_frames
from fgrpo.rewards import hpsv3 as hps
from fgrpo.rewards.qwen2vl import chat_text
from tests.helpers.served import assert_served_equals_in_process
from tests.helpers.tiny_qwen2vl import PROMPTS, image_processor, reward_at_tokens, save_tiny_hpsv3

PIX = 56 * 84  # tiny stand-in for HPSv3's 256*28*28 budget: 40x60 frames become 56x84 (4x6 patches)
KW = dict(min_pixels=PIX, max_pixels=PIX)


@pytest.fixture(scope="session")
def hps_files(tmp_path_factory):
    """(base folder, HPSv3.safetensors, reference transformers model, reference head, tokenizer)."""
    return save_tiny_hpsv3(tmp_path_factory.mktemp("hpsv3"))


@pytest.fixture(scope="session")
def scorer(hps_files):
    return hps.get_scorer(hps_files[0], hps_files[1], dtype="float32")


@pytest.fixture
def processor(hps_files, monkeypatch):
    """transformers' Qwen2VLProcessor (PIL image processor, same tokenizer and chat template)."""
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    # Its video-processor slot needs torchvision (absent here) to be type-checked; images do not use it.
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, *a, **k: None)
    tok = hps_files[4]
    return Qwen2VLProcessor(image_processor=image_processor(PIX), tokenizer=tok, chat_template=tok.chat_template)


def _frames(b=3, f=2, h=40, w=60, seed=1):
    return torch.rand(b, f, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _uint8_frames(n, h, w, seed=2):
    x = torch.randint(0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(seed)) / 255.0
    x = nn.functional.avg_pool2d(x, 3, stride=1, padding=1)  # smoother, like real frames
    return (x * 255).round() / 255


def _pil(frames):
    from PIL import Image

    return [Image.fromarray((f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for f in frames]


def _messages(prompts):
    return [
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": "frame"}, {"type": "text", "text": hps.instruction(p)}],
            }
        ]
        for p in prompts
    ]


def test_shape_deterministic_and_prompt_dependent(scorer, hps_files):
    frames = _frames()
    s1 = scorer.score_frames(frames, PROMPTS, **KW)
    assert s1.shape == (3, 2) and s1.dtype == torch.float32 and torch.isfinite(s1).all()
    assert torch.equal(s1, scorer.score_frames(frames, PROMPTS, **KW))
    assert s1.std() > 0
    other = scorer.score_frames(frames[:1], PROMPTS[1:2], **KW)  # same frames, another prompt
    assert (other - s1[:1]).abs().min() > 1e-3
    assert scorer.reward_ids == hps_files[4].convert_tokens_to_ids([hps.REWARD_TOKEN])


def test_batching_invariance(scorer):
    frames = _frames()
    batched = scorer.score_frames(frames, PROMPTS, batch_size=4, **KW)  # chunks cross videos, rows padded
    single = torch.cat(
        [scorer.score_frames(frames[i : i + 1], PROMPTS[i : i + 1], batch_size=1, **KW) for i in range(3)]
    )
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_preprocessing_matches_processor(scorer, processor):
    # 56x84 is already on the 28-grid with PIX pixels: no resize, so pixels must match exactly.
    frames = _uint8_frames(3, 56, 84)
    ours = [scorer.visual_inputs(f[None], PIX, PIX) for f in frames]
    texts = processor.apply_chat_template(_messages(PROMPTS), tokenize=False, add_generation_prompt=True)
    ref = processor(text=texts, images=_pil(frames), padding=True, return_tensors="pt")
    torch.testing.assert_close(torch.cat([p for p, _ in ours]), ref["pixel_values"], atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.tensor([g for _, g in ours]), ref["image_grid_thw"])
    chats = [
        chat_text(hps.instruction(p), "<|image_pad|>", scorer.n_vision_tokens(g)) for p, (_, g) in zip(PROMPTS, ours)
    ]
    assert chats == [t.replace("<|image_pad|>", "<|image_pad|>" * scorer.n_vision_tokens(ours[0][1])) for t in texts]
    ids, mask = scorer.encode(chats)
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])


def test_resize_close_to_processor(scorer, processor):
    # 45x70 -> 56x112 (min-pixel upscale): torch's antialiased bicubic vs PIL's on uint8 pictures.
    frames = _uint8_frames(4, 45, 70)
    ours = torch.cat([scorer.visual_inputs(f[None], PIX, PIX)[0] for f in frames])
    ref = processor.image_processor(images=_pil(frames), return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape == (4 * 32, 3 * 2 * 14 * 14)
    err = (ours - ref).abs() * 0.27 * 255  # back to 0..255 pixel units
    assert err.max() < 2 and err.mean() < 0.5, (err.max(), err.mean())


def test_scores_equal_reference_forward(scorer, processor, hps_files):
    # The original's path: processor inputs -> transformers forward with the positions HPSv3 had on
    # transformers 4.45 (sequential) -> head mu at <|Reward|>.
    _, _, model, head, _ = hps_files
    frames = _uint8_frames(3, 56, 84, seed=5)
    texts = processor.apply_chat_template(_messages(PROMPTS), tokenize=False, add_generation_prompt=True)
    ref = processor(text=texts, images=_pil(frames), padding=True, return_tensors="pt")
    inputs = (model, head, ref["input_ids"], ref["attention_mask"], scorer.reward_ids)
    vision = dict(pixel_values=ref["pixel_values"], image_grid_thw=ref["image_grid_thw"])
    want = reward_at_tokens(*inputs, **vision)[:, 0, 0]
    got = scorer.score_frames(frames[:, None], PROMPTS, **KW)[:, 0]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    # transformers 5's default 3D positions give other scores: the position choice is tested.
    assert (reward_at_tokens(*inputs, sequential=False, **vision)[:, 0, 0] - got).abs().max() > 1e-3


def test_bf16_close_to_fp32(scorer, hps_files):
    bf16 = hps.get_scorer(hps_files[0], hps_files[1], dtype="bfloat16")
    assert bf16.model.get_parameter("model.language_model.embed_tokens.weight").dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bf16.model.get_submodule("rm_head").parameters())
    frames = _frames()
    ref, low = scorer.score_frames(frames, PROMPTS, **KW), bf16.score_frames(frames, PROMPTS, **KW)
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 0.05 * ref.abs().max(), (low, ref)


def test_registry_topk(hps_files, scorer):
    frames = _frames(f=4)
    args = {"model_path": hps_files[0], "checkpoint": hps_files[1], "dtype": "float32", **KW}
    total, comps = WeightedRewards([{"name": "hpsv3", "args": args, "frame_aggregation": "topk:0.3"}])(frames, PROMPTS)
    per_frame = scorer.score_frames(frames, PROMPTS, **KW)
    torch.testing.assert_close(total, per_frame.topk(2, dim=1).values.mean(dim=1))  # ceil(0.3 * 4) = 2 frames
    torch.testing.assert_close(comps["hpsv3"], aggregate_frames(per_frame, "topk:0.3"))
    assert hps.get_scorer(hps_files[0], hps_files[1], dtype="float32") is scorer  # loaded once


def test_errors(hps_files, tmp_path):
    with pytest.raises(ValueError, match="model_path"):
        WeightedRewards([{"name": "hpsv3", "args": {}}])(_frames(b=1, f=1), ["a cat"])
    with pytest.raises(FileNotFoundError, match="nope"):
        hps.HPSv3Scorer(str(tmp_path / "nope"), hps_files[1])
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        hps.HPSv3Scorer(hps_files[0], str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match=r"lacks weights \[.rm_head"):  # the base folder alone has no head
        hps.HPSv3Scorer(hps_files[0], None, dtype="float32")


def test_served_equals_in_process(hps_files):
    args = {"model_path": hps_files[0], "checkpoint": hps_files[1], "dtype": "float32", **KW}
    assert_served_equals_in_process(
        {"name": "hpsv3", "args": args, "frame_aggregation": "topk:0.3"}, _frames(f=4), PROMPTS
    )
