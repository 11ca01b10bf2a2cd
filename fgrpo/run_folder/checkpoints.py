"""Checkpoint folders: names, completeness, and the manifest that proves one is intact.

`checkpoints/step-N/` appears by a rename once every rank has written (`.step-N.partial`
before). Its `fgrpo-manifest.json`, written last, records every file's size, a SHA-256 of DCP's
`.metadata`, the fingerprint of the recipe that trained it, and the fgrpo and format versions
that wrote it (fgrpo.run_folder.versions: a checkpoint of a newer format is refused, not read).
A checkpoint is trusted only when those match: a truncated `.distcp` (a kill or a full disk
while copying), a garbled `.metadata` or a checkpoint of another recipe is found before DCP
reads it. Data files are checked by size,
not hashed: hashing hundreds of GB at every save costs minutes, and DCP's own read errors still
send the resume to an older checkpoint.

Rotation (checkpoint.keep_last) keeps the newest k checkpoints and the one `best-gold.json` names:
the checkpoint whose held-out gold evaluation is the best so far (eval.gold_rewards).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from fgrpo.fileio import atomic_write_json

from .versions import check_format, version_stamp

STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "fgrpo-manifest.json"
BEST = "best-{metric}.json"  # checkpoints/best-gold.json: the checkpoint rotation keeps (eval.gold_rewards)


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    """A complete checkpoint's folder under `ckpt_dir` (a run's is RunFolder.checkpoints)."""
    return Path(ckpt_dir) / f"step-{step}"


def partial_checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    """Where a checkpoint is written before the rename that completes it."""
    return Path(ckpt_dir) / f".step-{step}.partial"


def complete_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints under `ckpt_dir`, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / ".metadata").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path, recipe_fingerprint: str, step: int) -> None:
    """Called by rank 0 once every rank's files are written (before the completing rename)."""
    folder = Path(folder)
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    atomic_write_json(
        folder / MANIFEST,
        {
            "step": step,
            "recipe": recipe_fingerprint,
            "files": files,
            "metadata_sha256": _sha256(folder / ".metadata"),
            **version_stamp(),
        },
    )


def checkpoint_problem(folder: Path, recipe_fingerprint: str | None = None) -> str | None:
    """Why `folder` cannot be trusted, or None. A checkpoint from before manifests were written
    is trusted as far as its `.metadata` exists (DCP then reports anything else on load)."""
    folder = Path(folder)
    if not (folder / ".metadata").is_file():
        return "no .metadata (an unfinished save)"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return f"unreadable {MANIFEST}: {e}"
    for name, size in manifest.get("files", {}).items():
        p = folder / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != size:
            return f"{name} has {p.stat().st_size} bytes, {size} were written"
    if _sha256(folder / ".metadata") != manifest.get("metadata_sha256"):
        return ".metadata differs from what was written (checksum mismatch)"
    if recipe_fingerprint and manifest.get("recipe") not in (None, recipe_fingerprint):
        return "trained with a different recipe (its recipe fingerprint differs from this run's)"
    return None


def read_manifest(folder: Path) -> dict | None:
    """The checkpoint's manifest; None when it has none or it is unreadable (checkpoint_problem says)."""
    try:
        found = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def manifest_fingerprint(folder: Path) -> str | None:
    return (read_manifest(folder) or {}).get("recipe")


def check_checkpoint_format(folder: Path) -> None:
    """RunFormatError when the checkpoint was written in a newer format than this fgrpo reads: it
    is refused, not skipped for an older one (that would quietly throw the newer steps away)."""
    check_format(read_manifest(folder) or {}, Path(folder) / MANIFEST)


def best_marker(ckpt_dir: Path, metric: str = "gold") -> Path:
    """checkpoints/best-<metric>.json: {"step", "metric", "value", "tag"} of the checkpoint whose
    evaluation scored best on `metric` so far; rotation never removes the checkpoint it names."""
    return Path(ckpt_dir) / BEST.format(metric=metric)


def read_best(ckpt_dir: Path, metric: str = "gold") -> dict | None:
    """The best-`metric` marker; None when absent, unreadable or without an integer step."""
    try:
        found = json.loads(best_marker(ckpt_dir, metric).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(found, dict) and isinstance(found.get("step"), int) and not isinstance(found["step"], bool)
    return found if ok else None


def write_best(ckpt_dir: Path, step: int, value: float, tag: str, metric: str = "gold") -> None:
    """Rank 0: name checkpoint step-`step` the best on `metric` (atomically: a reader sees the old
    marker or the new one, never half of one)."""
    Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(best_marker(ckpt_dir, metric), {"step": step, "metric": metric, "value": value, "tag": tag})


def rotated_out(ckpt_dir: Path, keep_last: int) -> list[Path]:
    """The complete checkpoints rotation removes: all but the newest `keep_last` and the one a best
    marker names (checkpoint.keep_last; the best-gold checkpoint is kept whatever it says)."""
    best = read_best(ckpt_dir)
    kept = {best["step"]} if best else set()
    return [path for step, path in complete_checkpoints(ckpt_dir)[:-keep_last] if step not in kept]
