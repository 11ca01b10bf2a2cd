"""Multi-process tests without a launcher: start `world` processes on one gloo world and collect
what each wrote (the parent side of tests/distributed's direct parity tests).

The processes come from multiprocessing's fork server, which each pytest worker starts once with
torch, DTensor and diffusers' Wan modules imported: a spawned process would import them again
(about 8 s of one core each), and forking the pytest worker itself is unsafe (it has threads, and
earlier tests ran torch in it). The workers set their own environment (MASTER_ADDR, MASTER_PORT):
a fork server's children inherit the environment it started with, not the test's."""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Iterable
from datetime import timedelta
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import cast

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fgrpo.trainer.entry import RANK_MODULES
from launchers.local import free_port

mp.set_forkserver_preload(list(RANK_MODULES))  # what a launched rank imports: the same modules


def spawn_ranks(worker, world: int, out_dir: Path, what: str, timeout_s: float = 300) -> list[dict]:
    """Run `worker(rank, port, out_dir)` in `world` processes (a free port for their
    rendezvous); each writes `out_dir/rank{rank}.json`. Returns those, rank order. Fails the test
    naming `what` if the processes outlive `timeout_s`; stragglers are terminated."""
    ctx = mp.start_processes(
        worker, args=(free_port(), str(out_dir)), nprocs=world, join=False, start_method="forkserver"
    )
    assert ctx is not None  # join=False returns the context
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=2):
            if time.monotonic() > deadline:
                pytest.fail(f"{what} worker processes timed out")
    finally:
        for p in cast(list[BaseProcess], ctx.processes):  # torch infers list[None] from its `[None] * n`
            if p.is_alive():
                p.terminate()
    return [json.loads((Path(out_dir) / f"rank{r}.json").read_text()) for r in range(world)]


def run_scenarios(
    rank: int, port: int, out_dir: str, world: int, scenarios: Callable[[], Iterable[tuple[str, Callable[[], dict]]]]
) -> None:
    """A direct test's rank (the body of the `worker` spawn_ranks starts): join the gloo world of
    `world` ranks, run the (name, run) pairs `scenarios()` gives, in order, and write their results
    to `out_dir/rank{rank}.json`. A scenario that raises is recorded as {"error": its traceback} and
    ends the list: the other ranks may be stuck in one of its collectives."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    results = {}
    try:
        for name, run in scenarios():
            try:
                results[name] = run()
            except Exception:  # noqa: BLE001 - reported to the parent, which fails the test
                results[name] = {"error": traceback.format_exc()}
                break
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()
