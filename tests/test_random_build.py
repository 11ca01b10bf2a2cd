"""Random-weight builds of real Wan2.1 architectures, and the tiny preset built by the same code.

The 1.3B tests build and save the full 1.42B-parameter transformer once per module (about 35 s,
3.2 GB peak RSS, 2.9 GB on disk under pytest's tmp dir) and load it back through diffusers.
"""

import hashlib
import json

import pytest
import torch

from fgrpo.models.wan.presets import PRESETS

PRESET = "wan2.1-t2v-1.3b"

# sha256 of build_tiny_components(seed=0)'s transformer/vae/text_encoder state dicts, as built by
# tiny.py before random_build.py existed. If this changes, the tiny model changed: bump
# TINY_FORMAT_VERSION (cached folders) and update the digest deliberately.
TINY_SEED0_DIGEST = "60df56d3e52c5da19472ce2d39e38e312778739ee2792e06c90ea941cf5841c8"


def _digest(components: dict) -> str:
    h = hashlib.sha256()
    tensors = {
        f"{n}.{k}": v for n in ("transformer", "vae", "text_encoder") for k, v in components[n].state_dict().items()
    }
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory):
    from fgrpo.models.wan.random_build import save_random_model

    return save_random_model(tmp_path_factory.mktemp("random") / "wan13", PRESET)


@pytest.fixture(scope="module")
def big_pipe(big_folder):
    from diffusers import WanPipeline

    return WanPipeline.from_pretrained(big_folder, torch_dtype=torch.bfloat16, local_files_only=True)


def test_big_folder_is_sharded_safetensors(big_folder):
    tdir = big_folder / "transformer"
    index = json.loads((tdir / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and all(s.endswith(".safetensors") and (tdir / s).is_file() for s in shards)
    assert not list(big_folder.rglob("*.bin"))
    assert (big_folder / "FGRPO_RANDOM_VERSION").read_text().startswith("1 preset=wan2.1-t2v-1.3b seed=0")


def test_big_model_has_the_preset_architecture(big_pipe):
    from diffusers import WanTransformer3DModel

    tr, preset = big_pipe.transformer, PRESETS[PRESET]
    cfg = dict(tr.config)
    for key, value in preset.transformer_config().items():
        assert (tuple(cfg[key]) if key == "patch_size" else cfg[key]) == value, key
    assert (cfg["num_layers"], cfg["num_attention_heads"], cfg["attention_head_dim"]) == (30, 12, 128)
    assert (cfg["ffn_dim"], cfg["text_dim"], cfg["freq_dim"], tuple(cfg["patch_size"])) == (8960, 4096, 256, (1, 2, 2))
    with torch.device("meta"):
        reference = WanTransformer3DModel(**preset.transformer_config())
    expected = sum(p.numel() for p in reference.parameters())
    n = sum(p.numel() for p in tr.parameters())
    assert abs(n - expected) <= 0.01 * expected and 1.40e9 < n < 1.44e9
    # What from_pretrained(torch_dtype=bf16) gives: bf16 except diffusers' keep-in-fp32 modules.
    assert tr.patch_embedding.weight.dtype == torch.bfloat16 and tr.scale_shift_table.dtype == torch.float32


def test_big_model_text_encoder_and_forward(big_pipe):
    tok, te, tr = big_pipe.tokenizer, big_pipe.text_encoder, big_pipe.transformer
    ids = tok(
        ["a red car on a wet road at night"], padding="max_length", max_length=16, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        emb = te(ids.input_ids, ids.attention_mask).last_hidden_state
    assert emb.shape == (1, 16, 4096) and torch.isfinite(emb).all()
    torch.manual_seed(0)
    latents = torch.randn(1, 16, 2, 8, 8, dtype=torch.bfloat16)  # 5 frames at 64x64
    with torch.no_grad():
        out = tr(latents, torch.tensor([999.0]), emb.to(torch.bfloat16), return_dict=False)[0]
    assert out.shape == latents.shape and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all() and out.float().std() > 0.1  # not collapsed to a constant


def test_fast_init_in_process_equals_loaded(tmp_path):
    """The meta-device build (rope tables rebuilt, keep-in-fp32 dtypes) is exactly what loads back."""
    from diffusers import WanTransformer3DModel

    from fgrpo.models.wan.random_build import fast_random_transformer, save_random_model

    folder = save_random_model(tmp_path / "tiny-random", "tiny", seed=3)
    loaded = WanTransformer3DModel.from_pretrained(
        folder, subfolder="transformer", torch_dtype=torch.bfloat16, local_files_only=True
    )
    built = fast_random_transformer("tiny", seed=3)
    a, b = built.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    for table in ("rope.freqs_cos", "rope.freqs_sin"):  # non-persistent buffers: not in the state dicts
        assert torch.equal(built.get_buffer(table), loaded.get_buffer(table)), table
    x = torch.randn(1, 16, 2, 4, 4, dtype=torch.bfloat16)
    text = torch.randn(1, 8, PRESETS["tiny"].text_dim, dtype=torch.bfloat16)
    with torch.no_grad():
        outs = [m(x, torch.tensor([500.0]), text, return_dict=False)[0] for m in (built, loaded)]
    assert torch.equal(*outs) and torch.isfinite(outs[0]).all()
    other = fast_random_transformer("tiny", seed=4).state_dict()
    assert not torch.equal(a["proj_out.weight"], other["proj_out.weight"])


def test_random_model_path_caches_and_rebuilds_incomplete(tmp_path, monkeypatch):
    from fgrpo.models.wan.random_build import RANDOM_MARKER, random_model_path

    monkeypatch.setenv("FGRPO_CACHE", str(tmp_path))
    path = random_model_path("tiny")
    assert path.parent == tmp_path and (path / RANDOM_MARKER).is_file()
    weights = path / "transformer" / "diffusion_pytorch_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert random_model_path("tiny") == path and weights.stat().st_mtime_ns == stamp  # cached: not rebuilt
    (path / RANDOM_MARKER).unlink()  # as if an older or interrupted build were there
    assert random_model_path("tiny") == path and (path / RANDOM_MARKER).is_file()
    assert weights.stat().st_mtime_ns != stamp


def test_tiny_weights_unchanged_by_the_shared_builder():
    from fgrpo.models.wan.tiny import build_tiny_components

    assert _digest(build_tiny_components(seed=0)) == TINY_SEED0_DIGEST
