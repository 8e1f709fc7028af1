"""Resemblyzer's front-end: 40-bin mel **power** spectrogram (not log), computed incrementally.

Exactly ``librosa.feature.melspectrogram(y, sr=16000, n_fft=400, hop_length=160, n_mels=40)``
as Resemblyzer 0.1.4 calls it (librosa ≥ 0.10 defaults): periodic hann window of 400
samples, ``center=True`` with **zero** (constant) padding of 200 samples at both ends,
|STFT|² (power 2), slaney-style mel filters with slaney area normalisation, 0 Hz to
8 kHz. Frames are 160 samples apart; an utterance of n samples has ``1 + n // 160`` frames.
As in librosa the window × samples product and the FFT are float64, the spectrum is then
rounded to complex64 and everything after is float32.

Streaming: frame j spans samples ``[160 j − 200, 160 j + 200)`` of the stream (zeros before
0). :meth:`MelPower40.accept` returns a frame as soon as its span is complete;
:meth:`MelPower40.flush` appends the 200 zeros of the right-hand centre padding and returns
the rest. The frames do not depend on how the audio was chunked.

Per-window normalisation (:meth:`MelPower40.normalize_window`) is Resemblyzer's −30 dBFS
increase-only volume normalisation, applied in the mel domain (power scales with gain²).
No CMN.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from voiceid.errors import AudioError
from voiceid.frontend.base import Float32Array, FrontEndSpec
from voiceid.frontend.ge2e_preprocess import volume_gain

#: The Resemblyzer GE2E front-end.
MEL_POWER_40_SPEC = FrontEndSpec(
    kind="mel_power",
    num_bins=40,
    frame_length=400,
    frame_shift=160,
    cmn=False,
    target_dbfs=-30.0,
)


def _hz_to_mel(freqs: np.ndarray) -> np.ndarray:
    # librosa.hz_to_mel(htk=False): Slaney's Auditory Toolbox scale.
    f_sp = 200.0 / 3
    mels = freqs / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    log_t = freqs >= min_log_hz
    mels[log_t] = min_log_mel + np.log(freqs[log_t] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    # librosa.mel_to_hz(htk=False).
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    return freqs


def mel_filterbank(
    sr: int = 16000,
    n_fft: int = 400,
    n_mels: int = 40,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> Float32Array:
    """Slaney mel filterbank, ``librosa.filters.mel(htk=False, norm="slaney")``.

    Returns float32 [n_mels, 1 + n_fft // 2]: triangles between consecutive mel-spaced
    frequencies, each scaled by 2 / (its bandwidth in Hz) (constant area).
    """
    if fmax is None:
        fmax = sr / 2.0
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    edges = np.array([fmin, fmax], dtype=np.float64)
    min_mel, max_mel = _hz_to_mel(edges)
    mel_f = _mel_to_hz(np.linspace(min_mel, max_mel, n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, len(fftfreqs)), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    return weights


def hann_periodic(n: int) -> np.ndarray:
    """``scipy.signal.get_window("hann", n, fftbins=True)`` (float64), as librosa uses it."""
    fac = np.linspace(-np.pi, np.pi, n + 1)
    return (0.5 + 0.5 * np.cos(fac))[:n]


def _banded(fb: Float32Array) -> tuple[np.ndarray, Float32Array]:
    """Filterbank as (FFT bin index [n_mels, W], weight [n_mels, W]); W = widest filter.

    Narrower filters are padded with weight 0 (on bin 0), which adds exact zeros.
    """
    nonzero = [np.flatnonzero(row) for row in fb]
    width = max(1, *(len(nz) for nz in nonzero))
    taps = np.zeros((fb.shape[0], width), dtype=np.intp)
    weights = np.zeros((fb.shape[0], width), dtype=np.float32)
    for i, nz in enumerate(nonzero):
        taps[i, : len(nz)] = nz
        weights[i, : len(nz)] = fb[i, nz]
    return taps, weights


class MelPower40:
    """Incremental mel power spectrogram implementing :class:`voiceid.frontend.base.FrontEnd`."""

    def __init__(self, spec: FrontEndSpec = MEL_POWER_40_SPEC) -> None:
        if spec.kind != "mel_power":
            raise ValueError(f"MelPower40 needs a mel_power spec, got kind={spec.kind!r}")
        if spec.cmn:
            raise ValueError("MelPower40 does not do CMN (Resemblyzer has none)")
        self.spec = spec
        self._n_fft = spec.frame_length
        self._hop = spec.frame_shift
        self._pad = self._n_fft // 2
        self._window = hann_periodic(self._n_fft)
        self._taps, self._weights = _banded(
            mel_filterbank(spec.sample_rate, self._n_fft, spec.num_bins)
        )
        self.reset()

    def reset(self) -> None:
        """Forget all state, as if newly created."""
        # _buf holds the padded stream from padded index _buf_start on (left pad included).
        self._buf = np.zeros(self._pad, dtype=np.float32)
        self._buf_start = 0
        self._frames_out = 0
        self._samples_in = 0
        self._flushed = False

    @property
    def frames_out(self) -> int:
        """Frames returned so far."""
        return self._frames_out

    @property
    def samples_in(self) -> int:
        """Samples accepted so far."""
        return self._samples_in

    def _empty(self) -> Float32Array:
        return np.zeros((0, self.spec.num_bins), dtype=np.float32)

    def accept(self, samples: ArrayLike) -> Float32Array:
        """Consume new samples (float32, 16 kHz); return the frames they complete, [n, 40]."""
        if self._flushed:
            raise AudioError("MelPower40.accept() after flush()", hint="call reset() first")
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise AudioError(f"expected mono samples of shape [n], got shape {x.shape}")
        if x.size == 0:
            return self._empty()
        self._buf = np.concatenate((self._buf, x))
        self._samples_in += x.size
        return self._emit()

    def flush(self) -> Float32Array:
        """End of input: zero-pad the right end like librosa ``center=True``; return the rest.

        After it, :attr:`frames_out` is ``1 + samples_in // 160`` (0 if no samples came).
        """
        if self._flushed:
            return self._empty()
        self._flushed = True
        if self._samples_in == 0:
            return self._empty()
        self._buf = np.concatenate((self._buf, np.zeros(self._pad, dtype=np.float32)))
        return self._emit()

    def _emit(self) -> Float32Array:
        total = self._buf_start + self._buf.size  # padded samples seen so far
        if total < self._n_fft:
            return self._empty()
        complete = (total - self._n_fft) // self._hop + 1
        n = complete - self._frames_out
        if n <= 0:
            return self._empty()
        first = self._frames_out * self._hop - self._buf_start
        spans = np.lib.stride_tricks.sliding_window_view(self._buf[first:], self._n_fft)
        frames = spans[:: self._hop][:n]
        out = self._power_mel(frames)
        self._frames_out = complete
        next_start = complete * self._hop
        self._buf = self._buf[next_start - self._buf_start :].copy()
        self._buf_start = next_start
        return out

    def _power_mel(self, frames: np.ndarray) -> Float32Array:
        spectrum = np.fft.rfft(frames * self._window, axis=-1).astype(np.complex64)
        power = np.abs(spectrum) ** 2
        # Mel bins are accumulated tap by tap with elementwise float32 ops, not with a BLAS
        # matmul or a numpy reduction, whose rounding depends on how many frames are in the
        # batch: this way chunking cannot change a bit.
        mel: Float32Array = power[:, self._taps[:, 0]] * self._weights[:, 0]
        for k in range(1, self._taps.shape[1]):
            mel += power[:, self._taps[:, k]] * self._weights[:, k]
        return mel

    def normalize_window(self, frames: Float32Array, samples: Float32Array) -> Float32Array:
        """−30 dBFS increase-only volume normalisation of a window, in the mel power domain.

        The gain is computed from the window's ``samples`` exactly as Resemblyzer's
        ``normalize_volume``; power frames scale by gain². Returns a new float32 array.
        """
        out = np.array(frames, dtype=np.float32, copy=True)
        target = self.spec.target_dbfs
        if target is None:
            return out
        gain = volume_gain(samples, target)
        if gain > 1:
            out *= gain * gain
        return out


def mel_power_spectrogram(samples: ArrayLike) -> Float32Array:
    """One-shot Resemblyzer ``wav_to_mel_spectrogram``: [1 + n // 160, 40] float32."""
    fe = MelPower40()
    head = fe.accept(samples)
    return np.concatenate((head, fe.flush()))
