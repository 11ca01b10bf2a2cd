"""Prompt files: one prompt per line, or JSONL with a `prompt` field.

Other JSONL fields (an id, a category, ...) are ignored by training and carried into the per-video
results of `fgrpo eval`; an image-to-video model reads each record's `image` (image_prompts.py).
The last `heldout` prompts of a file are the held-out evaluation set; the rest are trained on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_PROMPTS = REPO_ROOT / "prompts" / "tiny.txt"
T = TypeVar("T")  # a prompt, or a prompt record


def resolve_prompt_file(file: str) -> Path:
    """A relative path is looked up in the current directory, then in the fgrpo checkout."""
    path = Path(file).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return REPO_ROOT / path


def prompt_file_identity(file: str) -> dict:
    """What a run trained and evaluated on: the prompt file's resolved path and a hash of its
    bytes (its held-out set is its last lines, so any edit can shift it)."""
    path = resolve_prompt_file(file)
    data = path.read_bytes()
    return {"file": str(path), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def read_prompt_records(path: str | Path) -> list[dict]:
    """One dict per prompt, ``{"prompt": ..., **other JSONL fields}``; raises ValueError naming the
    file (and line, for malformed JSONL) for a folder, a binary file or malformed JSONL."""
    return [record for _, record in read_prompt_lines(path)]


def read_prompt_lines(path: str | Path) -> list[tuple[int, dict]]:
    """:func:`read_prompt_records` with each record's line number in the file (blank lines skipped),
    for messages that name the line."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a prompt file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {e.object[e.start]:#04x} at offset {e.start})") from e
    if "\x00" in text:
        raise ValueError(f"{path}: not a text file (it holds NUL bytes)")
    records: list[tuple[int, dict]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
                records.append((lineno, {**record, "prompt": str(record["prompt"])}))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: expected a JSON object with a 'prompt' field ({e})") from e
        else:
            records.append((lineno, {"prompt": line}))
    return records


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a prompt file (see :func:`read_prompt_records`)."""
    return [r["prompt"] for r in read_prompt_records(path)]


def split_prompts(prompts: list[T], heldout: int) -> tuple[list[T], list[T]]:
    """(train, heldout): the last `heldout` prompts are held out."""
    if heldout <= 0:
        return prompts, []
    return prompts[:-heldout], prompts[-heldout:]


def bundled_prompt_corpus() -> list[str]:
    return read_prompts(BUNDLED_PROMPTS)


@dataclass
class PromptSampler:
    """Draws prompts in epochs of seeded permutations; its position is part of a checkpoint.

    Every rank holds the same sampler and draws the same global batch, so no communication is
    needed to agree on prompts; each rank then takes its own slice of the rollouts.
    """

    prompts: list[str]
    seed: int
    epoch: int = 0
    index: int = 0

    def _order(self) -> list[int]:
        import torch  # here: the CLI reads prompt files without importing torch

        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(len(self.prompts), generator=g).tolist()

    def next(self, n: int) -> list[str]:
        out: list[str] = []
        order = self._order()
        while len(out) < n:
            if self.index >= len(order):
                self.epoch, self.index = self.epoch + 1, 0
                order = self._order()
            out.append(self.prompts[order[self.index]])
            self.index += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
