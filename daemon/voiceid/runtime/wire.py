"""Bytes on the pipe between a front-end worker process and the embedding process.

Sans-I/O: pure functions from arrays to bytes and back; the adapters (``workers.py``,
``remote.py``) move the bytes. Two message kinds, both a fixed header + raw C-order data:

- ``FEATS``: a block of windows, float32 [n, T, F] (frames x mel bins);
- ``EMBS``: their embeddings, float32 [n, D], or an error (one line of UTF-8).

A block costs one ``send_bytes`` and one copy each way: no pickling, no object per window.
"""

from __future__ import annotations

import struct

import numpy as np
from numpy.typing import NDArray

from voiceid.errors import VoiceidError

FEATS = b"VIDF"
EMBS = b"VIDE"
FAIL = b"VIDX"
_HEAD = struct.Struct("<4sIII")  # kind, then three dimensions (unused ones are 0)
MAX_WINDOWS = 1 << 16  # windows per block (a bound, not a tuning knob)
MAX_DIM = 1 << 14  # frames, bins or embedding size


class WireError(VoiceidError):
    """A malformed message between daemon processes (a bug or a dying peer)."""


def pack_feats(feats: NDArray[np.float32]) -> bytes:
    """[n, T, F] windows -> one message."""
    x = np.ascontiguousarray(feats, dtype=np.float32)
    if x.ndim != 3:
        raise WireError(f"feature block must be [n, T, F], got shape {x.shape}")
    return _HEAD.pack(FEATS, *x.shape) + x.tobytes()


def pack_embs(embs: NDArray[np.float32]) -> bytes:
    """[n, D] embeddings -> one message."""
    y = np.ascontiguousarray(embs, dtype=np.float32)
    if y.ndim != 2:
        raise WireError(f"embedding block must be [n, D], got shape {y.shape}")
    return _HEAD.pack(EMBS, *y.shape, 0) + y.tobytes()


def pack_error(message: str) -> bytes:
    """A failed block: the reason, one line."""
    text = message.splitlines()[0].encode("utf-8", "replace")[:1000] if message else b"?"
    return _HEAD.pack(FAIL, len(text), 0, 0) + text


def unpack_feats(data: bytes) -> NDArray[np.float32]:
    """One ``FEATS`` message -> [n, T, F] float32 (a read-only view of ``data``)."""
    n, t, f = _dims(data, FEATS)
    return _array(data, (n, t, f))


def unpack_embs(data: bytes) -> NDArray[np.float32]:
    """One ``EMBS`` message -> [n, D]; a ``FAIL`` message raises :class:`WireError`."""
    if data[:4] == FAIL:
        size = _dims(data, FAIL)[0]
        raise WireError(data[_HEAD.size : _HEAD.size + size].decode("utf-8", "replace"))
    n, d, _ = _dims(data, EMBS)
    return _array(data, (n, d))


def _dims(data: bytes, kind: bytes) -> tuple[int, int, int]:
    if len(data) < _HEAD.size:
        raise WireError(f"message of {len(data)} bytes is shorter than its header")
    got, a, b, c = _HEAD.unpack_from(data)
    if got != kind:
        raise WireError(f"expected a {kind!r} message, got {got!r}")
    if kind != FAIL and (a > MAX_WINDOWS or b > MAX_DIM or c > MAX_DIM):
        raise WireError(f"message dimensions out of range: {a} x {b} x {c}")
    return int(a), int(b), int(c)


def _array(data: bytes, shape: tuple[int, ...]) -> NDArray[np.float32]:
    need = 4 * int(np.prod(shape))
    if len(data) - _HEAD.size != need:
        raise WireError(f"message for shape {shape} has {len(data) - _HEAD.size} bytes, not {need}")
    return np.frombuffer(data, np.float32, offset=_HEAD.size).reshape(shape)
