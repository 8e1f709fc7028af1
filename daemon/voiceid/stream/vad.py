"""Incremental voice gate: one voice flag per 10 ms frame of a stream.

Two detectors:

* ``webrtc`` (default): webrtcvad (aggressiveness ``mode`` 0-3) on ``window_ms``
  sub-windows (10, 20 or 30 ms); each sub-window's decision is copied to its 10 ms frames,
  so flags arrive in groups of ``window_ms / 10`` (``flush`` decides a shorter tail).
* ``energy``: a 10 ms frame is voice when its RMS level is at least ``energy_dbfs``.

In both, a 10 ms frame below the *floor* is never voice: webrtcvad alone fires on hiss,
and digital silence or low noise must not open a window. The floor adapts to the
recording: ``noise_margin_db`` above the noise level (5th percentile of the frame levels
over ``history_s``), kept within [``min_floor_dbfs``, ``floor_dbfs``] — so steady noise
stays out whatever its level, and quiet talkers on quiet channels still count. Levels are
RMS in dBFS relative to 1.0 (a full-scale square wave is 0 dBFS, a full-scale sine −3 dBFS).

Memory is bounded: < one sub-window of pending samples plus ``history_s`` of flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import webrtcvad
from numpy.typing import ArrayLike, NDArray

from voiceid.errors import ConfigError
from voiceid.stream.ring import FlagRing, Ring

FRAME_S = 0.010  # seconds per voice flag
FLOOR_EVERY = 10  # sub-windows between two noise-floor updates (300 ms at 30 ms windows)


@dataclass(frozen=True, slots=True)
class VadConfig:
    """Voice gate settings; the defaults are what the daemon uses."""

    kind: Literal["webrtc", "energy"] = "webrtc"
    mode: int = 2  # webrtcvad aggressiveness, 0 (lenient) .. 3 (strict)
    window_ms: int = 30  # webrtcvad sub-window: 10, 20 or 30 ms
    energy_dbfs: float = -40.0  # energy kind: 10 ms frames at least this loud are voice
    floor_dbfs: float = -50.0  # the floor never goes above this (dBFS)
    min_floor_dbfs: float = -65.0  # ... nor below this (dBFS)
    noise_margin_db: float = 10.0  # floor = noise level + this margin (dB)
    history_s: float = 4.0  # seconds of flags kept for voiced_s()

    def __post_init__(self) -> None:
        if self.kind not in ("webrtc", "energy"):
            raise ConfigError(f"vad kind must be 'webrtc' or 'energy', got {self.kind!r}")
        if self.mode not in (0, 1, 2, 3):
            raise ConfigError(f"vad mode must be 0..3, got {self.mode}")
        if self.window_ms not in (10, 20, 30):
            raise ConfigError(f"vad window_ms must be 10, 20 or 30, got {self.window_ms}")
        if self.history_s < FRAME_S:
            raise ConfigError(f"vad history_s must be ≥ 0.01, got {self.history_s}")


def level_dbfs(frames: NDArray[np.float32]) -> NDArray[np.float64]:
    """RMS level in dBFS of each row of ``frames`` [n, samples]; −120 for digital silence."""
    x = frames.astype(np.float64)
    power: NDArray[np.float64] = np.mean(x * x, axis=1)
    level: NDArray[np.float64] = 10.0 * np.log10(np.maximum(power, 1e-12))
    return level


def to_pcm16(samples: NDArray[np.float32]) -> bytes:
    """float32 in [-1, 1] → little-endian int16 bytes (rounded, clipped), as webrtcvad wants."""
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()


class VoiceGate:
    """Feed samples, get one voice flag per completed 10 ms frame."""

    def __init__(self, config: VadConfig | None = None, sample_rate: int = 16000) -> None:
        self.config = config = config or VadConfig()
        if sample_rate not in (8000, 16000, 32000, 48000):
            raise ConfigError(f"VoiceGate needs 8/16/32/48 kHz audio, got {sample_rate} Hz")
        self.sample_rate = sample_rate
        self.frame = sample_rate // 100  # samples per 10 ms flag
        per = config.window_ms // 10 if config.kind == "webrtc" else 1
        self._per = per  # flags per analysis window
        self._window = self.frame * per  # samples per analysis window
        self._vad = webrtcvad.Vad(config.mode) if config.kind == "webrtc" else None
        self._pending = np.zeros(0, dtype=np.float32)
        self._flags = FlagRing(max(1, round(config.history_s / FRAME_S)))
        self._levels = Ring(self._flags.capacity, (), np.float64)  # 10 ms levels, dBFS
        self._floor: float | None = None  # cached floor_dbfs (see _decide)
        self._decided = 0  # sub-windows decided since the start (or reset)

    @property
    def floor_dbfs(self) -> float:
        """The level (dBFS) below which a frame is not voice, given the recent noise level."""
        cfg = self.config
        if self._levels.size == 0:
            return cfg.floor_dbfs
        noise = _percentile(self._levels.last(self._levels.size), 5.0)
        return min(cfg.floor_dbfs, max(cfg.min_floor_dbfs, noise + cfg.noise_margin_db))

    @property
    def frames_out(self) -> int:
        """10 ms flags produced so far (absolute)."""
        return self._flags.total

    def accept(self, samples: ArrayLike) -> NDArray[np.bool_]:
        """Consume new samples; return the flags of the 10 ms frames they complete."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        buf = np.concatenate([self._pending, x]) if self._pending.size else x
        windows = buf.size // self._window
        used = windows * self._window
        self._pending = buf[used:].copy()
        return self._decide(buf[:used].reshape(windows, self._window))

    def flush(self) -> NDArray[np.bool_]:
        """Decide the whole 10 ms frames pending now as one shorter sub-window; their flags.

        After it the flags reach the last whole 10 ms frame fed. The stream scheduler calls
        it at every hop end, so a hop's flags are complete when the hop is judged (webrtcvad
        takes 10, 20 and 30 ms frames alike). Left alone, the webrtc gate lags by up to
        ``window_ms`` − 10 ms.
        """
        n = self._pending.size // self.frame * self.frame
        if n == 0:
            return np.zeros(0, dtype=np.bool_)
        block = self._pending[:n].reshape(1, n)
        self._pending = self._pending[n:].copy()
        return self._decide(block)

    def _decide(self, pcm: NDArray[np.float32]) -> NDArray[np.bool_]:
        """Flags of the sub-windows ``pcm`` [windows, samples] (whole 10 ms frames each)."""
        windows, per = pcm.shape[0], pcm.shape[1] // self.frame
        if windows == 0:
            return np.zeros(0, dtype=np.bool_)
        level = level_dbfs(pcm.reshape(windows * per, self.frame))
        flags = level >= np.repeat(self._floors(level, windows, per), per)
        if self._vad is None:
            flags &= level >= self.config.energy_dbfs
        else:
            by_window = flags.reshape(windows, per)
            pcm16 = to_pcm16(pcm.reshape(-1))  # once for the block; sliced per sub-window
            step = 2 * pcm.shape[1]  # bytes per sub-window
            for i in np.flatnonzero(by_window.any(axis=1)).tolist():
                if not self._vad.is_speech(pcm16[i * step : (i + 1) * step], self.sample_rate):
                    by_window[i] = False
            flags = by_window.reshape(-1)
        self._flags.extend(flags)
        return flags

    def _floors(self, level: NDArray[np.float64], windows: int, per: int) -> NDArray[np.float64]:
        """The floor (dBFS) of each of ``windows`` sub-windows; their levels join the history.

        The floor of a sub-window comes from the levels up to and including it, never from
        later audio, and is recomputed every ``FLOOR_EVERY`` sub-windows counted from the
        stream start: the flags do not depend on how the input is chunked. The levels
        between two recomputations are added in one ring write.
        """
        floor = np.empty(windows, dtype=np.float64)
        w = 0
        while w < windows:
            if self._floor is None or self._decided % FLOOR_EVERY == 0:
                self._levels.extend(level[w * per : (w + 1) * per])
                self._floor = self.floor_dbfs
                end = w + 1
            else:
                end = min(windows, w + FLOOR_EVERY - self._decided % FLOOR_EVERY)
                self._levels.extend(level[w * per : end * per])
            floor[w:end] = self._floor
            self._decided += end - w
            w = end
        return floor

    def voiced_frames(self, last_n_frames: int) -> int:
        """Voiced 10 ms frames among the newest ``last_n_frames`` flags (fewer if not yet)."""
        return self._flags.count(last_n_frames)

    def flags(self, last_n_frames: int) -> NDArray[np.bool_]:
        """The newest ``min(n, available)`` 10 ms voice flags, oldest first (a copy)."""
        return self._flags.last(min(max(last_n_frames, 0), self._flags.size))

    def voiced_s(self, last_n_frames: int) -> float:
        """Seconds of voice among the newest ``last_n_frames`` 10 ms flags."""
        return self.voiced_frames(last_n_frames) * FRAME_S

    def reset(self) -> None:
        """Forget pending samples and flags."""
        self._pending = np.zeros(0, dtype=np.float32)
        self._flags.clear()
        self._levels.clear()
        self._floor = None
        self._decided = 0


def _percentile(values: NDArray[np.float64], q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) via a partial sort: faster."""
    rank = q / 100.0 * (values.size - 1)
    lo = int(np.floor(rank))
    hi = min(lo + 1, values.size - 1)
    part = np.partition(values, (lo, hi))
    return float(part[lo] + (part[hi] - part[lo]) * (rank - lo))
