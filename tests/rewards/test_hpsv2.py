"""HPSv2 reward: open_clip weights converted to transformers, checked against open_clip itself.

The reference is open_clip's own architecture (open_clip_torch, installed with
``--no-deps`` by scripts/setup.sh) on a tiny random model; no hub access.
"""

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fgrpo.rewards import WeightedRewards, aggregate_frames
from fgrpo.rewards import hpsv2 as hpsv2_mod
from fgrpo.rewards.clip import ClipScorer
from tests.helpers.served import assert_served_equals_in_process
from tests.helpers.tiny_hpsv2 import CTX, HEADS, open_clip_installed, open_clip_modules, save_tiny_hpsv2

PROMPTS = ["a red cat on the grass", "a blue dog", "the car runs in the sky"]


@pytest.fixture(scope="module")
def oc():
    """open_clip's ``model`` and ``constants`` modules (tests.helpers.tiny_hpsv2.open_clip_modules)."""
    if not open_clip_installed():
        pytest.skip("open_clip_torch is not installed (scripts/setup.sh installs it with --no-deps)")
    with open_clip_modules() as modules:
        yield modules


@pytest.fixture(scope="module")
def tiny(oc, tmp_path_factory):
    return save_tiny_hpsv2(oc, tmp_path_factory.mktemp("hpsv2"))


@pytest.fixture(scope="module")
def scorer(tiny):
    return hpsv2_mod.get_scorer(tiny.ckpt, tiny.tok_dir, **HEADS)


def _open_clip_tokens(tok, prompts):
    """open_clip's layout: BOS ... EOS, zero-padded to the context length."""
    rows = [tok(p)["input_ids"] for p in prompts]
    return torch.tensor([r + [0] * (CTX - len(r)) for r in rows])


