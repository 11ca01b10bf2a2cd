"""VideoAlign (VideoReward) reward on a tiny random Qwen2-VL reward model saved like the release."""

import json
import shutil
from typing import TypedDict

import pytest
import torch

from fgrpo.rewards import WeightedRewards
from fgrpo.rewards import videoalign as va
from fgrpo.rewards.qwen2vl import chat_text, patchify
from tests.helpers.served import assert_served_equals_in_process
from tests.helpers.tiny_qwen2vl import (
    PROMPTS,
    VIDEOALIGN_CONFIG,
    reward_at_tokens,
    save_tiny_videoalign,
)


class PixelArgs(TypedDict):
    min_pixels: int


KW = PixelArgs(min_pixels=56 * 56)  # tiny stand-in for 128*28*28; model_config caps frames at 56*84 pixels


@pytest.fixture(scope="session")
def va_files(tmp_path_factory):
    """(base folder, VideoReward release folder, reference transformers model, reference head)."""
    return save_tiny_videoalign(tmp_path_factory.mktemp("videoalign"))


@pytest.fixture(scope="session")
def scorer(va_files):
    return va.get_scorer(va_files[0], va_files[1], dtype="float32")


def _frames(b=3, f=8, h=40, w=60, seed=1):
    return torch.rand(b, f, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_outputs_norm_and_prompt_dependence(scorer):
    frames = _frames()
    out = scorer.score(frames, PROMPTS, **KW)
    raw = scorer.score(frames, PROMPTS, use_norm=False, **KW)
    assert set(out) == {"vq", "mq", "ta", "overall"}
    assert all(v.shape == (3,) and v.dtype == torch.float32 and torch.isfinite(v).all() for v in out.values())
    torch.testing.assert_close(out["overall"], out["vq"] + out["mq"] + out["ta"])
    assert all(out[k].std() > 1e-3 for k in ("vq", "mq", "ta"))  # depends on the video
    torch.testing.assert_close(out["vq"], (raw["vq"] - 0.1) / 2.0)
    torch.testing.assert_close(out["mq"], (raw["mq"] + 0.2) / 0.5)
    torch.testing.assert_close(out["ta"], (raw["ta"] - 0.3) / 1.5)
    assert torch.equal(out["overall"], scorer.score(frames, PROMPTS, **KW)["overall"])
    # The prompt comes after <|VQ_reward|> and <|MQ_reward|> in the template: under causal attention
    # only TA can depend on it, which checks that each score is read at its own token.
    other = scorer.score(frames[:1], PROMPTS[1:2], use_norm=False, **KW)
    torch.testing.assert_close(other["vq"], raw["vq"][:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other["mq"], raw["mq"][:1], atol=1e-5, rtol=1e-5)
    assert (other["ta"] - raw["ta"][:1]).abs().item() > 1e-3


def test_batching_invariance(scorer):
    frames = _frames()
    batched = scorer.score(frames, PROMPTS, batch_size=3, **KW)
    single = [scorer.score(frames[i : i + 1], PROMPTS[i : i + 1], batch_size=1, **KW) for i in range(3)]
    for k in batched:
        torch.testing.assert_close(batched[k], torch.cat([s[k] for s in single]), atol=1e-5, rtol=1e-5)


def test_scores_equal_reference_forward(scorer, va_files):
    # transformers' forward with the positions VideoAlign had on transformers 4.45 (sequential) + the latest
    # checkpoint's head at the three reward tokens, read like VideoAlign (output_dim 1 -> [B, 3]).
    _, _, model, head = va_files
    frames = _frames(seed=3)
    idx = va.sample_indices(8, 16.0, 2.0)
    vis = [scorer.visual_inputs(v[idx], 56 * 56, 56 * 84) for v in frames]
    ids, mask = scorer.encode(
        [chat_text(va.prompt_text(p), "<|video_pad|>", scorer.n_vision_tokens(g)) for p, (_, g) in zip(PROMPTS, vis)]
    )
    vision = dict(pixel_values_videos=torch.cat([p for p, _ in vis]), video_grid_thw=torch.tensor([g for _, g in vis]))
    want = reward_at_tokens(model, head, ids, mask, scorer.reward_ids, sequential=True, **vision)[..., 0]
    got = scorer.score(frames, PROMPTS, use_norm=False, **KW)
    got = torch.stack([got["vq"], got["mq"], got["ta"]], dim=1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    # transformers 5's default 3D positions give other scores: the position choice is tested.
    mrope = reward_at_tokens(model, head, ids, mask, scorer.reward_ids, sequential=False, **vision)[..., 0]
    assert (mrope - got).abs().max() > 1e-3


def test_video_patchify_matches_direct_reference():
    # transformers' video processor needs torchvision, so compare with a loop-by-loop construction of the
    # processor's layout: token = (t, block row, block col, row in block, col in block), each holding
    # (channel, frame in pair, 14x14 pixels); an odd frame count repeats the last frame.
    frames = torch.randn(3, 3, 56, 84, generator=torch.Generator().manual_seed(0))
    ours, grid = patchify(frames, 14, 2, 2)
    assert grid == (2, 4, 6) and ours.shape == (2 * 4 * 6, 3 * 2 * 14 * 14)
    padded = torch.cat([frames, frames[-1:]])
    rows = []
    for t in range(2):
        for br in range(2):
            for bc in range(3):
                for r in range(2):
                    for c in range(2):
                        y, x = (2 * br + r) * 14, (2 * bc + c) * 14
                        rows.append(padded[2 * t : 2 * t + 2, :, y : y + 14, x : x + 14].transpose(0, 1).flatten())
    assert torch.equal(ours, torch.stack(rows))


def test_frame_sampling(scorer):
    assert va.sample_indices(81, 16.0, 2.0).tolist() == [0, 9, 18, 27, 36, 44, 53, 62, 71, 80]  # Wan2.1, 5 s
    assert va.sample_indices(8, 16.0, 2.0).tolist() == [0, 2, 5, 7]  # at least 4 frames
    assert va.sample_indices(8, 16.0, None, num_frames=5).tolist() == [0, 2, 5, 7]  # an even count
    assert va.sample_indices(6, 16.0, None).tolist() == list(range(6))
    frames = _frames(b=1)
    torch.testing.assert_close(
        scorer.score(frames, PROMPTS[:1], **KW)["overall"],
        scorer.score(frames[:, [0, 2, 5, 7]], PROMPTS[:1], num_frames=4, **KW)["overall"],
    )


def test_bf16_close_to_fp32(scorer, va_files):
    bf16 = va.get_scorer(va_files[0], va_files[1], dtype="bfloat16")
    assert bf16.model.get_parameter("model.visual.patch_embed.proj.weight").dtype == torch.bfloat16
    assert bf16.model.get_parameter("rm_head.weight").dtype == torch.float32
    frames = _frames()
    ref = scorer.score(frames, PROMPTS, use_norm=False, **KW)
    low = bf16.score(frames, PROMPTS, use_norm=False, **KW)
    for k in ("vq", "mq", "ta"):
        assert (low[k] - ref[k]).abs().max() < 0.05 * ref[k].abs().max() + 0.02, (k, low[k], ref[k])


def test_registry_output_arg(va_files, scorer):
    frames = _frames()
    args = {"model_path": va_files[0], "checkpoint": va_files[1], "dtype": "float32", "output": "vq", **KW}
    total, comps = WeightedRewards([{"name": "videoalign", "weight": 2.0, "args": args}])(frames, PROMPTS)
    vq = scorer.score(frames, PROMPTS, **KW)["vq"]
    torch.testing.assert_close(comps["videoalign"], vq)
    torch.testing.assert_close(total, 2 * vq)
    with pytest.raises(ValueError, match="output"):
        va.videoalign(frames, PROMPTS, model_path=va_files[0], checkpoint=va_files[1], output="best")


def test_self_contained_folder(scorer, tmp_path):
    # A folder holding the reward model itself (weights with rm_head, tokenizer with the reward tokens).
    folder = tmp_path / "videoreward-merged"
    scorer.model.save_pretrained(folder)
    scorer.tokenizer.save_pretrained(folder)
    (folder / "model_config.json").write_text(json.dumps(VIDEOALIGN_CONFIG))
    merged = va.VideoAlignScorer(str(folder), None, dtype="float32")
    frames = _frames(b=2)
    torch.testing.assert_close(
        merged.score(frames, PROMPTS[:2], **KW)["overall"], scorer.score(frames, PROMPTS[:2], **KW)["overall"]
    )


def test_errors(va_files, tmp_path):
    base, release = va_files[:2]
    with pytest.raises(ValueError, match="model_path"):
        WeightedRewards([{"name": "videoalign", "args": {}}])(_frames(b=1), ["a cat"])
    with pytest.raises(FileNotFoundError, match="nope"):
        va.VideoAlignScorer(str(tmp_path / "nope"), release)
    empty = tmp_path / "empty-release"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty-release"):
        va.VideoAlignScorer(base, str(empty))
    lora = tmp_path / "lora-release" / "checkpoint-5"
    lora.mkdir(parents=True)
    (lora / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="LoRA"):
        va.VideoAlignScorer(base, str(lora.parent))
    other = tmp_path / "other-template"
    shutil.copytree(release, other)
    cfg = dict(VIDEOALIGN_CONFIG, data_config=dict(VIDEOALIGN_CONFIG["data_config"], prompt_template_type="simple"))
    (other / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="detailed_special"):
        va.VideoAlignScorer(base, str(other))


def test_served_equals_in_process(va_files):
    args = {"model_path": va_files[0], "checkpoint": va_files[1], "dtype": "float32", **KW}
    assert_served_equals_in_process({"name": "videoalign", "args": args}, _frames(), PROMPTS)
