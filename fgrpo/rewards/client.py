"""Client of the reward server (the server: server.py; the wire format: wire.py).

``RewardClient.score`` returns ``(total, components)`` like ``WeightedRewards``; ``submit`` a
future of it (to overlap scoring with the next rollouts); ``handshake`` the server's reward
identities, once they match the client's (fgrpo.rewards.identity). A batch is sent in requests of
at most ``max_request_bytes`` of frames (whole videos; 256 MiB by default: two 81x480x832 Wan videos),
so any number of videos fits under the server's 1 GiB limit and neither side holds more than a
request's worth of copies.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from fgrpo.rewards.wire import BINARY_TYPE, encode_request, quantize

__all__ = ["DEFAULT_REQUEST_BYTES", "RewardClient"]

DEFAULT_REQUEST_BYTES = 256 << 20


class RewardClient:
    """Client for :class:`~fgrpo.rewards.server.RewardServer`.

    ``token``: sent as ``Authorization: Bearer`` (never logged). Connection errors, timeouts and
    5xx are retried ``retries`` times, sleeping ``backoff_s * 2**i``; then an unreachable server
    raises ``ConnectionError`` and a failing reward ``RuntimeError``, both naming the URL. A busy
    server (503, or a connection it reset or cut: it turned us away unread) is tried again for up
    to ``timeout_s`` without using up ``retries``; a server that is gone refuses the next attempt,
    which counts. Any other 4xx (401: wrong token) raises ``ValueError`` with the server's message
    at once.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_workers: int = 2,
        reconnect: Callable[[], str] | None = None,
        token: str | None = None,
        max_request_bytes: int = DEFAULT_REQUEST_BYTES,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s, self.retries, self.backoff_s = timeout_s, max(0, int(retries)), backoff_s
        self.reconnect = reconnect
        self.max_request_bytes = max(1, int(max_request_bytes))
        self._token = token or None
        self._max_workers, self._pool, self._pool_lock = max_workers, None, threading.Lock()
        self._url_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RewardClient({self.url!r}, token={'set' if self._token else None})"

    def _request(self, path: str, body: list | None = None, length: int = 0, content_type: str = BINARY_TYPE) -> Any:
        """One request with retries; an unreachable server is looked for again once with
        ``reconnect`` (a requeued server announces a new address), if given."""
        tried = self.url
        try:
            return self._request_once(path, body, length, content_type)
        except ConnectionError:
            if self.reconnect is None:
                raise
            with self._url_lock:  # concurrent requests wait for one reconnection
                if self.url == tried:  # nobody has found the server again meanwhile
                    self.url = self.reconnect().rstrip("/")
            return self._request_once(path, body, length, content_type)

    def _request_once(self, path: str, body: list | None, length: int, content_type: str = BINARY_TYPE) -> Any:
        url = self.url + path
        headers = {"Content-Type": content_type, "Content-Length": str(length)} if body is not None else {}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        last, server_error, attempt, busy, busy_until = "", False, 0, 0, None
        while attempt <= self.retries:
            req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                try:
                    msg = json.loads(exc.read()).get("error", "")
                except Exception:  # noqa: BLE001
                    msg = exc.reason
                if exc.code < 500 and exc.code != 408:
                    raise ValueError(f"reward server {url} rejected the request ({exc.code}): {msg}") from None
                last, server_error = f"HTTP {exc.code}: {msg}", True
                turned_away = exc.code in (408, 503)
            except (urllib.error.URLError, OSError) as exc:  # refused, reset, timeout
                reason = getattr(exc, "reason", exc)
                last, server_error = f"{type(exc).__name__}: {reason}", False
                turned_away = isinstance(reason, (ConnectionResetError, BrokenPipeError))
            if turned_away:  # back-pressure, not a failure: wait for room, up to timeout_s
                busy_until = busy_until or time.monotonic() + self.timeout_s
                if time.monotonic() < busy_until:
                    time.sleep(min(self.backoff_s * 2 ** min(busy, 6), 5.0) or 0.05)
                    busy += 1
                    continue
            attempt += 1
            if attempt <= self.retries:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        err = RuntimeError if server_error else ConnectionError
        raise err(f"reward server {url} failed after {self.retries + 1} attempt(s): {last}")

    def health(self) -> dict:
        return self._request("/health")

    def handshake(self, expected: list[dict]) -> list[dict]:
        """The server's reward identities, once the server has found them equal to `expected`
        (fgrpo.rewards.identity); a server serving other rewards answers 409: ValueError with what
        differs."""
        data = json.dumps({"identity": expected}).encode()
        return self._request("/handshake", [data], len(data), "application/json")["identity"]

    def score(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Like ``WeightedRewards(frames, prompts)``, scored remotely on uint8-quantised frames
        (uint8 frames are taken as already quantised), in requests of whole videos of at most
        ``max_request_bytes`` each (one video if a video alone is bigger)."""
        frames = torch.as_tensor(frames)
        prompts = list(prompts)
        if frames.ndim != 5 or len(prompts) != frames.shape[0]:
            raise ValueError(
                f"got {len(prompts)} prompts for frames of shape {tuple(frames.shape)} "
                "([B, F, 3, H, W], one prompt per video)"
            )
        per_request = max(1, self.max_request_bytes // max(1, math.prod(frames.shape[1:])))
        totals, parts = [], []
        for i in range(0, frames.shape[0], per_request):
            chunk = frames[i : i + per_request]
            u8 = chunk.detach().to("cpu").contiguous() if chunk.dtype == torch.uint8 else quantize(chunk)
            body, length = encode_request(u8, prompts[i : i + per_request])
            out = self._request("/score", body, length)
            del body, u8
            totals.append(torch.tensor(out["total"], dtype=torch.float32))
            parts.append({k: torch.tensor(v, dtype=torch.float32) for k, v in out["components"].items()})
        if not totals:
            raise ValueError("no videos to score")
        dev = frames.device
        total = torch.cat(totals).to(dev)
        comps = {k: torch.cat([p[k] for p in parts]).to(dev) for k in parts[0]}
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
