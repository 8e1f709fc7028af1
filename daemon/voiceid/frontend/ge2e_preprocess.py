"""Resemblyzer's ``preprocess_wav`` for 16 kHz input, in numpy + webrtcvad.

Reproduces ``resemblyzer/audio.py`` (0.1.4) exactly, without librosa or scipy:

1. :func:`normalize_volume`: scale to −30 dBFS (RMS relative to int16 full scale 32767),
   increase only;
2. :func:`trim_long_silences`: webrtcvad (mode 3) on 30 ms windows of the int16-rounded
   waveform, voice flags smoothed by a moving average of width 8 and rounded, voiced regions
   dilated by 3 windows on each side (``binary_dilation`` with ``ones(7)``), unvoiced windows
   dropped; the tail that does not fill a 30 ms window is dropped first.

Samples are float32 at 16 kHz. The only deliberate difference: all-zero input is returned
unchanged by :func:`normalize_volume` (Resemblyzer would divide by zero and return NaN).
"""

from __future__ import annotations

import numpy as np
import webrtcvad
from numpy.typing import ArrayLike

from voiceid.frontend.base import Float32Array

SAMPLE_RATE = 16000
INT16_MAX = 2**15 - 1  # Resemblyzer's int16_max (32767, not 32768)
TARGET_DBFS = -30.0
VAD_WINDOW_MS = 30
VAD_MOVING_AVERAGE_WIDTH = 8
VAD_MAX_SILENCE_WINDOWS = 6
VAD_MODE = 3


def _as_samples(samples: ArrayLike) -> Float32Array:
    wav = np.asarray(samples, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"expected mono samples of shape [n], got shape {wav.shape}")
    return wav


def volume_gain(samples: ArrayLike, target_dbfs: float = TARGET_DBFS) -> np.float32:
    """Linear gain that brings ``samples`` to ``target_dbfs`` (1.0 for silence or empty input).

    Computed in float32 like Resemblyzer's ``normalize_volume``.
    """
    wav = _as_samples(samples)
    if wav.size == 0:
        return np.float32(1.0)
    rms = np.sqrt(np.mean((wav * INT16_MAX) ** 2))
    if not rms > 0:
        return np.float32(1.0)
    wave_dbfs = 20 * np.log10(rms / INT16_MAX)
    change = np.float32(target_dbfs) - wave_dbfs
    return np.float32(10 ** (change / 20))


def normalize_volume(
    samples: ArrayLike, target_dbfs: float = TARGET_DBFS, increase_only: bool = True
) -> Float32Array:
    """Scale ``samples`` to ``target_dbfs``; with ``increase_only`` never make them quieter."""
    wav = _as_samples(samples)
    gain = volume_gain(wav, target_dbfs)
    if increase_only and gain < 1:
        return wav.copy()
    return (wav * gain).astype(np.float32, copy=False)


def _moving_average(array: np.ndarray, width: int) -> np.ndarray:
    # Exactly Resemblyzer's moving_average (zero padding (width-1)//2 left, width//2 right).
    array_padded = np.concatenate((np.zeros((width - 1) // 2), array, np.zeros(width // 2)))
    ret = np.cumsum(array_padded, dtype=float)
    ret[width:] = ret[width:] - ret[:-width]
    return ret[width - 1 :] / width


def _binary_dilation(mask: np.ndarray, size: int) -> np.ndarray:
    # scipy.ndimage.binary_dilation(mask, np.ones(size)) for odd size: centred, zero border.
    half = size // 2
    padded = np.concatenate((np.zeros(half, bool), mask, np.zeros(half, bool)))
    counts = np.cumsum(np.concatenate(([0], padded.astype(np.int64))))
    dilated: np.ndarray = (counts[size:] - counts[:-size]) > 0
    return dilated


def voice_mask(samples: ArrayLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Per 30 ms window: keep (True) or drop, as Resemblyzer's ``trim_long_silences`` decides."""
    wav = _as_samples(samples)
    window = (VAD_WINDOW_MS * sample_rate) // 1000
    n_windows = len(wav) // window
    if n_windows == 0:
        return np.zeros(0, dtype=bool)
    wav = wav[: n_windows * window]
    pcm = np.round(wav * INT16_MAX).astype(np.int16).astype("<i2").tobytes()
    vad = webrtcvad.Vad(VAD_MODE)
    step = window * 2
    flags = np.array(
        [vad.is_speech(pcm[i * step : (i + 1) * step], sample_rate) for i in range(n_windows)],
        dtype=bool,
    )
    smoothed = _moving_average(flags, VAD_MOVING_AVERAGE_WIDTH)
    mask = np.round(smoothed).astype(bool)
    return _binary_dilation(mask, VAD_MAX_SILENCE_WINDOWS + 1)


def trim_long_silences(samples: ArrayLike, sample_rate: int = SAMPLE_RATE) -> Float32Array:
    """Drop silences longer than 6 × 30 ms windows (and the final partial window)."""
    wav = _as_samples(samples)
    window = (VAD_WINDOW_MS * sample_rate) // 1000
    mask = voice_mask(wav, sample_rate)
    keep = np.repeat(mask, window)
    trimmed: Float32Array = wav[: keep.size][keep]
    return trimmed


def preprocess_utterance(samples: ArrayLike, sample_rate: int = SAMPLE_RATE) -> Float32Array:
    """Resemblyzer's ``preprocess_wav`` for audio already at 16 kHz: volume, then VAD trim."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"GE2E preprocessing expects {SAMPLE_RATE} Hz audio, got {sample_rate}")
    wav = normalize_volume(samples, TARGET_DBFS, increase_only=True)
    return trim_long_silences(wav, sample_rate)
