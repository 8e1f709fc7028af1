"""Bytes on the pipe between a front-end worker process and the embedding process.

Sans-I/O: pure functions from arrays to bytes and back; the adapters (``workers.py``,
``embclient.py``) move the bytes. Every message carries the sequence number ``seq`` of
its request, so a worker can have several requests in flight and match the answers.
Three message kinds, each a fixed header + raw C-order float32:

- ``FEATS``: one request, ``k`` groups of windows, group ``i`` float32 [n_i, T_i, F]
  (windows of different lengths travel in one message and are batched apart);
- ``EMBS``: its embeddings, float32 [sum n_i, D], rows in request order;
- ``FAIL``: the request failed: the reason, one line of UTF-8.

A request costs one ``send_bytes`` and one copy each way: no pickling, no object per window.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from voiceid.errors import VoiceidError

FEATS = b"VIDF"
EMBS = b"VIDE"
FAIL = b"VIDX"
_HEAD = struct.Struct("<4sIII")  # kind, seq, then two numbers (FEATS: groups, 0)
_GROUP = struct.Struct("<III")  # windows n, frames T, bins F
MAX_GROUPS = 64  # window lengths per request (a bound, not a tuning knob)
MAX_WINDOWS = 1 << 16  # windows per group or reply
MAX_DIM = 1 << 14  # frames, bins or embedding size

Windows = NDArray[np.floating] | Sequence[NDArray[np.floating]]
"""One group: [n, T, F] array or n arrays [T, F] of one shape."""


class WireError(VoiceidError):
    """A malformed message between daemon processes (a bug or a dying peer)."""


def pack_feats(seq: int, groups: Sequence[Windows]) -> bytearray:
    """Request ``seq``: each group's windows written once, straight into the message."""
    if not 0 < len(groups) <= MAX_GROUPS:
        raise WireError(f"a request holds 1..{MAX_GROUPS} groups, got {len(groups)}")
    shapes = []
    for g in groups:
        shape = np.shape(g[0]) if len(g) else ()
        if len(shape) != 2:
            raise WireError(f"a group must be non-empty windows [T, F], got {len(g)} of {shape}")
        shapes.append((len(g), *shape))
    head = _HEAD.size + _GROUP.size * len(groups)
    out = bytearray(head + 4 * sum(n * t * f for n, t, f in shapes))
    _HEAD.pack_into(out, 0, FEATS, seq, len(groups), 0)
    at = head
    for i, (g, shape) in enumerate(zip(groups, shapes, strict=True)):
        _GROUP.pack_into(out, _HEAD.size + i * _GROUP.size, *shape)
        block = np.frombuffer(out, np.float32, count=int(np.prod(shape)), offset=at)
        block = block.reshape(shape)
        if isinstance(g, np.ndarray):
            np.copyto(block, g, casting="same_kind")
        else:
            for row, window in zip(block, g, strict=True):  # a window of another shape raises
                np.copyto(row, window, casting="same_kind")
        at += block.nbytes
    return out


def pack_embs(seq: int, embs: NDArray[np.floating]) -> bytes:
    """Reply to ``seq``: [n, D] embeddings."""
    y = np.ascontiguousarray(embs, dtype=np.float32)
    if y.ndim != 2:
        raise WireError(f"embedding block must be [n, D], got shape {y.shape}")
    return _HEAD.pack(EMBS, seq, *y.shape) + y.tobytes()


def pack_error(seq: int, message: str) -> bytes:
    """Reply to ``seq``: it failed, and why (one line)."""
    text = message.splitlines()[0].encode("utf-8", "replace")[:1000] if message else b"?"
    return _HEAD.pack(FAIL, seq, len(text), 0) + text


Buffer = bytes | bytearray | memoryview


def unpack_feats(data: Buffer) -> tuple[int, list[NDArray[np.float32]]]:
    """One ``FEATS`` message -> (seq, groups [n, T, F]) as read-only views of ``data``."""
    seq, k, _ = _head(data, FEATS)
    if not 0 < k <= MAX_GROUPS:
        raise WireError(f"request {seq} has {k} groups, not 1..{MAX_GROUPS}")
    at = _HEAD.size + k * _GROUP.size
    if len(data) < at:
        raise WireError(f"request {seq} is shorter than its {k} group headers")
    groups = []
    for i in range(k):
        n, t, f = _GROUP.unpack_from(data, _HEAD.size + i * _GROUP.size)
        if not (0 < n <= MAX_WINDOWS and 0 < t <= MAX_DIM and 0 < f <= MAX_DIM):
            raise WireError(f"request {seq}: group dimensions out of range: {n} x {t} x {f}")
        size = n * t * f
        if len(data) < at + 4 * size:
            raise WireError(f"request {seq} ends inside group {i} ({n} x {t} x {f})")
        groups.append(np.frombuffer(data, np.float32, count=size, offset=at).reshape(n, t, f))
        at += 4 * size
    if at != len(data):
        raise WireError(f"request {seq} has {len(data) - at} bytes after its last group")
    return seq, groups


def unpack_reply(data: bytes) -> tuple[int, NDArray[np.float32] | None, str | None]:
    """One ``EMBS`` or ``FAIL`` message -> (seq, [n, D] embeddings, None) or (seq, None, why)."""
    kind = data[:4]
    if kind == FAIL:
        seq, size, _ = _head(data, FAIL)
        return seq, None, data[_HEAD.size : _HEAD.size + size].decode("utf-8", "replace")
    seq, n, d = _head(data, EMBS)
    if n > MAX_WINDOWS or d > MAX_DIM:
        raise WireError(f"reply {seq}: dimensions out of range: {n} x {d}")
    if len(data) - _HEAD.size != 4 * n * d:
        raise WireError(
            f"reply {seq} for {n} x {d} has {len(data) - _HEAD.size} bytes, not {4 * n * d}"
        )
    return seq, np.frombuffer(data, np.float32, offset=_HEAD.size).reshape(n, d), None


def seq_of(data: Buffer) -> int | None:
    """The sequence number of a (maybe malformed) message, None if even that is cut off."""
    return int(_HEAD.unpack_from(data)[1]) if len(data) >= _HEAD.size else None


def _head(data: Buffer, kind: bytes) -> tuple[int, int, int]:
    if len(data) < _HEAD.size:
        raise WireError(f"message of {len(data)} bytes is shorter than its header")
    got, seq, a, b = _HEAD.unpack_from(data)
    if got != kind:
        raise WireError(f"expected a {kind!r} message, got {got!r}")
    return int(seq), int(a), int(b)
