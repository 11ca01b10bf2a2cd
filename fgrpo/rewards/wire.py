"""Wire format of the reward server's ``POST /score`` (the server: server.py; the client: client.py).

Binary (what :class:`~fgrpo.rewards.client.RewardClient` sends), ``Content-Type:
application/x-fgrpo-frames``::

    4-byte big-endian header length N | N bytes of JSON header | raw C-order uint8 frames
    header: {"prompts": [...B strings], "shape": [B, F, 3, H, W], "dtype": "uint8"}

The frames travel as they are (no base64, no JSON string around them): the server reads them
straight into one uint8 tensor, and the client sends them from the tensor's own memory.

JSON (the original format, still accepted for small requests, ``application/json``)::

    {"prompts": [...], "shape": [B, F, 3, H, W], "dtype": "uint8", "frames": base64 of the raw bytes}

Both answer ``{"total": [...B floats], "components": {name: [...B floats]}}``.

Frames are quantised to uint8, ``round(clamp(frames, 0, 1) * 255)``, and the server scores
``uint8 / 255``: 4x smaller than float32, and exactly what a video encoder (and so any reward
looking at saved videos) sees.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from typing import Any

import torch

__all__ = [
    "BINARY_TYPE",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_JSON_BYTES",
    "BadRequest",
    "Body",
    "decode_json_request",
    "dequantize",
    "encode_request",
    "parse_json",
    "quantize",
    "read_binary_request",
]

BINARY_TYPE = "application/x-fgrpo-frames"
MAX_BODY_BYTES = 1 << 30
MAX_JSON_BYTES = 64 << 20  # base64 JSON costs several copies of the body: binary is for big batches
MAX_HEADER_BYTES = 16 << 20


def quantize(frames: torch.Tensor) -> torch.Tensor:
    """Float frames in [0, 1] -> uint8 ``round(clamp(x, 0, 1) * 255)`` on CPU, contiguous.

    One float temporary (the clamped copy, rounded in place): the frames may be hundreds of MB."""
    x = torch.as_tensor(frames).detach().to("cpu", torch.float32)
    return x.clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).contiguous()


def dequantize(frames_u8: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float32 in [0, 1] (``x / 255``), as the server scores them (divided in place:
    one float copy)."""
    return frames_u8.to(torch.float32).div_(255.0)


class BadRequest(ValueError):
    """A request the server answers with ``code`` (400 unless said) and this message."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


def parse_json(data: bytes | bytearray, what: str = "body") -> Any:
    """JSON, or BadRequest: a syntax error, deep nesting (RecursionError in the decoder) and
    integers past Python's digit limit all get a 400, never a dropped connection."""
    try:
        return json.loads(data)
    except RecursionError:
        raise BadRequest(f"{what} is JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None


def check_header(req: Any) -> tuple[list[str], list[int]]:
    """The prompts and shape of a request's JSON (header), validated."""
    if not isinstance(req, dict):
        raise BadRequest("body must be a JSON object")
    missing = [k for k in ("prompts", "shape") if k not in req]
    if missing:
        raise BadRequest(f"missing field(s): {', '.join(missing)}")
    prompts, shape = req["prompts"], req["shape"]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("'prompts' must be a list of strings")
    if req.get("dtype", "uint8") != "uint8":
        raise BadRequest(f"'dtype' must be 'uint8', got {req.get('dtype')!r}")
    if (
        not isinstance(shape, list)
        or len(shape) != 5
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
    ):
        raise BadRequest(f"'shape' must be [B, F, C, H, W] of positive ints, got {shape!r}")
    if shape[2] != 3:
        raise BadRequest(f"frames must have C = 3 (RGB), got shape {shape}")
    if shape[0] != len(prompts):
        raise BadRequest(f"shape has B = {shape[0]} videos but got {len(prompts)} prompts")
    return prompts, shape


class Body:
    """The request body on the socket: exact reads, and how much of it is still unread."""

    def __init__(self, rfile: io.BufferedIOBase, length: int) -> None:
        self.rfile, self.remaining = rfile, length

    def readinto(self, view: memoryview) -> None:
        got, size = 0, len(view)
        if size > self.remaining:
            raise BadRequest(f"body ends {size - self.remaining} bytes early")
        while got < size:
            n = self.rfile.readinto(view[got:])
            if not n:
                raise ConnectionError("the client closed the connection in the middle of the body")
            got += n
            self.remaining -= n

    def read(self, n: int) -> bytearray:
        buf = bytearray(n)
        self.readinto(memoryview(buf))
        return buf

    def drain(self) -> None:
        """Read and drop the rest, so the client reads the reply instead of a connection reset."""
        buf = memoryview(bytearray(min(self.remaining, 1 << 20)))
        while self.remaining:
            self.readinto(buf[: min(self.remaining, len(buf))])


def read_binary_request(body: Body) -> tuple[torch.Tensor, list[str]]:
    """Read a binary request: the header, then the frames straight into one uint8 tensor (no
    other copy of them). Sizes are checked before anything of the frames' size is allocated."""
    if body.remaining < 4:
        raise BadRequest("binary body must start with a 4-byte header length")
    n = int.from_bytes(body.read(4), "big")
    if n > MAX_HEADER_BYTES or n > body.remaining:
        raise BadRequest(f"header length {n} exceeds the body or {MAX_HEADER_BYTES} bytes")
    prompts, shape = check_header(parse_json(body.read(n), "header"))
    if body.remaining != math.prod(shape):
        raise BadRequest(f"frames have {body.remaining} bytes but shape {shape} needs {math.prod(shape)}")
    u8 = torch.empty(shape, dtype=torch.uint8)
    body.readinto(u8.numpy().data.cast("B"))
    return u8, prompts


def decode_json_request(data: bytes | bytearray) -> tuple[torch.Tensor, list[str]]:
    """A JSON request's uint8 frames and prompts."""
    req = parse_json(data)
    prompts, shape = check_header(req)
    if "frames" not in req:
        raise BadRequest("missing field(s): frames")
    if not isinstance(req["frames"], str):
        raise BadRequest("'frames' must be a base64 string")
    try:
        raw = base64.b64decode(req["frames"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"'frames' is not valid base64: {exc}") from None
    if len(raw) != math.prod(shape):
        raise BadRequest(f"'frames' has {len(raw)} bytes but shape {shape} needs {math.prod(shape)}")
    u8 = torch.empty(shape, dtype=torch.uint8)
    u8.numpy().data.cast("B")[:] = raw
    return u8, prompts


def encode_request(u8: torch.Tensor, prompts: list[str]) -> tuple[list, int]:
    """A binary request body as buffers to send one after another (the frames' own memory, not a
    copy; keep ``u8`` alive while sending), and its total length."""
    u8 = u8.contiguous()
    header = json.dumps({"prompts": list(prompts), "shape": list(u8.shape), "dtype": "uint8"}).encode()
    frames = u8.numpy().data.cast("B")
    return [len(header).to_bytes(4, "big") + header, frames], 4 + len(header) + len(frames)
