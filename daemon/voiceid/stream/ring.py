"""Bounded ring buffers: the only audio/feature memory a stream keeps.

A ring holds the newest ``capacity`` rows and counts every row ever pushed (``total``),
so a position can be named absolutely (sample 123456 of the stream) while memory stays
fixed. Nothing ever grows: pushing more than ``capacity`` rows keeps the newest ones.
"""

from __future__ import annotations

from typing import Generic, TypeVar, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from voiceid.errors import ConfigError

S = TypeVar("S", bound=np.generic)

DEFAULT_SAMPLE_CAPACITY = 4 * 16000  # samples: 4 s at 16 kHz
DEFAULT_FRAME_CAPACITY = 400  # frames: 4 s at 10 ms per frame


class Ring(Generic[S]):
    """Fixed-size ring of rows of shape ``row_shape`` and dtype ``dtype``."""

    def __init__(self, capacity: int, row_shape: tuple[int, ...], dtype: type[S]) -> None:
        if capacity < 1:
            raise ConfigError(f"ring capacity must be ≥ 1, got {capacity}")
        self._buf = cast(NDArray[S], np.zeros((capacity, *row_shape), dtype=dtype))
        self._row_shape = row_shape
        self._dtype = dtype
        self._pos = 0  # index where the next row is written
        self._total = 0  # rows pushed since creation/clear

    @property
    def capacity(self) -> int:
        """Most rows held."""
        return int(self._buf.shape[0])

    @property
    def total(self) -> int:
        """Rows pushed since creation (absolute counter; the newest row is ``total - 1``)."""
        return self._total

    @property
    def size(self) -> int:
        """Rows held now: ``min(total, capacity)``."""
        return min(self._total, self.capacity)

    def extend(self, rows: ArrayLike) -> None:
        """Append rows (shape ``[n, *row_shape]``); the oldest fall out when full."""
        x = np.asarray(rows, dtype=self._dtype)
        if x.shape[1:] != self._row_shape or x.ndim != 1 + len(self._row_shape):
            raise ValueError(f"ring rows must have shape [n, *{self._row_shape}], got {x.shape}")
        n, cap = int(x.shape[0]), self.capacity
        if n == 0:
            return
        self._total += n
        if n >= cap:
            self._buf[:] = x[n - cap :]
            self._pos = 0
            return
        end = self._pos + n
        if end <= cap:
            self._buf[self._pos : end] = x
        else:
            k = cap - self._pos
            self._buf[self._pos :] = x[:k]
            self._buf[: n - k] = x[k:]
        self._pos = end % cap

    def last(self, n: int) -> NDArray[S]:
        """A contiguous copy of the newest ``n`` rows, oldest first; ``0 ≤ n ≤ size``."""
        if not 0 <= n <= self.size:
            raise ValueError(f"asked for the last {n} rows, the ring holds {self.size}")
        start = (self._pos - n) % self.capacity
        if start + n <= self.capacity:
            return self._buf[start : start + n].copy()
        return np.concatenate([self._buf[start:], self._buf[: self._pos]])

    def clear(self) -> None:
        """Forget all rows and reset ``total`` to 0."""
        self._pos = 0
        self._total = 0


class SampleRing(Ring[np.float32]):
    """Newest ``capacity`` audio samples (float32), default 4 s at 16 kHz."""

    def __init__(self, capacity: int = DEFAULT_SAMPLE_CAPACITY) -> None:
        super().__init__(capacity, (), np.float32)


class FrameRing(Ring[np.float32]):
    """Newest ``capacity`` feature frames, each ``num_bins`` float32 values: [capacity, F]."""

    def __init__(self, capacity: int = DEFAULT_FRAME_CAPACITY, num_bins: int = 80) -> None:
        if num_bins < 1:
            raise ConfigError(f"num_bins must be ≥ 1, got {num_bins}")
        super().__init__(capacity, (num_bins,), np.float32)

    @property
    def num_bins(self) -> int:
        """Features per frame (F)."""
        return int(self._buf.shape[1])


class FlagRing(Ring[np.bool_]):
    """Newest ``capacity`` booleans (e.g. one voice flag per 10 ms frame)."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity, (), np.bool_)

    def count(self, n: int) -> int:
        """How many of the newest ``min(n, size)`` flags are set."""
        return int(np.count_nonzero(self.last(min(max(n, 0), self.size))))
