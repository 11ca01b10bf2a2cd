"""Text encodings computed once, cached on disk, and the UMT5 encoder freed.

UMT5-XXL is 5.68B parameters (11.4 GB in bf16). Training only ever encodes a fixed set of
prompts (the prompt file's train and held-out prompts, plus the empty negative prompt), so every
rank encodes a 1/world slice of them once at start, the slices are written as safetensors files,
and the encoder is freed. Later steps read embeddings back memory-mapped (:meth:`lookup`).

Layout of a cache folder (one per :func:`cache_key`, e.g. ``<runs_dir>/.cache/text-embeddings/<key>/``)::

    index.json                     prompt -> [part file, tensor name, token length], plus L, D, dtype
    part-r00000-00000.safetensors  each prompt's embedding [length, D], trimmed: the zeros past a
    ...                            prompt's length are not stored (lookup pads them back)

The folder appears only complete: it is built as a sibling ``.<key>.<nonce>.partial`` folder,
which is renamed into place after every rank has written its parts and rank 0 the index. A crash
mid-build leaves only the ``.partial`` folder; it is never read, and a later build deletes it once
nothing has been written into it for ``stale_after_s``. Builds of the same key by concurrent jobs
(the points of a sweep) each write their own ``.partial`` folder; the first rename wins and the
others discard theirs.

This module does not import from ``fgrpo.trainer``: ranks come from ``torch.distributed``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as tdist

from fgrpo.fileio import atomic_write_text

from .text_encoder import EncodeFn

if TYPE_CHECKING:
    from safetensors import safe_open

FORMAT_VERSION = 1
INDEX = "index.json"
NEGATIVE_PROMPT = ""  # classifier-free guidance's negative prompt: always cached
STALE_AFTER_S = 3600.0  # a .partial folder untouched this long belongs to a dead build
_FULL_HASH_BYTES = 32 << 20  # files up to this size (configs, tokenizer files) are hashed whole
_SAMPLE_BYTES = 64 << 10  # weight files: their first MiB (header) and 16 samples of this size
_SAMPLES = 16


# ----------------------------------------------------------------------------- keys


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _hash_file(h, path: Path) -> None:
    size = path.stat().st_size
    h.update(f"{size}\n".encode())
    with path.open("rb") as f:
        if size <= _FULL_HASH_BYTES:
            h.update(f.read())
            return
        h.update(f.read(1 << 20))  # a safetensors header: every tensor's name, dtype, shape, offsets
        for i in range(_SAMPLES):
            f.seek((size - _SAMPLE_BYTES) * (i + 1) // _SAMPLES)
            h.update(f.read(_SAMPLE_BYTES))


def encoder_identity(encoder: str | os.PathLike) -> str:
    """A cheap fingerprint of an encoder (a few MB read, never all 11 GB).

    ``encoder`` is a Wan diffusers folder (its ``text_encoder/`` and ``tokenizer/`` are
    fingerprinted: both decide the embeddings), a single folder (e.g. ``text_encoder/``), or any
    other string, used as given. Each file counts by relative name, size and content: small files
    whole, weight files by their first MiB (the safetensors header) and 16 evenly spaced 64 KiB
    samples. Modification times do not count, so a copied model folder keeps its key.
    """
    path = Path(encoder)
    if not path.is_dir():
        return f"identity:{encoder}"
    folders = [path / s for s in ("text_encoder", "tokenizer") if (path / s).is_dir()] or [path]
    h = hashlib.sha256()
    for folder in folders:
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = f.relative_to(folder)
            if any(part.startswith(".") for part in rel.parts):
                continue
            h.update(f"{folder.name}/{rel.as_posix()}\n".encode())
            _hash_file(h, f)
    return "files:" + h.hexdigest()


def cache_key(encoder: str | os.PathLike, prompts: Iterable[str], max_text_tokens: int, dtype) -> str:
    """The cache folder's name: a hash of the encoder's identity (:func:`encoder_identity`), the
    set of prompts (with ``""``; order and repeats do not change the embeddings, so not the key),
    ``max_text_tokens``, the dtype, and the transformers version (its UMT5 code computes them)."""
    import transformers

    h = hashlib.sha256()
    h.update(
        f"fgrpo-text-cache v{FORMAT_VERSION}\n{encoder_identity(encoder)}\n{int(max_text_tokens)}\n"
        f"{_dtype_name(dtype)}\ntransformers {transformers.__version__}\n".encode()
    )
    for p in sorted(set(prompts) | {NEGATIVE_PROMPT}):
        b = p.encode("utf-8")
        h.update(f"{len(b)}:".encode() + b)
    return h.hexdigest()[:32]


def default_cache_folder(runs_dir: str | os.PathLike, key: str) -> Path:
    """``<runs_dir>/.cache/text-embeddings/<key>``: shared by every run and sweep point there."""
    return Path(runs_dir) / ".cache" / "text-embeddings" / key


# ----------------------------------------------------------------------------- collectives


def _dist_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None:
        rank = tdist.get_rank() if tdist.is_initialized() else 0
    if world_size is None:
        world_size = tdist.get_world_size() if tdist.is_initialized() else 1
    if world_size > 1 and not tdist.is_initialized():
        raise RuntimeError("a text-embedding cache build over several ranks needs torch.distributed initialised")
    return rank, world_size


def _coll_device() -> torch.device:
    # The trainer's "cpu:gloo,cuda:nccl" group carries CPU tensors; a pure NCCL group needs CUDA ones.
    return torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else torch.device("cpu")


def _broadcast_int(value: int, world_size: int) -> int:
    if world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_coll_device())
    tdist.broadcast(t, src=0)
    return int(t.item())


def _together(fn: Callable | None, world_size: int, what: str):
    """Run ``fn`` (None: nothing) on this rank, then agree with every rank that all succeeded.

    The agreement runs even when ``fn`` raises (that exception then propagates), so no rank is
    left waiting at a barrier; ranks whose own part succeeded raise RuntimeError instead."""
    ok, result = False, None
    try:
        result = fn() if fn is not None else None
        ok = True
    finally:
        all_ok = _all_ok(ok, world_size)
    if not all_ok:
        raise RuntimeError(f"another rank failed while {what}")
    return result


def _all_ok(ok: bool, world_size: int) -> bool:
    """A barrier that also tells every rank whether every rank succeeded (no rank is left waiting
    at a barrier for a rank that has raised)."""
    if world_size == 1:
        return ok
    t = torch.tensor([0 if ok else 1], dtype=torch.int64, device=_coll_device())
    tdist.all_reduce(t)
    return int(t.item()) == 0


# ----------------------------------------------------------------------------- the cache


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _newest_mtime(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for p in folder.iterdir():
        try:
            times.append(p.stat().st_mtime)
        except FileNotFoundError:
            pass
    return max(times)


def _remove_stale_partials(folder: Path, stale_after_s: float) -> None:
    now = time.time()
    for p in folder.parent.glob(f".{folder.name}.*.partial"):
        try:
            if now - _newest_mtime(p) >= stale_after_s:
                shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:
            pass


class TextEmbeddingCache:
    """Embeddings of a fixed prompt set, read back memory-mapped; see the module docstring."""

    def __init__(self, folder: str | os.PathLike, index: dict):
        self.folder = Path(folder)
        self.key: str | None = index.get("key")
        self.max_text_tokens: int = int(index["max_text_tokens"])
        self.dim: int = int(index["dim"])
        self.dtype: torch.dtype = getattr(torch, index["dtype"])
        self._entries: dict[str, list] = index["prompts"]
        self._files: dict[str, safe_open] = {}
        # Filled in by build(): what this rank did.
        self.encoded = 0  # prompts this rank encoded (0 when the cache already existed)
        self.build_s = 0.0

    # ----- opening
    @staticmethod
    def is_complete(folder: str | os.PathLike) -> bool:
        return (Path(folder) / INDEX).is_file()

    @classmethod
    def open(cls, folder: str | os.PathLike, wait_s: float = 0.0) -> "TextEmbeddingCache":
        """Open a complete cache folder; ``wait_s`` covers a shared filesystem that shows another
        host's rename late. Raises FileNotFoundError if it is not complete by then."""
        folder = Path(folder)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
                break
            except FileNotFoundError:
                if time.monotonic() >= deadline:
                    raise FileNotFoundError(f"{folder} is not a complete text-embedding cache (no {INDEX})") from None
                time.sleep(0.5)
        if index.get("format") != FORMAT_VERSION:
            raise ValueError(f"{folder / INDEX}: format {index.get('format')!r}, expected {FORMAT_VERSION}")
        return cls(folder, index)

    @classmethod
    def build(
        cls,
        encode_fn: EncodeFn,
        prompts: Iterable[str],
        folder: str | os.PathLike,
        rank: int | None = None,
        world_size: int | None = None,
        batch_size: int = 16,
        key: str | None = None,
        part_bytes: int = 1 << 30,
        stale_after_s: float = STALE_AFTER_S,
    ) -> "TextEmbeddingCache":
        """Collective (every rank calls it): make ``folder`` hold every prompt's embedding, then open it.

        ``encode_fn(prompts) -> (embeddings [B, L, D], lengths [B])`` (see
        :func:`components_encode_fn`) is not called at all when ``folder`` is already complete, so
        it may load the encoder lazily. Otherwise the unique prompts (with ``""``), sorted, are cut
        into batches of ``batch_size`` and rank r encodes the r-th contiguous 1/world of the
        batches (the batches do not depend on the world size, so neither do the bits). Each rank
        writes its embeddings, trimmed to their lengths, in safetensors parts of about
        ``part_bytes``; rank 0 then writes the index and renames the folder into place.
        ``rank``/``world_size`` default to torch.distributed's (the group must be initialised
        when ``world_size > 1``); ``key`` is recorded in the index.
        """
        t0 = time.perf_counter()
        folder = Path(folder)
        rank, world_size = _dist_info(rank, world_size)
        unique = sorted(set(prompts) | {NEGATIVE_PROMPT})
        nonce, error = 0, None
        if rank == 0:  # decides for every rank: build (nonce > 0), use what is there (0), failed (-1)
            try:
                if folder.exists() and not cls.is_complete(folder):  # not made by a build: do not trust it
                    aside = folder.parent / f".{folder.name}.{secrets.token_hex(6)}.partial"
                    os.replace(folder, aside)
                    shutil.rmtree(aside, ignore_errors=True)
                if not cls.is_complete(folder):
                    nonce = 1 + secrets.randbits(48)  # names this build's .partial folder
            except Exception as e:
                nonce, error = -1, e
        nonce = _broadcast_int(nonce, world_size)
        if error is not None:
            raise error
        if nonce < 0:
            raise RuntimeError(f"rank 0 failed to prepare the text-embedding cache {folder}")
        if nonce == 0:
            cache = cls.open(folder, wait_s=60.0)
            lacking = [p for p in unique if p not in cache]
            if lacking:
                raise ValueError(
                    f"{folder} was built for another prompt set (it lacks {len(lacking)}, e.g. "
                    f"{lacking[0]!r}): name cache folders by cache_key()"
                )
            return cache

        partial = folder.parent / f".{folder.name}.{nonce:012x}.partial"

        def start():
            folder.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_partials(folder, stale_after_s)
            partial.mkdir()

        try:
            _together(start if rank == 0 else None, world_size, f"creating {partial}")
            encoded = _together(
                lambda: _write_rank_parts(encode_fn, unique, partial, rank, world_size, batch_size, part_bytes),
                world_size,
                f"encoding prompts into {partial}",
            )
            _together(
                (lambda: _finish(partial, folder, unique, world_size, key)) if rank == 0 else None,
                world_size,
                f"finishing {folder}",
            )
        except BaseException:
            if rank == 0:
                shutil.rmtree(partial, ignore_errors=True)
            raise
        cache = cls.open(folder, wait_s=60.0)
        cache.encoded = encoded
        cache.build_s = time.perf_counter() - t0
        return cache

    # ----- reading
    @property
    def prompts(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def length(self, prompt: str) -> int:
        """The prompt's token count (its embedding is zero past it)."""
        return int(self._entries[prompt][2])

    def nbytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())

    def _file(self, part: str) -> safe_open:
        f = self._files.get(part)
        if f is None:
            from safetensors import safe_open

            f = self._files[part] = safe_open(str(self.folder / part), framework="pt", device="cpu")
        return f

    def lookup(self, prompts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """``[B, max_text_tokens, D]`` in the stored dtype, zero past each prompt's length (equal to
        ``encode_prompts(prompts)``). Parts are memory-mapped: only these rows are read. Raises
        KeyError naming the prompts that are not in the cache."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._entries]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            shown = ", ".join(repr(p) for p in missing[:5]) + more
            raise KeyError(f"not in the text-embedding cache {self.folder}: {shown}")
        # Padded on the target device: only the stored tokens travel from the page cache / host.
        out = torch.zeros(len(prompts), self.max_text_tokens, self.dim, dtype=self.dtype, device=device)
        rows: dict[str, torch.Tensor] = {}
        for i, p in enumerate(prompts):
            row = rows.get(p)
            if row is None:
                part, name, length = self._entries[p]
                row = self._file(part).get_tensor(name) if length else torch.zeros(0, self.dim, dtype=self.dtype)
                row = rows[p] = row.to(out.device)
            out[i, : row.shape[0]] = row
        return out


def _write_rank_parts(
    encode_fn: EncodeFn, unique: list[str], partial: Path, rank: int, world_size: int, batch_size: int, part_bytes: int
) -> int:
    """Encode this rank's batches; write parts and a manifest (prompt -> entry). Returns #prompts."""
    from safetensors.torch import save_file

    batches = [list(range(i, min(i + batch_size, len(unique)))) for i in range(0, len(unique), batch_size)]
    mine = batches[rank * len(batches) // world_size : (rank + 1) * len(batches) // world_size]
    manifest: dict[str, list] = {}
    shape = {}
    buffer: dict[str, torch.Tensor] = {}
    buffered = 0
    parts = 0

    def flush():
        nonlocal buffer, buffered, parts
        if not buffer:
            return
        name = f"part-r{rank:05d}-{parts:05d}.safetensors"
        tmp = partial / f".{name}.tmp"
        save_file(buffer, str(tmp), metadata={"format": "fgrpo-text-cache", "version": str(FORMAT_VERSION)})
        with tmp.open("rb") as f:  # on disk before the index that names it can be
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())  # safetensors creates 0600: other users' runs share the cache
        os.replace(tmp, partial / name)
        for tensor_name in buffer:
            manifest[unique[int(tensor_name)]][0] = name
        buffer, buffered, parts = {}, 0, parts + 1

    encoded = 0
    for idx in mine:
        batch = [unique[i] for i in idx]
        emb, lengths = encode_fn(batch)
        if emb.dim() != 3 or emb.shape[0] != len(batch) or lengths.shape != (len(batch),):
            raise ValueError(
                f"encode_fn returned {tuple(emb.shape)} and {tuple(lengths.shape)} for {len(batch)} prompts"
            )
        shape = {"max_text_tokens": int(emb.shape[1]), "dim": int(emb.shape[2]), "dtype": _dtype_name(emb.dtype)}
        emb = emb.cpu()
        for row, (i, prompt, n) in enumerate(zip(idx, batch, lengths.tolist())):
            n = int(n)
            if n:  # a copy: a view would keep the whole padded batch alive
                t = buffer[str(i)] = emb[row, :n].clone()
                buffered += t.numel() * t.element_size()
            manifest[prompt] = [None, str(i), n]
        encoded += len(batch)
        if buffered >= part_bytes:
            flush()
    flush()
    atomic_write_text(partial / f"rank-{rank:05d}.json", json.dumps({**shape, "prompts": manifest}))
    return encoded


def _finish(partial: Path, folder: Path, unique: list[str], world_size: int, key: str | None) -> None:
    """Rank 0, after every rank has written: merge the manifests into the index, rename into place."""
    entries: dict[str, list] = {}
    shape: dict = {}
    for r in range(world_size):
        m = json.loads((partial / f"rank-{r:05d}.json").read_text(encoding="utf-8"))
        entries.update(m.pop("prompts"))
        shape = shape or m
    lacking = [p for p in unique if p not in entries]
    if lacking or not shape:
        raise RuntimeError(f"{partial}: the ranks' parts lack {len(lacking)} prompt(s), e.g. {lacking[:3]}")
    index = {"format": FORMAT_VERSION, "key": key, **shape, "prompts": {p: entries[p] for p in unique}}
    atomic_write_text(partial / INDEX, json.dumps(index, ensure_ascii=False))
    for r in range(world_size):
        (partial / f"rank-{r:05d}.json").unlink()
    try:
        os.rename(partial, folder)
    except OSError:
        if not TextEmbeddingCache.is_complete(folder):  # not "another job finished first"
            raise
        shutil.rmtree(partial, ignore_errors=True)  # another build of the same key won the race
