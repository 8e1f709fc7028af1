"""Test doubles for the streaming core: a counting front-end, embeds, a scorer, a clock."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from voiceid.frontend.base import FrontEndSpec

RATE = 16000


def noise(seconds: float, dbfs: float, seed: int = 0) -> NDArray[np.float32]:
    """White noise with RMS level ``dbfs`` (relative to 1.0)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(round(seconds * RATE))
    return (x * 10 ** (dbfs / 20)).astype(np.float32)


def silence(seconds: float) -> NDArray[np.float32]:
    return np.zeros(round(seconds * RATE), dtype=np.float32)


def at_level(
    x: NDArray[np.float32], dbfs: float, background_dbfs: float | None = None, seed: int = 7
) -> NDArray[np.float32]:
    """``x`` scaled to RMS ``dbfs``, plus white noise at ``background_dbfs`` if given."""
    y = x.astype(np.float64) * 10 ** (dbfs / 20) / np.sqrt(np.mean(np.square(x, dtype=np.float64)))
    if background_dbfs is not None:
        y += noise(x.size / RATE, background_dbfs, seed=seed)
    return y.astype(np.float32)


def vowel(seconds: float, dbfs: float, f0: float = 120.0, seed: int = 0) -> NDArray[np.float32]:
    """A steady synthetic vowel: harmonics of ``f0`` up to 4 kHz (amplitude 1/k, random
    phases), RMS ``dbfs``. webrtcvad (every mode) calls it speech at −35 dBFS and above."""
    t = np.arange(round(seconds * RATE)) / RATE
    phases = np.random.default_rng(seed).uniform(0.0, 2 * np.pi, int(4000 / f0))
    x = sum(np.sin(2 * np.pi * f0 * k * t + ph) / k for k, ph in enumerate(phases, 1))
    x = np.asarray(x, dtype=np.float64)
    return (x * 10 ** (dbfs / 20) / np.sqrt(np.mean(x * x))).astype(np.float32)


class FakeFrontEnd:
    """Incremental per-frame log-energy features (Kaldi geometry: 400/160, snip_edges).

    Bin k of a frame is ``log10(mean power) + k``. Counts every sample and call it is given.
    ``normalize_window`` is the identity (no CMN), so the level survives to the embed.
    """

    def __init__(self, num_bins: int = 4) -> None:
        self.spec = FrontEndSpec(kind="kaldi_fbank", num_bins=num_bins)
        self.samples_seen = 0
        self.calls = 0
        self.normalized = 0
        self._buf = np.zeros(0, dtype=np.float32)
        self._out = 0

    @property
    def frames_out(self) -> int:
        return self._out

    def accept(self, samples: ArrayLike) -> NDArray[np.float32]:
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.samples_seen += x.size
        self.calls += 1
        self._buf = np.concatenate([self._buf, x])
        length, shift = self.spec.frame_length, self.spec.frame_shift
        n = 0 if self._buf.size < length else 1 + (self._buf.size - length) // shift
        out = np.empty((n, self.spec.num_bins), dtype=np.float32)
        for i in range(n):
            seg = self._buf[i * shift : i * shift + length].astype(np.float64)
            level = np.log10(np.mean(seg * seg) + 1e-10)
            out[i] = level + np.arange(self.spec.num_bins)
        self._buf = self._buf[n * shift :]
        self._out += n
        return out

    def flush(self) -> NDArray[np.float32]:
        return np.zeros((0, self.spec.num_bins), dtype=np.float32)

    def reset(self) -> None:
        self.__init__(self.spec.num_bins)  # type: ignore[misc]

    def normalize_window(
        self, frames: NDArray[np.float32], samples: NDArray[np.float32]
    ) -> NDArray[np.float32]:
        self.normalized += 1
        return frames.copy()


def level_embed(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """[B, T, F] → [B, 2] unit vectors: loud windows (≈ −10 dBFS) point at A = (1, 0),
    quieter ones (≈ −30 dBFS) at B = (0, 1); in between, in between."""
    power = np.power(10.0, x[:, :, 0].astype(np.float64)).mean(axis=1)  # bin 0: log10(power)
    level_db = 10.0 * np.log10(power)  # silent frames add nothing
    frac = np.clip((-10.0 - level_db) / 20.0, 0.0, 1.0)
    angle = frac * np.pi / 2
    return np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)


class FixedScorer:
    """Cosine against fixed unit centroids."""

    def __init__(self, names: list[str], centroids: ArrayLike) -> None:
        self.names = names
        c = np.asarray(centroids, dtype=np.float32)
        self._c = c / np.linalg.norm(c, axis=1, keepdims=True)

    def scores(self, emb: NDArray[np.float32]) -> NDArray[np.float32]:
        out: NDArray[np.float32] = emb @ self._c.T
        return out


AB_SCORER = FixedScorer(["A", "B"], [[1.0, 0.0], [0.0, 1.0]])


class FakeClock:
    """A clock tests move by hand (unix seconds)."""

    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
