"""Reward server: score videos in another process (or machine) over HTTP (stdlib only).

``RewardServer`` loads the rewards once and serves ``POST /score`` and
``GET /health``; ``RewardClient.score`` returns ``(total, components)`` like
``WeightedRewards``, ``RewardClient.submit`` a future of it (to overlap
scoring with the next rollouts).

Wire format of ``POST /score`` (JSON)::

    {"prompts": [...B strings], "shape": [B, F, 3, H, W], "dtype": "uint8",
     "frames": base64 of the raw C-order uint8 bytes}
    -> {"total": [...B floats], "components": {name: [...B floats]}}

Frames are quantised to uint8, ``round(clamp(frames, 0, 1) * 255)``, and the
server scores ``uint8 / 255``: 4x smaller than float32, and exactly what a
video encoder (and so any reward looking at saved videos) sees. Scores thus
equal in-process scores of :func:`dequantize` ``(quantize(frames))``; the
difference from unquantised frames is at most half a grey level (~0.002).

Malformed requests get 400, an exception inside a reward 500, both with
``{"error": message}``; the server keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from fgrpo.rewards.base import WeightedRewards

__all__ = ["RewardClient", "RewardServer", "dequantize", "quantize"]

MAX_BODY_BYTES = 1 << 30


def quantize(frames: torch.Tensor) -> torch.Tensor:
    """Float frames in [0, 1] -> uint8 ``round(clamp(x, 0, 1) * 255)`` on CPU, contiguous."""
    x = torch.as_tensor(frames).detach().to("cpu", torch.float32)
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).contiguous()


def dequantize(frames_u8: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float32 in [0, 1] (``x / 255``), as the server scores them."""
    return frames_u8.to(torch.float32) / 255.0


class _BadRequest(ValueError):
    pass


