"""`fgrpo reward-server`: serve rewards over HTTP, and how a trainer finds a launched server.

A server started by a backend for a run (``--run-dir RUN``) serves the run's own reward specs
(``RUN/recipe.json``) and announces its address in ``RUN/reward-server.json``; the trainers read
it from there, so the server may land on any node and move when it is requeued. It exits once the
run has ended (completed, failed or cancelled), so it never outlives its training job.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ADDRESS_FILE", "clear_address", "main", "process_alive", "read_address", "wait_for_server",
           "write_address"]

ADDRESS_FILE = "reward-server.json"
FINAL_STATES = ("completed", "failed", "cancelled")


def write_address(path: Path, url: str) -> None:
    """Atomically record where the server listens (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}))
    os.replace(tmp, path)


def clear_address(run_dir: Path) -> None:
    """Forget a previous server's address before a new one starts for the run."""
    (Path(run_dir) / ADDRESS_FILE).unlink(missing_ok=True)


def read_address(path: Path) -> str | None:
    try:
        return json.loads(Path(path).read_text())["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def wait_for_server(find_url: Callable[[], str | None], timeout_s: float, check_stop: Callable[[], None] = lambda: None,
                    all_agree: Callable[[bool], bool] = lambda ok: ok, poll_s: float = 2.0) -> str:
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
            return url
        if not all_agree(time.monotonic() <= deadline):
            raise ConnectionError(f"reward server did not come up within {timeout_s:.0f} s: {last}")
        time.sleep(poll_s)


def _value(text: str) -> Any:
    try:
        return json.loads(text)  # 0.5 -> float, true -> bool, {"red": [1,0,0]} -> dict
    except json.JSONDecodeError:
        return text


def _run_ended(run_dir: Path) -> bool:
    from fgrpo.trainer.entry import read_status

    return read_status(run_dir).get("state") in FINAL_STATES


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _specs_from_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> list:
    from fgrpo.recipe.config import RewardSpec
    from fgrpo.recipe.io import load_recipe_json

    recipe_file = a.recipe_file or (Path(a.run_dir) / "recipe.json" if a.run_dir else None)
    if recipe_file is not None:
        if a.reward:
            p.error("give rewards either with --reward or from a recipe (--recipe-file/--run-dir), not both")
        if not Path(recipe_file).is_file():
            p.error(f"recipe file {recipe_file} does not exist")
        return list(load_recipe_json(Path(recipe_file)).rewards)
    if not a.reward:
        p.error("name at least one --reward (or serve a run's rewards with --run-dir RUN)")
    for opt, items in (("--weight", a.weight), ("--arg", a.arg)):
        for item in items:
            if item[0] not in a.reward:
                p.error(f"{opt} names reward {item[0]!r}, which is not given with --reward")
    try:
        weights = {n: float(w) for n, w in a.weight}
    except ValueError as exc:
        p.error(f"--weight: {exc}")
    specs = []
    for n in a.reward:
        args = {k: _value(v) for m, k, v in a.arg if m == n}
        if a.model_path and "model_path" not in args:
            args["model_path"] = a.model_path
        specs.append(RewardSpec(name=n, weight=weights.get(n, 1.0), args=args))
    return specs


def main(argv: list[str] | None = None) -> int:
    """Serve rewards over HTTP until Ctrl-C, SIGTERM, or (with --run-dir) the run's end."""
    from fgrpo.rewards.server import RewardServer

    p = argparse.ArgumentParser(
        prog="fgrpo reward-server",
        description="Load reward models once and score batches of frames over HTTP (POST /score, GET /health).",
        epilog="examples:\n"
               "  fgrpo reward-server --reward hpsv3 --model-path /models/Qwen2-VL-7B-Instruct "
               "--arg hpsv3 checkpoint /models/HPSv3.safetensors --host 0.0.0.0\n"
               "  fgrpo reward-server --run-dir runs/wan14b-0   # a run's own rewards; exits when it ends\n"
               "a trainer uses it with --reward-server.url http://HOST:8000, or --reward-server.launch to "
               "let the backend start one",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reward", action="append", default=[], metavar="NAME",
                   help="registered reward name or module.path:function (repeatable)")
    p.add_argument("--weight", nargs=2, action="append", default=[], metavar=("NAME", "W"))
    p.add_argument("--arg", nargs=3, action="append", default=[], metavar=("NAME", "KEY", "VALUE"),
                   help="keyword argument for reward NAME (VALUE parsed as JSON, else a string)")
    p.add_argument("--model-path", help="local model folder: sets model_path for every --reward that has none")
    p.add_argument("--recipe-file", help="serve the rewards of this recipe JSON")
    p.add_argument("--run-dir", help=f"serve RUN/recipe.json's rewards (or --recipe-file's), announce the address "
                                     f"in RUN/{ADDRESS_FILE} and exit when the run has ended")
    p.add_argument("--address-file", help="write {'url': ...} here once listening (default with --run-dir)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: all interfaces)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    p.add_argument("--advertise-host", help="host name written to the address file (default: this host's name "
                                            "when bound to 0.0.0.0)")
    p.add_argument("--watch-pid", type=int, help="exit when this process (e.g. the launcher) has gone")
    p.add_argument("--verbose", action="store_true", help="log every request")
    a = p.parse_args(argv)
    specs = _specs_from_args(p, a)
    try:
        server = RewardServer(specs, host=a.host, port=a.port, verbose=a.verbose)
    except ValueError as exc:
        p.error(str(exc))
    port = server.url.rsplit(":", 1)[1]
    host = a.advertise_host or (socket.getfqdn() if a.host in ("0.0.0.0", "::") else a.host)
    url = f"http://{host}:{port}"
    server.start()
    address_file = a.address_file or (Path(a.run_dir) / ADDRESS_FILE if a.run_dir else None)
    if address_file:
        Path(address_file).parent.mkdir(parents=True, exist_ok=True)  # the trainers may not have made it yet
        write_address(Path(address_file), url)
    print(f"reward server at {url} serving {', '.join(server.rewards.names)}", flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    ended_since = None
    try:
        while not done.wait(2.0):
            if a.watch_pid and not process_alive(a.watch_pid):
                print(f"process {a.watch_pid} has gone; stopping the reward server", flush=True)
                break
            if a.run_dir:
                # A final state must hold for a while: a failed run is requeued a moment later.
                ended_since = (ended_since or time.monotonic()) if _run_ended(Path(a.run_dir)) else None
                if ended_since is not None and time.monotonic() - ended_since > 30:
                    print(f"run {a.run_dir} has ended; stopping the reward server", flush=True)
                    break
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    batches, videos = server.scored
    print(f"reward server stopped after scoring {videos} videos in {batches} batches", flush=True)
    return 0
