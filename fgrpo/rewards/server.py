"""Reward server: score videos in another process (or machine) over HTTP (stdlib only).

``RewardServer`` loads the rewards once and serves ``POST /score`` and ``GET /health``;
:class:`~fgrpo.rewards.client.RewardClient` (re-exported here) returns ``(total, components)``
like ``WeightedRewards``. The wire format is in wire.py: frames travel as raw uint8 and scores
equal in-process scores of :func:`dequantize` ``(quantize(frames))`` (at most half a grey level,
~0.002, from unquantised frames).

What holds it up under real use:

* Identity: ``POST /handshake`` with ``{"identity": [...]}`` (what the client expects,
  fgrpo.rewards.identity) answers the server's own reward identities (name, weight, settings,
  weights' fingerprints), or 409 saying which reward differs and how: a run never scores with
  another reward than it started with, or another than its recipe names.
* Authentication: with a ``token``, ``POST /score`` and ``/handshake`` need
  ``Authorization: Bearer <token>`` (401 otherwise; compared in constant time). ``GET /health``
  stays open (readiness probes; it tells only the reward names). Binding a non-loopback address
  without a token is refused.
* Threads: at most ``max_connections`` connections are served at once, each by a worker thread of
  a fixed pool; up to ``max_waiting`` more wait, accepted but unread, until a worker is free (a
  client then just sees a slower answer); beyond that a connection gets 503 at once.
* Stalls: every read of a connection (request line, headers, body) times out after
  ``read_timeout_s`` without data; the connection gets 408 and is closed, freeing its worker.
* Memory: a binary body is read straight into one uint8 tensor, turned into float32 in place
  under the scoring lock (uint8 + float32 = 5x the frames' bytes at the peak, one request at a
  time); JSON bodies are capped at 64 MiB.

Malformed requests get 400 (JSON nested too deeply included), a body over the limit 413, an
exception inside a reward 500, all with ``{"error": message}``; the server keeps serving.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from fgrpo.rewards.base import WeightedRewards
from fgrpo.rewards.client import RewardClient
from fgrpo.rewards.identity import identity_differences, reward_identities
from fgrpo.rewards.wire import (
    BINARY_TYPE,
    MAX_BODY_BYTES,
    MAX_JSON_BYTES,
    BadRequest,
    Body,
    decode_json_request,
    dequantize,
    parse_json,
    quantize,
    read_binary_request,
)

__all__ = ["RewardClient", "RewardServer", "dequantize", "is_loopback", "quantize"]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reply_busy(request: Any, waiting: int) -> None:
    data = json.dumps({"error": f"server busy: {waiting} connections already wait; retry later"}).encode()
    head = (
        f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        request.settimeout(1.0)
        request.sendall(head + data)
        request.setblocking(False)
        for _ in range(16):  # what already arrived: closing with unread data would reset the reply away
            if not request.recv(1 << 16):
                break
    except OSError:  # BlockingIOError: nothing more has arrived
        pass


class _PooledHTTPServer(HTTPServer):
    """HTTPServer whose connections are served by a fixed pool of worker threads (a bounded thread
    count, unlike ThreadingHTTPServer's thread per connection), with a bounded wait queue."""

    # Set by RewardServer once bound; read by the handlers (`self.server`).
    rewards: WeightedRewards
    identity: list[dict[str, Any]]
    lock: threading.Lock
    verbose: bool
    token: bytes | None
    read_timeout_s: float
    scored_batches: int
    scored_videos: int

    def __init__(self, address: tuple[str, int], workers: int, waiting: int) -> None:
        super().__init__(address, _Handler)
        self.max_waiting, self._capacity = waiting, workers + waiting
        self._open, self._open_lock = 0, threading.Lock()  # connections queued or being served
        self._queue: queue.Queue = queue.Queue()
        self._workers = [
            threading.Thread(target=self._work, name=f"reward-server-worker-{i}", daemon=True) for i in range(workers)
        ]
        for t in self._workers:
            t.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            full = self._open >= self._capacity
            self._open += not full
        if full:
            _reply_busy(request, self.max_waiting)
            self.shutdown_request(request)
            return
        self._queue.put((request, client_address))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:  # noqa: BLE001 - one connection's failure must not end the worker
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)
                with self._open_lock:
                    self._open -= 1

    def server_close(self) -> None:
        super().server_close()
        while True:  # connections still waiting are closed unanswered
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.shutdown_request(item[0])
        for _ in self._workers:
            self._queue.put(None)


