"""A reward server's life around a run: serving until the run ends, announcing its address in
the run folder, and how trainers wait for it (the HTTP server itself: server.py; the command:
fgrpo/cli/reward_server.py).

A server started by a backend for a run (``fgrpo reward-server --run-dir RUN``) serves the run's
own reward specs (``RUN/recipe.json``) and announces its address in ``RUN/reward-server.json``; the
trainers read it from there, so the server may land on any node and move when it is requeued. It
exits once the run has ended (completed, failed or cancelled), so it never outlives its training
job. The address file is written and read through ``fgrpo.run_folder.RunFolder``
(``write_server_address``, ``read_server_address``, ``clear_server_address``).

The server and its clients share a token (:func:`reward_token`): ``FGRPO_REWARD_TOKEN`` when set
(on Kubernetes, from a per-run Secret), otherwise the run folder's ``reward-server.token``, which
the server makes when missing before it announces its address. The token is never printed.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fgrpo.run_folder import FINAL_STATES, RunFolder

__all__ = ["TOKEN_ENV", "process_alive", "reward_token", "serve_until_done", "wait_for_server"]

TOKEN_ENV = "FGRPO_REWARD_TOKEN"


def reward_token(run_dir: Path | None = None, create: bool = False) -> str | None:
    """The reward server's shared token: ``$FGRPO_REWARD_TOKEN`` when set, else `run_dir`'s
    (made when missing with `create`: the server's side), else None (an open server)."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    return RunFolder(run_dir).server_token(create=create) if run_dir is not None else None


def wait_for_server(
    find_url: Callable[[], str | None],
    timeout_s: float,
    check_stop: Callable[[], None] = lambda: None,
    all_agree: Callable[[bool], bool] = lambda ok: ok,
    poll_s: float = 2.0,
) -> str:
    """Poll until ``find_url()`` names a server that answers ``GET /health``; return its URL.

    ``find_url`` is called again on every poll: a requeued server announces a new address.
    ``check_stop`` may raise to abandon the wait (a preemption while the reward model loads).
    ``all_agree(flag)`` is True only if every rank's flag is: the ranks of a job leave the loop
    together (it and ``check_stop`` run the same number of times on every rank).
    """
    from fgrpo.rewards.server import RewardClient

    deadline, last = time.monotonic() + timeout_s, "no address announced yet"
    while True:
        check_stop()
        url, ok = find_url(), False
        if url:
            try:
                RewardClient(url, timeout_s=10, retries=0).health()
                ok = True
            except (ConnectionError, RuntimeError, ValueError) as exc:
                last = str(exc)
        if all_agree(ok):
            assert url is not None  # all_agree(ok) holds only if this rank's ok does
            return url
        if not all_agree(time.monotonic() <= deadline):
            raise ConnectionError(f"reward server did not come up within {timeout_s:.0f} s: {last}")
        time.sleep(poll_s)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def serve_until_done(
    server,
    bind_host: str,
    advertise_host: str | None = None,
    run_dir: Path | None = None,
    address_file: Path | None = None,
    watch_pid: int | None = None,
) -> int:
    """Start `server` (a fgrpo.rewards.server.RewardServer), announce its address (in
    `address_file`, default with `run_dir`: the run folder's), and serve until SIGTERM, Ctrl-C,
    `watch_pid`'s exit, or `run_dir`'s run having ended for 30 s. No argument parsing here."""
    port = server.url.rsplit(":", 1)[1]
    host = advertise_host or (socket.getfqdn() if bind_host in ("0.0.0.0", "::") else bind_host)
    url = f"http://{host}:{port}"
    server.start()
    run = RunFolder(run_dir) if run_dir else None
    address_file = address_file or (run.reward_server_file if run else None)
    if address_file:
        address_file.parent.mkdir(parents=True, exist_ok=True)  # the trainers may not have made it yet
        (run or RunFolder(address_file.parent)).write_server_address(url, address_file)
    auth = "token required" if server.requires_token else "no token: open to this machine"
    print(f"reward server at {url} serving {', '.join(server.rewards.names)} ({auth})", flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    ended_since = None
    try:
        while not done.wait(2.0):
            if watch_pid and not process_alive(watch_pid):
                print(f"process {watch_pid} has gone; stopping the reward server", flush=True)
                break
            if run is not None:
                # A final state must hold for a while: a failed run is requeued a moment later.
                ended = run.read_status().get("state") in FINAL_STATES
                ended_since = (ended_since or time.monotonic()) if ended else None
                if ended_since is not None and time.monotonic() - ended_since > 30:
                    print(f"run {run_dir} has ended; stopping the reward server", flush=True)
                    break
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    batches, videos = server.scored
    print(f"reward server stopped after scoring {videos} videos in {batches} batches", flush=True)
    return 0
