"""Voice activity on whole buffers (webrtcvad): how much speech a clip holds.

Streaming code keeps its own incremental gate (``voiceid.stream.vad``); this module
answers questions about a finished clip: enrollment quality, "silence only" errors.
"""

from __future__ import annotations

import numpy as np
import webrtcvad
from numpy.typing import NDArray

SAMPLE_RATE = 16000  # Hz; webrtcvad also takes 8/32/48 kHz, we always feed 16 kHz


def to_pcm16(samples: NDArray[np.float32]) -> bytes:
    """float32 [-1, 1] -> little-endian int16 bytes (rounded, clipped)."""
    scaled = np.clip(np.round(samples * 32768.0), -32768, 32767)
    return scaled.astype("<i2").tobytes()


MIN_DBFS = -50.0  # frames quieter than this are never speech (webrtcvad alone fires on hiss)


def frame_dbfs(samples: NDArray[np.float32], frame: int) -> NDArray[np.float64]:
    """RMS level in dBFS of consecutive ``frame``-sample frames (partial tail dropped)."""
    count = len(samples) // frame
    x = np.asarray(samples[: count * frame], dtype=np.float64).reshape(count, frame)
    level: NDArray[np.float64] = 10.0 * np.log10(np.mean(x * x, axis=1) + 1e-12)
    return level


def voice_flags(
    samples: NDArray[np.float32],
    *,
    mode: int = 2,
    frame_ms: int = 30,
    min_dbfs: float = MIN_DBFS,
) -> NDArray[np.bool_]:
    """One flag per ``frame_ms`` frame (10, 20 or 30 ms); a trailing partial frame is dropped.

    A frame is voiced when webrtcvad (aggressiveness ``mode`` 0-3) says so and its
    level is at least ``min_dbfs``.
    """
    n = SAMPLE_RATE * frame_ms // 1000
    loud = frame_dbfs(samples, n) >= min_dbfs
    pcm = to_pcm16(np.asarray(samples[: len(loud) * n], dtype=np.float32))
    vad = webrtcvad.Vad(mode)
    step = 2 * n
    flags = np.zeros(len(loud), dtype=bool)
    for i in np.flatnonzero(loud):
        flags[i] = vad.is_speech(pcm[i * step : (i + 1) * step], SAMPLE_RATE)
    return flags


def speech_seconds(samples: NDArray[np.float32], *, mode: int = 2) -> float:
    """Seconds of 30 ms frames that webrtcvad (``mode`` 0-3) calls speech."""
    return float(voice_flags(samples, mode=mode).sum()) * 0.030