class _Handler(BaseHTTPRequestHandler):
    server_version = "fgrpo-reward-server/2"
    server: Any

    def setup(self) -> None:
        # typeshed marks `timeout` a ClassVar, but StreamRequestHandler.setup reads it per instance
        self.timeout = self.server.read_timeout_s  # pyright: ignore[reportAttributeAccessIssue]
        super().setup()

    def log_request(self, code: Any = "-", size: Any = "-") -> None:  # every request only when verbose
        if self.server.verbose:
            super().log_request(code, size)

    def _send(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/health":
            self._send(200, {"ok": True, "rewards": self.server.rewards.names})
        else:
            self._send(404, {"error": f"unknown path {self.path!r}; use GET /health, POST /handshake or POST /score"})

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode("latin-1"), token)

    def do_POST(self) -> None:  # noqa: N802
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        body = Body(self.rfile, length if 0 <= length <= MAX_BODY_BYTES else 0)
        try:
            self._score(length, body)
        except (TimeoutError, ConnectionError) as exc:  # a stalled or vanished client: free the worker
            self.log_error("dropping the connection: %s", f"{type(exc).__name__}: {exc}")
            self.close_connection = True
            try:
                self._send(408, {"error": f"no data for {self.server.read_timeout_s:g} s; closing"})
            except OSError:
                pass

    def _score(self, length: int, body: Body) -> None:
        error = self._check(length)
        if error is not None:
            code, message, headers = error
            if code == 413 or length < 0:
                self.close_connection = True  # too big (or of unknown size) to read past
            else:
                body.drain()
            self._send(code, {"error": message}, headers)
            return
        srv = self.server
        if self.path.rstrip("/") == "/handshake":
            self._handshake(length, body)
            return
        ctype = self.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        try:
            if ctype == BINARY_TYPE:
                u8, prompts = read_binary_request(body)
            elif length > MAX_JSON_BYTES:
                self.close_connection = True
                self._send(
                    413,
                    {
                        "error": f"JSON body of {length} bytes exceeds {MAX_JSON_BYTES}; send "
                        f"Content-Type {BINARY_TYPE} (RewardClient does)"
                    },
                )
                return
            else:
                u8, prompts = decode_json_request(body.read(length))
        except BadRequest as exc:
            body.drain()
            self._send(exc.code, {"error": str(exc)})
            return
        try:
            with srv.lock:  # rewards may hold a GPU model: one batch at a time (and one float copy)
                frames = dequantize(u8)
                del u8
                total, comps = srv.rewards(frames, prompts)
                del frames
                srv.scored_batches += 1
                srv.scored_videos += len(prompts)
        except Exception as exc:  # noqa: BLE001 - report any reward failure and keep serving
            self._send(500, {"error": f"reward failed: {type(exc).__name__}: {exc}"})
            return
        self._send(200, {"total": total.tolist(), "components": {k: v.tolist() for k, v in comps.items()}})

    def _handshake(self, length: int, body: Body) -> None:
        """The server's reward identities when they match the client's ``identity``, else 409."""
        try:
            if length > MAX_JSON_BYTES:
                raise BadRequest(f"handshake body of {length} bytes exceeds {MAX_JSON_BYTES}", 413)
            req = parse_json(body.read(length))
            expected = req.get("identity") if isinstance(req, dict) else None
            if not isinstance(expected, list) or not all(isinstance(e, dict) for e in expected):
                raise BadRequest("'identity' must be a list of reward identities (objects)")
        except BadRequest as exc:
            self.close_connection = True
            self._send(exc.code, {"error": str(exc)})
            return
        diffs = identity_differences(expected, self.server.identity)
        if diffs:
            self._send(
                409,
                {
                    "error": "this server scores other rewards than the run expects (the run's -> this "
                    f"server's): {'; '.join(diffs)}. Serve the run's own rewards and weights "
                    "(fgrpo reward-server --run-dir RUN)"
                },
            )
            return
        self._send(200, {"identity": self.server.identity})

    def _check(self, length: int) -> tuple[int, str, dict[str, str] | None] | None:
        """(code, message, headers) of a request refused before its body is read, else None."""
        if self.path.rstrip("/") not in ("/score", "/handshake"):
            return 404, f"unknown path {self.path!r}; use POST /score or POST /handshake", None
        if not self._authorized():
            return (
                401,
                "missing or wrong token: send 'Authorization: Bearer TOKEN' with the server's token "
                "(FGRPO_REWARD_TOKEN, or the run folder's reward-server.token)",
                {"WWW-Authenticate": "Bearer"},
            )
        if length < 0:
            return 411, "Content-Length header required", None
        if length > MAX_BODY_BYTES:
            return 413, f"body of {length} bytes exceeds {MAX_BODY_BYTES}", None
        return None


class RewardServer:
    """Serve ``WeightedRewards(specs)`` over HTTP; binds on construction (``port=0``: any free port).

    ``token``: the shared secret clients must send (None: no authentication, loopback only).
    ``read_timeout_s``: idle time after which a connection that sends nothing is dropped.
    ``max_connections`` / ``max_waiting``: connections served at once / waiting beyond those."""

    def __init__(
        self,
        specs: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        verbose: bool = False,
        token: str | None = None,
        read_timeout_s: float = 60.0,
        max_connections: int = 16,
        max_waiting: int = 256,
    ) -> None:
        if not token and not is_loopback(host):
            raise ValueError(
                f"refusing to serve on {host} without a token: anyone who can reach it could use "
                "the reward models; set FGRPO_REWARD_TOKEN (clients send it as 'Authorization: "
                "Bearer'), serve a run with --run-dir RUN (its own token), or bind 127.0.0.1"
            )
        if read_timeout_s <= 0 or max_connections < 1 or max_waiting < 0:
            raise ValueError("read_timeout_s must be > 0, max_connections >= 1 and max_waiting >= 0")
        specs = list(specs)
        self.rewards = WeightedRewards(specs)
        self.identity = reward_identities(specs)  # this machine's files: what a handshake compares
        self._httpd = _PooledHTTPServer((host, port), max_connections, max_waiting)
        self._httpd.rewards = self.rewards
        self._httpd.identity = self.identity
        self._httpd.lock = threading.Lock()
        self._httpd.verbose = verbose
        self._httpd.token = token.encode() if token else None
        self._httpd.read_timeout_s = read_timeout_s
        self._httpd.scored_batches = self._httpd.scored_videos = 0
        self._thread: threading.Thread | None = None

    @property
    def requires_token(self) -> bool:
        return self._httpd.token is not None

    @property
    def scored(self) -> tuple[int, int]:
        """(batches, videos) scored so far."""
        return self._httpd.scored_batches, self._httpd.scored_videos

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        """Serve in a daemon thread; returns the URL."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="reward-server", daemon=True)
            self._thread.start()
        return self.url

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` (from another thread) or Ctrl-C."""
        self._httpd.serve_forever()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> RewardServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
