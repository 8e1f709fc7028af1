"""WeSpeaker's front-end: Kaldi log-mel filterbank, computed incrementally.

The settings are exactly those of torchaudio ``compliance.kaldi.fbank`` as WeSpeaker
uses it at inference (see FACTS.md §1): 16 kHz, samples scaled to the int16 range
(×32768), 80 mel bins, 25 ms hamming frames every 10 ms, dither 0, ``snip_edges``
(frames = 1 + (N − 400) // 160, no padding), pre-emphasis 0.97, DC removal, 20 Hz to
Nyquist, power spectrum, log floored at float epsilon, 512-point FFT. The per-window
normalisation is CMN: subtract each bin's mean over the window.

The work is done by kaldi-native-fbank's ``OnlineFbank`` (C++), which produces the same
frames whether the audio arrives in one call or in 20 ms chunks.

Bounded memory for streams that run for days: ``OnlineFbank`` keeps every frame it has
computed. After each :meth:`KaldiFbank.accept` the frames just returned are dropped with
``OnlineFbank.pop`` (its frame indices stay absolute), so it holds no frames between
calls and at most 399 samples of waveform. Its frame counter is a 32-bit int (it would
overflow after ~248 days at 100 frames/s), so every ``restart_frames`` frames (default
1,000,000 ≈ 2.8 h) the object is replaced by a fresh one primed with the stream's last
samples; as Kaldi frames depend only on their own samples, the output is unchanged.
"""

from __future__ import annotations

import kaldi_native_fbank as knf
import numpy as np
from numpy.typing import ArrayLike

from voiceid.frontend.base import Float32Array, FrontEndSpec

#: The WeSpeaker ResNet34(-LM) front-end.
WESPEAKER_SPEC = FrontEndSpec(
    kind="kaldi_fbank", num_bins=80, frame_length=400, frame_shift=160, cmn=True
)

_INT16_SCALE = 32768.0
_DEFAULT_RESTART_FRAMES = 1_000_000


def fbank_options(spec: FrontEndSpec = WESPEAKER_SPEC) -> knf.FbankOptions:
    """kaldi-native-fbank options equal to torchaudio ``compliance.kaldi.fbank`` for ``spec``."""
    if spec.kind != "kaldi_fbank":
        raise ValueError(f"KaldiFbank needs a kaldi_fbank spec, got kind={spec.kind!r}")
    opts = knf.FbankOptions()
    fo = opts.frame_opts
    fo.samp_freq = float(spec.sample_rate)
    fo.frame_length_ms = spec.frame_length * 1000.0 / spec.sample_rate
    fo.frame_shift_ms = spec.frame_shift * 1000.0 / spec.sample_rate
    fo.dither = 0.0
    fo.window_type = "hamming"
    fo.snip_edges = True
    fo.preemph_coeff = 0.97
    fo.remove_dc_offset = True
    fo.round_to_power_of_two = True  # 400 → 512-point FFT
    mo = opts.mel_opts
    mo.num_bins = spec.num_bins
    mo.low_freq = 20.0
    mo.high_freq = 0.0  # ≤ 0 means relative to Nyquist: 0 → Nyquist
    opts.use_energy = False
    opts.use_power = True
    opts.use_log_fbank = True
    return opts


class KaldiFbank:
    """Incremental Kaldi fbank implementing :class:`voiceid.frontend.base.FrontEnd`."""

    def __init__(
        self,
        spec: FrontEndSpec = WESPEAKER_SPEC,
        *,
        restart_frames: int = _DEFAULT_RESTART_FRAMES,
    ) -> None:
        if restart_frames < 1:
            raise ValueError(f"restart_frames must be ≥ 1, got {restart_frames}")
        self.spec = spec
        self._opts = fbank_options(spec)
        self._rate = float(spec.sample_rate)
        self._restart_frames = restart_frames
        self.reset()

    def reset(self) -> None:
        """Forget all state, as if newly created."""
        self._fb = knf.OnlineFbank(self._opts)
        self._base = 0  # frames produced by earlier OnlineFbank objects
        self._done = 0  # frames returned (and popped) from the current object
        self._samples_in = 0  # samples fed to the current object
        self._tail = np.zeros(0, dtype=np.float32)  # last < frame_length scaled samples
        self._empty = np.zeros((0, self.spec.num_bins), dtype=np.float32)

    @property
    def frames_out(self) -> int:
        """Frames returned so far."""
        return self._base + self._done

    @property
    def buffered_frames(self) -> int:
        """Frames held inside ``OnlineFbank`` after the last call (0: memory is bounded)."""
        return int(self._fb.num_frames_ready) - self._done

    def accept(self, samples: ArrayLike) -> Float32Array:
        """Consume new samples (float in [-1, 1)); return the frames they complete, [n, bins]."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if x.size == 0:
            return self._empty.copy()
        scaled = x * np.float32(_INT16_SCALE)
        self._fb.accept_waveform(self._rate, scaled.tolist())
        self._samples_in += scaled.size
        self._remember_tail(scaled)
        ready = int(self._fb.num_frames_ready)
        n = ready - self._done
        if n <= 0:
            return self._empty.copy()
        out = np.empty((n, self.spec.num_bins), dtype=np.float32)
        get = self._fb.get_frame
        for i in range(n):
            out[i] = get(self._done + i)
        self._fb.pop(n)
        self._done = ready
        if self._done >= self._restart_frames:
            self._restart()
        return out

    def flush(self) -> Float32Array:
        """End of input. With ``snip_edges`` there is no end padding: always empty."""
        return self._empty.copy()

    def normalize_window(self, frames: Float32Array, samples: Float32Array) -> Float32Array:
        """CMN: subtract each bin's mean over the window's frames (if the spec asks); new array."""
        f = np.asarray(frames, dtype=np.float32)
        if not self.spec.cmn or f.shape[0] == 0:
            return f.copy()
        out: Float32Array = (f - f.mean(axis=0, dtype=np.float64).astype(np.float32)).astype(
            np.float32, copy=False
        )
        return out

    # -- internals ---------------------------------------------------------------------

    def _remember_tail(self, scaled: Float32Array) -> None:
        keep = self.spec.frame_length
        if scaled.size >= keep:
            self._tail = scaled[-keep:].copy()
        else:
            self._tail = np.concatenate([self._tail, scaled])[-keep:]

    def _restart(self) -> None:
        """Replace ``OnlineFbank`` (its counters are int32) by a fresh one, same output."""
        consumed = self._done * self.spec.frame_shift  # first sample of the next frame
        pending = self._samples_in - consumed  # < frame_length after frames were taken
        self._base += self._done
        self._fb = knf.OnlineFbank(self._opts)
        self._done = 0
        self._samples_in = 0
        if pending > 0:
            rest = self._tail[self._tail.size - pending :]
            self._fb.accept_waveform(self._rate, rest.tolist())
            self._samples_in = int(rest.size)


def fbank(samples: ArrayLike, spec: FrontEndSpec = WESPEAKER_SPEC) -> Float32Array:
    """Frames of a whole utterance (no CMN), [1 + (N − 400) // 160, bins]; [0, bins] if short."""
    return KaldiFbank(spec).accept(samples)
