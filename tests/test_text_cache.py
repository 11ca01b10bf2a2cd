"""The text-embedding cache: encoded once (split over ranks), trimmed on disk, read back bit-for-bit."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fgrpo.data.prompts import bundled_prompt_corpus
from fgrpo.models.wan import load_wan
from fgrpo.models.wan import text_cache as tc
from fgrpo.models.wan.text_cache import TextEmbeddingCache, cache_key
from fgrpo.models.wan.text_encoder import (
    LazyTextEncoder,
    components_encode_fn,
    encode_with_lengths,
    free_module,
    free_text_encoder,
)

REPO = Path(__file__).resolve().parents[1]
L = 12  # below the longest tiny prompt (14 tokens): truncation is covered too
PROMPTS = bundled_prompt_corpus()


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    return {d: load_wan(tiny_model_dir, d, max_text_tokens=L) for d in ("float32", "bfloat16")}


class Counting:
    """An encode_fn that counts its calls and prompts."""

    def __init__(self, fn):
        self.fn, self.calls, self.prompts = fn, 0, 0

    def __call__(self, prompts):
        self.calls += 1
        self.prompts += len(prompts)
        return self.fn(prompts)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    view = {torch.float32: torch.int32, torch.bfloat16: torch.int16}[a.dtype]
    return a.dtype == b.dtype and torch.equal(a.view(view), b.view(view))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_encode_with_lengths_is_encode_prompts(models, dtype):
    m = models[dtype]
    emb, lengths = encode_with_lengths(m.tokenizer, m.text_encoder, PROMPTS + [""], L, m.dtype)
    assert same_bits(emb, m.encode_prompts(PROMPTS + [""]))
    mask = m.tokenizer(PROMPTS + [""], padding="max_length", max_length=L, truncation=True).attention_mask
    assert lengths.tolist() == [sum(row) for row in mask]
    assert lengths.max() == L and lengths.min() < L and lengths[-1] == 1  # truncated, padded, "" is </s>


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lookup_equals_encode_prompts(models, dtype, tmp_path):
    m = models[dtype]
    cache = TextEmbeddingCache.build(components_encode_fn(m), PROMPTS, tmp_path / "c", batch_size=8)
    assert cache.encoded == len(PROMPTS) + 1 and len(cache) == len(PROMPTS) + 1  # + the negative prompt
    asked = [PROMPTS[5], "", PROMPTS[0], PROMPTS[5], PROMPTS[-1]]  # repeats and order as a step draws them
    got, want = cache.lookup(asked), m.encode_prompts(asked)
    assert got.shape == (5, L, m.text_encoder.config.d_model) and got.dtype == m.dtype
    # encode_prompts' padding is hidden * 0, which may be -0.0: equal values; the tokens are bit-equal.
    assert torch.equal(got, want)
    for i, p in enumerate(asked):
        n = cache.length(p)
        assert same_bits(got[i, :n], want[i, :n]) and not got[i, n:].any()
    # Trimmed on disk: the stored tokens (plus headers and the index), not B x L.
    stored = sum(cache.length(p) for p in cache.prompts) * got.shape[-1] * got.element_size()
    assert stored <= cache.nbytes_on_disk() < stored + 64 * 1024
    assert sum(cache.length(p) for p in cache.prompts) < 0.8 * len(cache) * L


def test_second_build_encodes_nothing(models, tmp_path):
    m = models["float32"]
    first = Counting(components_encode_fn(m))
    TextEmbeddingCache.build(first, PROMPTS, tmp_path / "c", batch_size=16)
    assert first.calls == 5 and first.prompts == len(PROMPTS) + 1  # 73 prompts in batches of 16
    second = Counting(components_encode_fn(m))
    cache = TextEmbeddingCache.build(second, list(reversed(PROMPTS)), tmp_path / "c", batch_size=16)
    assert second.calls == 0 and cache.encoded == 0
    assert torch.equal(cache.lookup(PROMPTS[:3]), m.encode_prompts(PROMPTS[:3]))
    # A complete folder built for another prompt set is refused rather than half-used.
    with pytest.raises(ValueError, match="another prompt set"):
        TextEmbeddingCache.build(second, PROMPTS + ["a new prompt"], tmp_path / "c")
    assert second.calls == 0


def test_missing_prompt_raises_key_error_naming_it(models, tmp_path):
    cache = TextEmbeddingCache.build(components_encode_fn(models["float32"]), PROMPTS[:4], tmp_path / "c")
    with pytest.raises(KeyError, match="a purple giraffe on the moon"):
        cache.lookup([PROMPTS[0], "a purple giraffe on the moon"])


def test_key_follows_prompts_encoder_length_and_dtype(tiny_model_dir, tmp_path):
    key = cache_key(tiny_model_dir, PROMPTS, L, torch.bfloat16)
    assert key == cache_key(tiny_model_dir, list(reversed(PROMPTS)) + PROMPTS[:3] + [""], L, "bfloat16")
    assert key != cache_key(tiny_model_dir, PROMPTS[:-1], L, torch.bfloat16)  # a prompt removed
    assert key != cache_key(tiny_model_dir, PROMPTS[:-1] + [PROMPTS[-1] + "!"], L, torch.bfloat16)  # edited
    assert key != cache_key(tiny_model_dir, PROMPTS, L + 1, torch.bfloat16)
    assert key != cache_key(tiny_model_dir, PROMPTS, L, torch.float32)
    assert key != cache_key("some/other-encoder", PROMPTS, L, torch.bfloat16)
    # A copy of the model has the same key (no mtimes); other encoder weights or tokenizer do not.
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert cache_key(copy, PROMPTS, L, torch.bfloat16) == key
    weights = next((copy / "text_encoder").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    changed_weights = cache_key(copy, PROMPTS, L, torch.bfloat16)
    assert changed_weights != key
    tok = next((copy / "tokenizer").glob("tokenizer.json"))
    tok.write_text(tok.read_text().replace('"<unk>"', '"<UNK>"'))
    assert cache_key(copy, PROMPTS, L, torch.bfloat16) not in (key, changed_weights)


def test_large_weight_files_are_sampled_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(tc, "_FULL_HASH_BYTES", 1 << 16)
    enc = tmp_path / "text_encoder"
    enc.mkdir()
    big = enc / "model.safetensors"
    big.write_bytes(bytes(4 << 20))
    reads = []
    real_open = Path.open

    def counting_open(self, *a, **kw):
        f = real_open(self, *a, **kw)
        if self == big:
            real_read = f.read
            f.read = lambda n=-1: reads.append(n) or real_read(n)
        return f

    monkeypatch.setattr(Path, "open", counting_open)
    before = tc.encoder_identity(enc)
    assert reads and -1 not in reads and sum(reads) <= (1 << 20) + tc._SAMPLES * tc._SAMPLE_BYTES
    with big.open("r+b") as f:  # a change in the header region is seen
        f.seek(100)
        f.write(b"x")
    assert tc.encoder_identity(enc) != before


def test_half_built_partial_is_ignored_and_replaced(models, tmp_path):
    m = models["float32"]
    folder = tmp_path / "text-embeddings" / "key"
    # A build killed mid-way (an hour ago): a part and a complete-looking index, but a .partial name.
    dead = folder.parent / ".key.0123456789ab.partial"
    dead.mkdir(parents=True)
    (dead / "index.json").write_text("{}")
    (dead / "part-r00000-00000.safetensors").write_bytes(b"half a file")
    old = time.time() - 2 * tc.STALE_AFTER_S
    for p in (dead, *dead.iterdir()):
        os.utime(p, (old, old))
    # One still being written by a concurrent job: left alone, and not read either.
    live = folder.parent / ".key.ba9876543210.partial"
    live.mkdir()
    (live / "index.json").write_text("{}")
    assert not TextEmbeddingCache.is_complete(folder)
    count = Counting(components_encode_fn(m))
    cache = TextEmbeddingCache.build(count, PROMPTS, folder)
    assert count.prompts == len(PROMPTS) + 1 and torch.equal(cache.lookup(PROMPTS), m.encode_prompts(PROMPTS))
    assert not dead.exists() and live.exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == [live.name, "key"]
    # A final-named folder without an index (not made by a build) is replaced, not trusted.
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "junk").write_text("x")
    cache = TextEmbeddingCache.build(components_encode_fn(m), PROMPTS, folder)
    assert not (folder / "junk").exists() and cache.encoded == len(PROMPTS) + 1


def test_failed_build_leaves_no_cache(models, tmp_path):
    m = models["float32"]
    calls = []

    def failing(prompts):
        calls.append(prompts)
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        return components_encode_fn(m)(prompts)

    folder = tmp_path / "c"
    with pytest.raises(RuntimeError, match="simulated"):
        TextEmbeddingCache.build(failing, PROMPTS, folder, batch_size=8)
    assert not folder.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        TextEmbeddingCache.open(folder)


def test_free_module_releases_the_encoder(tiny_model_dir):
    m = load_wan(tiny_model_dir, "bfloat16", max_text_tokens=L)
    encoder = m.text_encoder  # another reference: the weights are released all the same
    assert encoder is not None
    params = sum(p.numel() for p in encoder.parameters())
    assert free_text_encoder(m) == params * 2
    assert m.text_encoder is None and all(p.is_meta for p in encoder.parameters())
    with pytest.raises(AttributeError):
        m.encode_prompts(["a red car"])
    assert free_module(torch.nn.Linear(4, 4)) == (16 + 4) * 4


WORKER = r"""
import json, sys, torch, torch.distributed as dist
from fgrpo.data.prompts import bundled_prompt_corpus
from fgrpo.models.wan import load_wan
from fgrpo.models.wan.text_cache import TextEmbeddingCache
from fgrpo.models.wan.text_encoder import components_encode_fn
model, folder, store, out, rank = sys.argv[1:6]
dist.init_process_group("gloo", init_method="file://" + store, rank=int(rank), world_size=2)
m = load_wan(model, "bfloat16", max_text_tokens=int(sys.argv[6]))
cache = TextEmbeddingCache.build(components_encode_fn(m), bundled_prompt_corpus(), folder, batch_size=8)
prompts = cache.prompts
same = torch.equal(cache.lookup(prompts), m.encode_prompts(prompts))
json.dump({"encoded": cache.encoded, "same": same}, open(out, "w"))
dist.destroy_process_group()
"""


def test_two_process_build_splits_the_work_and_matches_one_process(models, tiny_model_dir, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    two = tmp_path / "two" / "key"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(tiny_model_dir),
                str(two),
                str(tmp_path / "store"),
                str(tmp_path / f"out{r}.json"),
                str(r),
                str(L),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-4000:]
    results = [json.loads((tmp_path / f"out{r}.json").read_text()) for r in range(2)]
    n = len(PROMPTS) + 1  # 73 prompts: 10 batches of 8, 5 per rank
    assert [r["encoded"] for r in results] == [40, n - 40] and all(r["same"] for r in results)
    assert sorted(p.name for p in two.iterdir()) == [
        "index.json",
        "part-r00000-00000.safetensors",
        "part-r00001-00000.safetensors",
    ]
    assert sorted(p.name for p in two.parent.iterdir()) == ["key"]  # no .partial left
    one = TextEmbeddingCache.build(components_encode_fn(models["bfloat16"]), PROMPTS, tmp_path / "one", batch_size=8)
    cached_two = TextEmbeddingCache.open(two)
    assert cached_two.prompts == one.prompts
    assert same_bits(cached_two.lookup(one.prompts), one.lookup(one.prompts))


def test_lazy_encoder_loads_only_when_something_is_encoded(models, tiny_model_dir, tmp_path):
    lazy = LazyTextEncoder(tiny_model_dir, "bfloat16", L)
    assert not lazy.loaded
    cache = TextEmbeddingCache.build(lazy, PROMPTS, tmp_path / "c", batch_size=32)
    assert lazy.loaded and torch.equal(cache.lookup(PROMPTS), models["bfloat16"].encode_prompts(PROMPTS))
    assert lazy.text_encoder is not None
    params = sum(p.numel() for p in lazy.text_encoder.parameters())
    assert lazy.free() == params * 2 and not lazy.loaded
    again = LazyTextEncoder(tiny_model_dir, torch.bfloat16, L)
    TextEmbeddingCache.build(again, PROMPTS, tmp_path / "c")
    assert not again.loaded and again.free() == 0  # complete cache: the encoder is never loaded


def test_parts_are_cut_at_part_bytes(models, tmp_path):
    m = models["float32"]
    cache = TextEmbeddingCache.build(components_encode_fn(m), PROMPTS, tmp_path / "c", batch_size=16, part_bytes=1)
    parts = sorted(p.name for p in cache.folder.glob("*.safetensors"))
    assert parts == [f"part-r00000-{i:05d}.safetensors" for i in range(5)]  # one per batch of 16
    assert torch.equal(cache.lookup(PROMPTS), m.encode_prompts(PROMPTS))