def _frames(b=3, f=4, h=40, w=56, seed=1):
    return torch.rand(b, f, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _pooled(out):
    return getattr(out, "pooler_output", out)  # transformers may return a model output


def test_embeddings_match_open_clip(tiny, scorer):
    pix = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    tokens = _open_clip_tokens(tiny.tok, PROMPTS)
    # open_clip's argmax pooling lands on the EOT token, where transformers' CLIP pools.
    assert torch.equal(tokens.argmax(-1), (tokens == tiny.tok.eos_token_id).int().argmax(-1))
    hf = tiny.tok(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        img_ref, txt_ref = tiny.model.encode_image(pix), tiny.model.encode_text(tokens)
        img = _pooled(scorer.model.get_image_features(pixel_values=pix))
        txt = _pooled(scorer.model.get_text_features(input_ids=hf["input_ids"], attention_mask=hf["attention_mask"]))
    torch.testing.assert_close(img, img_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(txt, txt_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scorer.embed_text(PROMPTS), F.normalize(txt_ref, dim=-1), atol=1e-5, rtol=1e-5)


def test_score_is_hpsv2_formula(tiny, scorer):
    frames = _frames(b=2, f=3)
    pix = scorer.preprocess(frames.flatten(0, 1))
    with torch.no_grad():
        img = tiny.model.encode_image(pix, normalize=True).view(2, 3, -1)
        txt = tiny.model.encode_text(_open_clip_tokens(tiny.tok, PROMPTS[:2]), normalize=True)
    # HPSv2: diag(image_features @ text_features.T) of normalised features, no logit scale.
    want = torch.einsum("bfd,bd->bf", img, txt)
    got = hpsv2_mod.hpsv2(frames, PROMPTS[:2], checkpoint=tiny.ckpt, tokenizer_path=tiny.tok_dir, **HEADS)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got.abs().max() <= 1.0


def test_shape_deterministic_and_batching(scorer):
    frames = _frames()
    s1, s2 = scorer.score_frames(frames, PROMPTS), scorer.score_frames(frames, PROMPTS)
    assert s1.shape == (3, 4) and s1.dtype == torch.float32
    assert torch.isfinite(s1).all() and torch.equal(s1, s2) and s1.std() > 0
    batched = scorer.score_frames(frames, PROMPTS, batch_size=5)  # chunks cross video boundaries
    single = torch.cat([scorer.score_frames(frames[i : i + 1], PROMPTS[i : i + 1], batch_size=1) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_preprocessing_is_open_clip_val_transform(oc, scorer):
    """open_clip's val transform is torchvision code that cannot run here; its constants
    (from ViT-H-14's config and open_clip.constants) configure transformers' CLIPImageProcessor,
    which resizes with PIL bicubic as torchvision does on PIL images, as the reference."""
    from PIL import Image
    from transformers import CLIPImageProcessor
    from transformers.image_utils import PILImageResampling

    size = json.loads((oc.folder / "model_configs" / "ViT-H-14.json").read_text())["vision_cfg"]["image_size"]
    mean, std = list(oc.constants.OPENAI_DATASET_MEAN), list(oc.constants.OPENAI_DATASET_STD)
    ref_proc = CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=PILImageResampling.BICUBIC,
        image_mean=mean,
        image_std=std,
    )
    ip = hpsv2_mod.open_clip_val_processor(scorer.tokenizer, size).image_processor
    assert (ip.size["shortest_edge"], ip.crop_size["height"], ip.crop_size["width"]) == (size, size, size)
    assert ip.resample == PILImageResampling.BICUBIC
    assert np.allclose(ip.image_mean, mean) and np.allclose(ip.image_std, std)
    # The tiny scorer uses the same transform at its own 32 px.
    assert scorer.processor.image_processor.crop_size["height"] == 32 and scorer.shortest_edge == 32

    frames = torch.randint(0, 256, (3, 3, 240, 320), generator=torch.Generator().manual_seed(2)) / 255.0
    frames = F.avg_pool2d(frames, 3, stride=1, padding=1)  # smoother, like real video
    frames = (frames * 255).round() / 255  # uint8-exact, so both paths start from identical pixels
    s224 = ClipScorer.from_model(
        scorer.model, hpsv2_mod.open_clip_val_processor(scorer.tokenizer, size), use_logit_scale=False
    )
    mine = s224.preprocess(frames)
    pil = [Image.fromarray((f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for f in frames]
    ref = ref_proc(images=pil, return_tensors="pt")["pixel_values"]
    assert mine.shape == ref.shape == (3, 3, size, size)
    assert (mine - ref).abs().max() < 2e-2


def test_bf16_close_to_fp32(tiny, scorer):
    frames = _frames(b=2, f=3)
    bf = hpsv2_mod.get_scorer(tiny.ckpt, tiny.tok_dir, dtype="bfloat16", **HEADS)
    assert bf is not scorer and next(bf.model.parameters()).dtype == torch.bfloat16
    got = bf.score_frames(frames, PROMPTS[:2])
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, scorer.score_frames(frames, PROMPTS[:2]), atol=3e-2, rtol=0)


def test_checkpoint_formats(tiny):
    from safetensors.torch import save_file

    path = tiny.root / "ddp.safetensors"  # DistributedDataParallel keys, safetensors file
    save_file({f"module.{k}": v.contiguous() for k, v in tiny.sd.items()}, str(path))
    loaded = hpsv2_mod.load_open_clip_state_dict(str(path))
    assert loaded.keys() == tiny.sd.keys() and all(torch.equal(loaded[k], tiny.sd[k]) for k in loaded)


def test_errors_name_the_culprit(tiny):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        hpsv2_mod.get_scorer(str(tiny.root / "nope.pt"), tiny.tok_dir)
    with pytest.raises(FileNotFoundError, match="no_tokenizer"):
        hpsv2_mod.get_scorer(tiny.ckpt, str(tiny.root / "no_tokenizer"))
    (tiny.root / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        hpsv2_mod.get_scorer(str(tiny.root / "garbage.pt"), tiny.tok_dir)
    for bad, key in (("missing", "visual.ln_post.weight"), ("extra", "visual.transformer.resblocks.0.ls_1.gamma")):
        sd = dict(tiny.sd)
        if bad == "missing":
            del sd[key]
        else:
            sd[key] = torch.ones(64)  # layer scale: an architecture the converter does not support
        torch.save(sd, tiny.root / f"{bad}.pt")
        with pytest.raises(ValueError, match=re.escape(f"{bad}.pt") + ".*" + re.escape(key)):
            hpsv2_mod.get_scorer(str(tiny.root / f"{bad}.pt"), tiny.tok_dir, **HEADS)
    spec = {"name": "hpsv2", "args": {"tokenizer_path": tiny.tok_dir}}
    with pytest.raises(ValueError, match="checkpoint"):
        WeightedRewards([spec])(_frames(b=1, f=1), ["a cat"])


def test_registry_topk(tiny, scorer):
    frames = _frames(f=10)
    args = {"checkpoint": tiny.ckpt, "tokenizer_path": tiny.tok_dir, **HEADS}
    total, comps = WeightedRewards([{"name": "hpsv2", "args": args, "frame_aggregation": "topk:0.3"}])(frames, PROMPTS)
    per_frame = scorer.score_frames(frames, PROMPTS)
    assert total.shape == (3,)
    torch.testing.assert_close(total, per_frame.topk(3, dim=1).values.mean(dim=1))
    torch.testing.assert_close(comps["hpsv2"], aggregate_frames(per_frame, "topk:0.3"))
    assert hpsv2_mod.get_scorer(tiny.ckpt, tiny.tok_dir, **HEADS) is scorer  # loaded once


def test_vit_h_14_geometry(oc):
    """HPSv2's real architecture, built on the meta device (no memory), converts to ViT-H-14's CLIPConfig."""
    from transformers import CLIPModel

    cfg = json.loads((oc.folder / "model_configs" / "ViT-H-14.json").read_text())
    with torch.device("meta"):
        sd = oc.model.CLIP(**cfg).state_dict()
    config = hpsv2_mod.infer_config(sd)
    v, t = config.vision_config, config.text_config
    assert (
        v.hidden_size,
        v.num_hidden_layers,
        v.num_attention_heads,
        v.patch_size,
        v.image_size,
        v.intermediate_size,
    ) == (1280, 32, 16, 14, 224, 5120)
    assert (
        t.hidden_size,
        t.num_hidden_layers,
        t.num_attention_heads,
        t.max_position_embeddings,
        t.vocab_size,
        t.intermediate_size,
    ) == (1024, 24, 16, 77, 49408, 4096)
    assert config.projection_dim == 1024 and v.hidden_act == t.hidden_act == "gelu"  # no quick_gelu in ViT-H-14
    assert (t.bos_token_id, t.eos_token_id) == (49406, 49407)
    with torch.device("meta"):
        want = CLIPModel(config).state_dict()
    got = hpsv2_mod.convert_state_dict(sd)
    assert got.keys() == want.keys()
    assert all(got[k].shape == want[k].shape for k in got)


def test_served_equals_in_process(tiny):
    args = {"checkpoint": tiny.ckpt, "tokenizer_path": tiny.tok_dir, **HEADS}
    assert_served_equals_in_process(
        {"name": "hpsv2", "args": args, "frame_aggregation": "topk:0.3"}, _frames(), PROMPTS
    )
