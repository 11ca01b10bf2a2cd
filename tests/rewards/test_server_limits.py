"""The reward server under abuse: stalled uploads, too many connections, deep JSON, big bodies.

Each test shows a defect of the first server (issue 12): no read timeout (a stalled upload held a
thread forever), a thread per connection, RecursionError dropping the connection with no reply,
and ~12x a request's frame bytes of peak memory (several full copies: body, JSON string, base64
decode, bytearray, two float tensors)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest
import torch

from fgrpo.recipe.config import RewardSpec
from fgrpo.rewards import WeightedRewards
from fgrpo.rewards.server import RewardClient, RewardServer, dequantize, quantize
from fgrpo.rewards.wire import BINARY_TYPE, MAX_JSON_BYTES
from tests.conftest import REPO
from tests.helpers import present

SPECS = [RewardSpec(name="brightness"), RewardSpec(name="colour", weight=0.5)]
PROMPTS = ["a red car at night", "a bright blue sky"]


def _frames(b=2):
    return torch.rand(b, 2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _stall(
    url: str, sent: bytes = b"x" * 10, length: int = 1_000_000, headers: bool = True, ctype: str = BINARY_TYPE
) -> socket.socket:
    """A client that starts a request and then sends nothing more."""
    u = urlsplit(url)
    s = socket.create_connection((u.hostname, u.port), timeout=10)
    head = (f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n\r\n").encode()
    s.sendall(head + sent if headers else head[:30])
    return s


def _reply(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := s.recv(1 << 16):
        chunks.append(chunk)
    s.close()
    return b"".join(chunks)


def _post(url: str, body: bytes, ctype: str = "application/json") -> tuple[int, dict]:
    req = urllib.request.Request(url + "/score", data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _assert_scores(total, frames, prompts):
    want, _ = WeightedRewards(SPECS)(dequantize(quantize(frames)), prompts)
    torch.testing.assert_close(total, want, atol=1e-6, rtol=0)


def test_stalled_uploads_are_dropped_after_the_read_timeout():
    """Old: no timeout, so _reply blocked until the test's own 10 s socket timeout."""
    with RewardServer(SPECS, read_timeout_s=0.5) as srv:
        start = time.monotonic()
        stalled = [_stall(srv.url) for _ in range(3)] + [_stall(srv.url, headers=False)]
        total, _ = RewardClient(srv.url).score(_frames(), PROMPTS)  # answered while they stall
        _assert_scores(total, _frames(), PROMPTS)
        replies = [_reply(s) for s in stalled]
        waited = time.monotonic() - start
        assert all(r.startswith(b"HTTP/1.0 408") for r in replies[:3]), replies
        assert replies[3] == b""  # stalled in the headers: closed without a reply
        assert 0.4 < waited < 5
        total, _ = RewardClient(srv.url).score(_frames(), PROMPTS)  # and it goes on serving
        assert srv.scored == (2, 4)


def test_connections_beyond_the_cap_wait_then_get_503_and_threads_stay_bounded():
    """Old: ThreadingHTTPServer started a thread per connection, without limit."""
    with RewardServer(SPECS, read_timeout_s=1.0, max_connections=2, max_waiting=2) as srv:
        threads = threading.active_count()
        stalled = [_stall(srv.url) for _ in range(4)]  # two being read, two waiting
        time.sleep(0.2)
        start = time.monotonic()
        assert _reply(_stall(srv.url)).startswith(b"HTTP/1.0 503")  # at once, not after a timeout
        assert time.monotonic() - start < 0.9
        assert threading.active_count() == threads  # a fixed pool: no thread per connection
        # A real client meets 503 first and retries until the stalled connections are dropped.
        total, _ = RewardClient(srv.url, timeout_s=30, backoff_s=0.05).score(_frames(), PROMPTS)
        _assert_scores(total, _frames(), PROMPTS)
        assert all(_reply(s).startswith(b"HTTP/1.0 408") for s in stalled)


