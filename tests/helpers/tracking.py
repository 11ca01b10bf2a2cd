"""Read back what the trackers wrote, with their own readers: TensorBoard's event accumulator and
W&B's offline run files (a LevelDB-style log of `wandb_internal_pb2.Record` protobufs)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK, HEADER = 32768, 7  # W&B's record log: 32 KiB blocks, 7-byte record headers (crc32, length, type)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list:
    """Every Record of a `run-<id>.wandb` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (ident, magic, version)
    pos, pending, out = HEADER, b"", []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        pos += HEADER
        if kind == 0 and length == 0:  # zero padding to the block's end
            pos += left - HEADER
            continue
        chunk, pos = data[pos : pos + length], pos + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
    records = []
    for raw in out:
        # protobuf builds its message classes at import time: pyright cannot see them
        rec = pb.Record()  # pyright: ignore[reportAttributeAccessIssue]
        rec.ParseFromString(raw)
        records.append(rec)
    return records


def wandb_offline_runs(run_dir: Path) -> list[Path]:
    """The offline-run folders under RUN/wandb/, oldest first."""
    # Names carry the start time in whole seconds; launches within one second are told by the inode's time.
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"), key=lambda d: (d.name[:27], d.stat().st_ctime_ns))


def finished_records(offline_dir: Path, timeout: float = 60) -> list:
    """The records of one offline run once its `exit` record is there (W&B's service writes the
    file asynchronously: a run just finished in this process may still be being flushed)."""
    deadline = time.time() + timeout
    while True:
        found = list(Path(offline_dir).glob("run-*.wandb"))
        try:
            records = wandb_records(found[0]) if len(found) == 1 else []
        except Exception:  # noqa: BLE001 - caught mid-write: read again
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.time() > deadline:
            assert records, f"{offline_dir} holds no readable run file"
            return records
        time.sleep(0.2)


def wandb_run_info(offline_dir: Path) -> dict:
    """run id, display name, project and config (decoded) of one offline run."""
    for rec in finished_records(offline_dir):
        if rec.WhichOneof("record_type") == "run":
            r = rec.run
            config = {u.key: json.loads(u.value_json) for u in r.config.update}
            return {"id": r.run_id, "name": r.display_name, "project": r.project, "config": config}
    raise AssertionError(f"{offline_dir} has no run record")


def wandb_history(offline_dir: Path) -> list[tuple[int, dict]]:
    """(step, {key: decoded value}) of every history row of one offline run."""
    rows = []
    for rec in finished_records(offline_dir):
        if rec.WhichOneof("record_type") == "history":
            values: dict = {}
            for i in rec.history.item:  # media and histograms arrive as nested keys: rebuild their dicts
                path = [i.key] if i.key else list(i.nested_key)
                node = values
                for k in path[:-1]:
                    node = node.setdefault(k, {})
                node[path[-1]] = json.loads(i.value_json)
            rows.append((int(rec.history.step.num), values))
    return rows


def tensorboard_events(log_dir: Path):
    """TensorBoard's own reader over every event file of the folder (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc
