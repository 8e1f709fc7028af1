"""Streaming conversion of raw client audio (bytes) to float32 mono at the model's rate.

A live stream arrives in arbitrary pieces: a piece may end in the middle of a sample or of
a multi-channel frame. :class:`PcmDecoder` keeps such a remainder for the next call, so
any split of the same byte stream gives the same samples. Bad input is a
:class:`~voiceid.errors.ProtocolError`, never a crash.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np
import soxr

from voiceid.errors import ProtocolError
from voiceid.frontend.base import Float32Array

Encoding = Literal["pcm_s16le", "f32le"]
ENCODINGS: tuple[str, ...] = get_args(Encoding)
MIN_RATE, MAX_RATE = 8000, 192000
MAX_CHANNELS = 8
_DTYPES: dict[str, np.dtype[Any]] = {"pcm_s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


def _check_rate(name: str, rate: object) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(
            f"unsupported {name} {rate!r}",
            hint=f"use an integer rate in Hz from {MIN_RATE} to {MAX_RATE}, e.g. 16000",
        )
    return rate


class PcmDecoder:
    """Raw interleaved PCM bytes → float32 mono samples at ``out_rate`` (streaming).

    ``pcm_s16le`` is scaled by 1/32768; ``f32le`` must be finite and is clipped to
    [-1, 1]. Channels are averaged. Rates other than ``out_rate`` go through a soxr
    ``ResampleStream`` (quality "HQ"), which holds back a few ms until :meth:`flush`.
    """

    def __init__(
        self,
        sample_rate: int,
        encoding: Encoding,
        channels: int,
        out_rate: int = 16000,
    ) -> None:
        self.sample_rate = _check_rate("sample rate", sample_rate)
        self.out_rate = _check_rate("output rate", out_rate)
        if encoding not in ENCODINGS:
            raise ProtocolError(
                f"unsupported audio encoding {encoding!r}",
                hint=f"use one of: {', '.join(ENCODINGS)}",
            )
        if (
            isinstance(channels, bool)
            or not isinstance(channels, int)
            or not 1 <= channels <= MAX_CHANNELS
        ):
            raise ProtocolError(
                f"unsupported channel count {channels!r}",
                hint=f"send 1 to {MAX_CHANNELS} interleaved channels",
            )
        self.encoding: Encoding = encoding
        self.channels = channels
        self._dtype = _DTYPES[encoding]
        self.frame_bytes = self._dtype.itemsize * channels
        self._resampler: soxr.ResampleStream | None = None
        self.reset()

    def reset(self) -> None:
        """Forget all state (remainder bytes, resampler history), as if newly created."""
        self._rest = b""
        self._bytes_in = 0  # stream bytes consumed so far, remainder included
        self._samples_out = 0
        if self.sample_rate != self.out_rate:
            self._resampler = soxr.ResampleStream(
                self.sample_rate, self.out_rate, 1, dtype="float32", quality="HQ"
            )
        else:
            self._resampler = None

    @property
    def bytes_in(self) -> int:
        """Bytes accepted so far (including an incomplete frame kept for the next call)."""
        return self._bytes_in

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame waiting for the rest of it."""
        return len(self._rest)

    @property
    def samples_out(self) -> int:
        """Output samples returned so far."""
        return self._samples_out

    def decode(self, data: bytes | bytearray | memoryview) -> Float32Array:
        """Convert the next piece of the byte stream; returns the samples it completes.

        Raises :class:`ProtocolError` for non-finite ``f32le`` values (the piece is then
        not consumed).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ProtocolError(f"audio must be bytes, got {type(data).__name__}")
        buf = self._rest + bytes(data)
        start_offset = self._bytes_in - len(self._rest)  # stream offset of buf[0]
        usable = len(buf) - len(buf) % self.frame_bytes
        raw = np.frombuffer(buf, dtype=self._dtype, count=usable // self._dtype.itemsize)
        if self.encoding == "f32le":
            finite = np.isfinite(raw)
            if not finite.all():
                bad = int(np.argmin(finite))
                offset = start_offset + bad * self._dtype.itemsize
                raise ProtocolError(
                    f"NaN/Inf in f32le audio at byte offset {offset}",
                    hint="send finite float samples in [-1, 1]",
                )
            x = np.clip(raw, -1.0, 1.0).astype(np.float32, copy=False)
        else:
            x = raw.astype(np.float32) * np.float32(1.0 / 32768.0)
        self._rest = buf[usable:]
        self._bytes_in += len(data)
        if self.channels > 1:
            x = x.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        out = self._resample(np.ascontiguousarray(x, dtype=np.float32), last=False)
        self._samples_out += out.shape[0]
        return out

    def flush(self) -> Float32Array:
        """End of stream: the resampler's held-back tail. An incomplete last frame is
        dropped. Afterwards the decoder is reset for a new stream (counters too)."""
        out = self._resample(np.zeros(0, dtype=np.float32), last=True)
        self.reset()
        return out

    def _resample(self, x: Float32Array, *, last: bool) -> Float32Array:
        if self._resampler is None:
            return x  # always a fresh array here (converted from the byte buffer)
        y = self._resampler.resample_chunk(x, last=last)
        return np.asarray(y, dtype=np.float32)