@pytest.mark.parametrize("binary", [False, True])
def test_deeply_nested_json_gets_400(binary):
    """Old: RecursionError in the decoder ended the handler and dropped the connection unanswered."""
    nested = b"[" * 100_000 + b"]" * 100_000
    body = len(nested).to_bytes(4, "big") + nested if binary else nested
    with RewardServer(SPECS) as srv:
        code, out = _post(srv.url, body, BINARY_TYPE if binary else "application/json")
        assert code == 400 and "nested too deeply" in out["error"]
        code, out = _post(srv.url, b'{"prompts": ' + b"1" * 5000 + b"}")  # past int's digit limit
        assert code == 400 and "not valid JSON" in out["error"]
        assert RewardClient(srv.url).health()["ok"] is True


def test_big_json_bodies_are_refused_before_reading():
    with RewardServer(SPECS) as srv:
        # Nothing of the body is sent: the answer must not wait for it.
        reply = _reply(_stall(srv.url, sent=b"", length=MAX_JSON_BYTES + 1, ctype="application/json"))
    assert reply.startswith(b"HTTP/1.0 413") and b"x-fgrpo-frames" in reply


def test_bad_binary_bodies_get_400_and_the_connection_is_read_to_the_end():
    """A refused body is read to its end, so the client gets the 400 rather than a reset."""
    u8 = quantize(_frames())
    header = json.dumps({"prompts": PROMPTS, "shape": list(u8.shape), "dtype": "uint8"}).encode()
    frames = u8.numpy().tobytes()
    with RewardServer(SPECS) as srv:
        junk = b"y" * (1 << 20)  # after the part the server refuses
        for body, message in (
            (len(header).to_bytes(4, "big") + header + frames[:-1], "needs"),
            (len(header).to_bytes(4, "big") + header + frames + junk, "needs"),
            ((1 << 30).to_bytes(4, "big") + header + frames + junk, "header length"),
            (b"\x00\x00", "4-byte header length"),
            (len(header).to_bytes(4, "big") + header.replace(b'"uint8"', b'"int08"') + junk, "'dtype'"),
        ):
            code, out = _post(srv.url, body, BINARY_TYPE)
            assert code == 400 and message in out["error"], out
        code, out = _post(srv.url, len(header).to_bytes(4, "big") + header + frames, BINARY_TYPE)
        assert code == 200


SERVE = textwrap.dedent("""
    import sys, time
    from fgrpo.rewards import register_reward
    from fgrpo.rewards.server import RewardServer

    @register_reward("first_pixel")
    def first_pixel(frames, prompts):  # allocates nothing big: what is measured is the server's own
        return frames[:, 0, 0, 0, 0].clone()

    srv = RewardServer([{"name": "first_pixel"}])
    print(srv.start(), flush=True)
    time.sleep(600)
""")


def _memory(pid: int) -> dict[str, int]:
    text = open(f"/proc/{pid}/status").read()
    found = {k: re.search(rf"{k}:\s+(\d+) kB", text) for k in ("VmRSS", "VmHWM")}
    return {k: int(present(m, f"{k} in /proc/{pid}/status").group(1)) << 10 for k, m in found.items()}


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the server's peak RSS from /proc")
def test_peak_memory_of_a_200_mb_request():
    """A request of 150 MiB of frames (200 MiB as base64 JSON): the old server's peak RSS grew by
    1882 MiB (12.7x the frames), this one's by 5x (the uint8 frames read in place + the float32
    frames the rewards score). Bound: 6x."""
    proc = subprocess.Popen([sys.executable, "-c", SERVE], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        url = present(proc.stdout, "stdout pipe").readline().strip()
        client = RewardClient(url, timeout_s=120, max_request_bytes=1 << 30)
        client.score(torch.zeros(1, 1, 3, 2, 2, dtype=torch.uint8), ["warm-up"])
        u8 = torch.randint(0, 256, (2, 65, 3, 480, 832), dtype=torch.uint8)  # 2 x 77.3 MiB
        before = _memory(proc.pid)["VmRSS"]
        total, _ = client.score(u8, ["a", "b"])
        grew = _memory(proc.pid)["VmHWM"] - before
    finally:
        proc.kill()
        proc.wait()
    assert total.tolist() == (u8[:, 0, 0, 0, 0].float() / 255).tolist()
    print(f"peak RSS grew by {grew / 2**20:.0f} MiB = {grew / u8.numel():.2f}x the frames' bytes")
    assert grew < 6 * u8.numel()