def _decode_request(body: bytes) -> tuple[torch.Tensor, list[str]]:
    try:
        req = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(req, dict):
        raise _BadRequest("body must be a JSON object")
    missing = [k for k in ("prompts", "shape", "frames") if k not in req]
    if missing:
        raise _BadRequest(f"missing field(s): {', '.join(missing)}")
    prompts, shape = req["prompts"], req["shape"]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise _BadRequest("'prompts' must be a list of strings")
    if req.get("dtype", "uint8") != "uint8":
        raise _BadRequest(f"'dtype' must be 'uint8', got {req.get('dtype')!r}")
    if (not isinstance(shape, list) or len(shape) != 5
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)):
        raise _BadRequest(f"'shape' must be [B, F, C, H, W] of positive ints, got {shape!r}")
    if shape[2] != 3:
        raise _BadRequest(f"frames must have C = 3 (RGB), got shape {shape}")
    if shape[0] != len(prompts):
        raise _BadRequest(f"shape has B = {shape[0]} videos but got {len(prompts)} prompts")
    if not isinstance(req["frames"], str):
        raise _BadRequest("'frames' must be a base64 string")
    try:
        raw = base64.b64decode(req["frames"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _BadRequest(f"'frames' is not valid base64: {exc}") from exc
    if len(raw) != math.prod(shape):
        raise _BadRequest(f"'frames' has {len(raw)} bytes but shape {shape} needs {math.prod(shape)}")
    u8 = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(shape)
    return dequantize(u8), prompts


class _Handler(BaseHTTPRequestHandler):
    server_version = "fgrpo-reward-server/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet unless verbose
        if self.server.verbose:  # type: ignore[attr-defined]
            super().log_message(format, *args)

    def _send(self, code: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/health":
            self._send(200, {"ok": True, "rewards": self.server.rewards.names})  # type: ignore[attr-defined]
        else:
            self._send(404, {"error": f"unknown path {self.path!r}; use GET /health or POST /score"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/score":
            self._send(404, {"error": f"unknown path {self.path!r}; use POST /score"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(411, {"error": "Content-Length header required"})
            return
        if length < 0 or length > MAX_BODY_BYTES:
            self._send(413, {"error": f"body of {length} bytes exceeds {MAX_BODY_BYTES}"})
            self.close_connection = True
            return
        try:
            frames, prompts = _decode_request(self.rfile.read(length))
        except _BadRequest as exc:
            self._send(400, {"error": str(exc)})
            return
        srv = self.server
        try:
            with srv.lock:  # type: ignore[attr-defined]  # rewards may hold a GPU model: one batch at a time
                total, comps = srv.rewards(frames, prompts)  # type: ignore[attr-defined]
                srv.scored_batches += 1  # type: ignore[attr-defined]
                srv.scored_videos += len(prompts)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - report any reward failure and keep serving
            self._send(500, {"error": f"reward failed: {type(exc).__name__}: {exc}"})
            return
        self._send(200, {"total": total.tolist(), "components": {k: v.tolist() for k, v in comps.items()}})


class RewardServer:
    """Serve ``WeightedRewards(specs)`` over HTTP; binds on construction (``port=0``: any free port)."""

    def __init__(self, specs: Any, host: str = "127.0.0.1", port: int = 0, verbose: bool = False) -> None:
        self.rewards = WeightedRewards(specs)
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.rewards = self.rewards  # type: ignore[attr-defined]
        self._httpd.lock = threading.Lock()  # type: ignore[attr-defined]
        self._httpd.verbose = verbose  # type: ignore[attr-defined]
        self._httpd.scored_batches = self._httpd.scored_videos = 0  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def scored(self) -> tuple[int, int]:
        """(batches, videos) scored so far."""
        return self._httpd.scored_batches, self._httpd.scored_videos  # type: ignore[attr-defined]

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


class RewardClient:
    """Client for :class:`RewardServer`.

    Connection errors, timeouts and 5xx are retried ``retries`` times, sleeping
    ``backoff_s * 2**i``; then an unreachable server raises ``ConnectionError``
    and a failing reward ``RuntimeError``, both naming the URL. A 4xx raises
    ``ValueError`` with the server's message at once.
    """

    def __init__(self, url: str, timeout_s: float = 60.0, retries: int = 3, backoff_s: float = 0.5,
                 max_workers: int = 2, reconnect: Callable[[], str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s, self.retries, self.backoff_s = timeout_s, max(0, int(retries)), backoff_s
        self.reconnect = reconnect
        self._max_workers, self._pool, self._pool_lock = max_workers, None, threading.Lock()
        self._url_lock = threading.Lock()

    def _request(self, path: str, body: bytes | None = None) -> Any:
        """One request with retries; an unreachable server is looked for again once with
        ``reconnect`` (a requeued server announces a new address), if given."""
        tried = self.url
        try:
            return self._request_once(path, body)
        except ConnectionError:
            if self.reconnect is None:
                raise
            with self._url_lock:  # concurrent requests wait for one reconnection
                if self.url == tried:  # nobody has found the server again meanwhile
                    self.url = self.reconnect().rstrip("/")
            return self._request_once(path, body)

    def _request_once(self, path: str, body: bytes | None) -> Any:
        url = self.url + path
        last, server_error = "", False
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                try:
                    msg = json.loads(exc.read()).get("error", "")
                except Exception:  # noqa: BLE001
                    msg = exc.reason
                if exc.code < 500:
                    raise ValueError(f"reward server {url} rejected the request ({exc.code}): {msg}") from None
                last, server_error = f"HTTP {exc.code}: {msg}", True
            except (urllib.error.URLError, OSError) as exc:  # refused, reset, timeout
                last, server_error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", False
        err = RuntimeError if server_error else ConnectionError
        raise err(f"reward server {url} failed after {self.retries + 1} attempt(s): {last}")

    def health(self) -> dict:
        return self._request("/health")

    def score(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Like ``WeightedRewards(frames, prompts)``, scored remotely on uint8-quantised frames."""
        frames = torch.as_tensor(frames)
        u8 = quantize(frames)
        body = json.dumps({
            "prompts": list(prompts), "shape": list(u8.shape), "dtype": "uint8",
            "frames": base64.b64encode(u8.numpy().tobytes()).decode("ascii"),
        }).encode()
        out = self._request("/score", body)
        dev = frames.device
        total = torch.tensor(out["total"], dtype=torch.float32, device=dev)
        comps = {k: torch.tensor(v, dtype=torch.float32, device=dev) for k, v in out["components"].items()}
        return total, comps

    def submit(self, frames: torch.Tensor, prompts: list[str]) -> Future:
        """Score asynchronously; the future resolves to ``(total, components)``."""
        frames = torch.as_tensor(frames).detach()
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix="reward-client")
            return self._pool.submit(self.score, frames, list(prompts))

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
