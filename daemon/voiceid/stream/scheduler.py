"""Per-stream window maker: samples in, one hop marker every ``hop_s`` of audio out.

Hops are fixed in sample time: hop ``k`` (1, 2, ...) ends at sample ``k * hop_samples``
of the stream, whatever the chunking of the input. At each hop boundary the scheduler
emits exactly one of

* :class:`WindowRequest` - the newest audio holds at least ``min_voiced_s`` of voice:
  the features of the window, ready for the embedding model;
* :class:`SilentHop` - too little voice (so a decider can time a speaker out);
* nothing - enough voice but less than ``min_window_s`` of audio since the stream
  started or since the last pause.

Windows never span a pause: a run of at least ``pause_s`` without voice (turn-taking)
starts a new segment, and the window covers only the audio after it. Window lengths come
in a few fixed buckets (``min_window_s``, + ``hop_s``, ..., ``window_s``: 1.0, 1.5 and
2.0 s by default) so batch shapes repeat; the window is the longest bucket that fits.

Each new sample goes through the front-end once (incremental features); a window is
never recomputed, only sliced from the frame ring and normalised per window
(``FrontEnd.normalize_window``, e.g. CMN). Samples wait in a pending buffer until
``slice_s`` of audio or the hop end, then go through the voice gate and the front-end in
one call each: the flags and frames are the same as sample by sample (both are
chunking-independent), but per-call overhead - most of a stream's CPU time when fed in
20 ms chunks - is paid once per slice. The default (one call per hop) costs least CPU
(1.7 ms per stream-second on one core against 3.4 ms per 20 ms chunk); shorter slices
spread the work of streams whose hops end at the same instant (all started together),
whose features would otherwise all be computed in that instant, delaying every decision
of it (docs/performance.md §3).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from voiceid.errors import ConfigError, ProtocolError
from voiceid.frontend.base import FrontEnd, FrontEndSpec
from voiceid.stream.ring import FrameRing, SampleRing
from voiceid.stream.vad import FRAME_S, VadConfig, VoiceGate

Clock = Callable[[], float]
#: Float samples beyond this are refused (full scale is 1; 60 dB of headroom for sloppy
#: gain staging, far below where the front-end's power sums overflow float32, ~1e17).
MAX_SAMPLE_ABS = 1000.0


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """When windows are cut. Times in seconds, rates in Hz."""

    sample_rate: int = 16000  # Hz; must equal the front-end's
    hop_s: float = 0.5  # audio between two hops (one decision per hop)
    window_s: float = 2.0  # audio per window sent to the model
    min_voiced_s: float = 1.0  # voice needed inside the window for a request
    min_hop_voiced_s: float = 0.0  # voice needed inside the newest hop (0: no such rule)
    min_window_s: float = 1.0  # shortest window (stream start, after a pause)
    pause_s: float = 0.5  # no voice this long ends a segment: windows never span it
    slice_s: float = 0.5  # audio per front-end/VAD call (≥ hop_s: one call per hop end)
    vad: VadConfig = field(default_factory=VadConfig)

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ConfigError(f"sample_rate must be > 0, got {self.sample_rate}")
        if self.hop_samples < 1 or self.window_samples < 1:
            raise ConfigError(
                f"hop_s and window_s must be > 0, got {self.hop_s} and {self.window_s}"
            )
        if not 0.0 <= self.min_voiced_s <= self.window_s:
            raise ConfigError(
                f"min_voiced_s must be in [0, window_s={self.window_s}], got {self.min_voiced_s}"
            )
        if not 0.0 <= self.min_hop_voiced_s <= self.hop_s:
            raise ConfigError(
                f"min_hop_voiced_s must be in [0, hop_s={self.hop_s}], got {self.min_hop_voiced_s}"
            )
        if not 0.0 < self.min_window_s <= self.window_s:
            raise ConfigError(
                f"min_window_s must be in (0, window_s={self.window_s}], got {self.min_window_s}"
            )
        if self.pause_s <= 0:
            raise ConfigError(f"pause_s must be > 0, got {self.pause_s}")
        if round(self.slice_s * self.sample_rate) < 1:
            raise ConfigError(f"slice_s must be > 0, got {self.slice_s}")
        if self.vad.history_s < self.window_s:
            raise ConfigError(
                f"vad.history_s ({self.vad.history_s}) must be ≥ window_s ({self.window_s})"
            )

    @property
    def hop_samples(self) -> int:
        """Samples per hop."""
        return round(self.hop_s * self.sample_rate)

    @property
    def window_samples(self) -> int:
        """Samples per window (passed to ``normalize_window``)."""
        return round(self.window_s * self.sample_rate)

    def window_frames(self, frame_shift: int) -> int:
        """Frame capacity kept per stream: ``window_s`` of frames at this ``frame_shift``."""
        return max(1, round(self.window_s * self.sample_rate / frame_shift))

    @property
    def bucket_samples(self) -> tuple[int, ...]:
        """Window lengths in samples, shortest first: min_window_s + k * hop_s, and window_s."""
        out = {self.window_samples}
        length = round(self.min_window_s * self.sample_rate)
        while length < self.window_samples:
            out.add(length)
            length += self.hop_samples
        return tuple(sorted(out))

    def bucket_frames(self, spec: FrontEndSpec) -> tuple[int, ...]:
        """Frames (T) of each window bucket: the shapes the model will see."""
        return tuple(frames_in(n, spec) for n in self.bucket_samples)


def frames_in(samples: int, spec: FrontEndSpec) -> int:
    """Whole frames inside ``samples`` of audio (Kaldi counting: 198 for 2 s at 16 kHz).

    Every front-end has these frames complete when the hop ends (a centred front-end
    has one more), so a window of a given length always has the same T.
    """
    return max(1, 1 + (samples - spec.frame_length) // spec.frame_shift)


@dataclass(frozen=True, slots=True, eq=False)
class WindowRequest:
    """One window to embed. ``feats`` is read-only float32 [T, F], already normalised."""

    stream: str
    seq: int  # hop number, 1-based: the hop ends at seq * hop_samples
    end_sample: int  # absolute sample index just past the window (= hop end)
    stream_time_s: float  # end_sample / sample_rate
    feats: NDArray[np.float32]  # [T, F]
    fed_at: float  # clock() when the hop's last sample was fed
    voiced_s: float  # seconds of voice inside the window


@dataclass(frozen=True, slots=True)
class SilentHop:
    """A hop whose window held too little voice: no request, no identity."""

    stream: str
    seq: int
    end_sample: int
    stream_time_s: float
    fed_at: float
    voiced_s: float


Hop = WindowRequest | SilentHop


class HopScheduler:
    """Cuts one stream into hops and windows; holds only bounded rings."""

    def __init__(
        self,
        stream: str,
        frontend: FrontEnd,
        config: SchedulerConfig | None = None,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.stream = stream
        self.frontend = frontend
        self.config = cfg = config or SchedulerConfig()
        spec = frontend.spec
        if spec.sample_rate != cfg.sample_rate:
            raise ConfigError(
                f"front-end runs at {spec.sample_rate} Hz, scheduler at {cfg.sample_rate} Hz",
                hint="set scheduler sample_rate to the front-end's",
            )
        self._clock = clock
        self.window_frames = cfg.window_frames(spec.frame_shift)
        self._vad_frames = round(cfg.window_s / FRAME_S)  # 10 ms flags per window
        self._hop_vad_frames = round(cfg.hop_s / FRAME_S)
        self._pause_frames = max(1, round(cfg.pause_s / FRAME_S))
        self._buckets = cfg.bucket_samples
        self._samples = SampleRing(cfg.window_samples)
        self._frames = FrameRing(self.window_frames, spec.num_bins)
        self.gate = VoiceGate(cfg.vad, cfg.sample_rate)
        self._hop_samples = cfg.hop_samples
        self._slice_samples = round(cfg.slice_s * cfg.sample_rate)
        # samples not yet processed (< one slice), written in place: one copy per sample
        self._pending = np.empty(min(self._slice_samples, self._hop_samples), np.float32)
        self._pending_size = 0
        self._fed = 0  # samples fed so far (absolute), pending ones included

    @property
    def samples_in(self) -> int:
        """Samples fed so far (absolute)."""
        return self._fed

    @property
    def stream_time_s(self) -> float:
        """Seconds of audio fed so far."""
        return self._fed / self.config.sample_rate

    def feed(self, samples: ArrayLike) -> list[Hop]:
        """Consume new samples (float32 in [-1, 1)); return the hops they complete, in order."""
        now = self._clock()
        x = _checked(samples)
        hop = self._hop_samples
        out: list[Hop] = []
        i = 0
        while i < x.size:
            # samples to the next hop boundary or the end of the slice, whichever is first
            take = min(hop - self._fed % hop, self._slice_samples - self._pending_size)
            piece = x[i : i + take]
            self._pending[self._pending_size : self._pending_size + piece.size] = piece
            self._pending_size += piece.size
            self._fed += piece.size
            i += piece.size
            at_hop = self._fed % hop == 0
            if at_hop or self._pending_size == self._slice_samples:
                self._push()
            if at_hop:
                marker = self._hop(now)
                if marker is not None:
                    out.append(marker)
        return out

    def _push(self) -> None:
        """The pending samples (one slice) through the gate and the front-end, one call each."""
        # (a view of the reused buffer: the gate, the front-end and the ring copy what they keep)
        block = self._pending[: self._pending_size]
        self._pending_size = 0
        self.gate.accept(block)
        self._frames.extend(self.frontend.accept(block))
        self._samples.extend(block)

    def _hop(self, now: float) -> Hop | None:
        cfg = self.config
        end = self._samples.total
        seq = end // cfg.hop_samples
        t = end / cfg.sample_rate
        self.gate.flush()  # the flags must reach the hop end (webrtcvad sub-windows lag)
        # the look-back (window_s) for the voice rules; a pause that ended inside it may
        # have begun up to pause_s before it
        flags = self.gate.flags(self._vad_frames + self._pause_frames)
        look = flags[-self._vad_frames :]
        voiced = float(np.count_nonzero(look)) * FRAME_S
        hop_voiced = float(np.count_nonzero(look[-self._hop_vad_frames :])) * FRAME_S
        eps = 1e-9
        if voiced + eps < cfg.min_voiced_s or hop_voiced + eps < cfg.min_hop_voiced_s:
            return SilentHop(self.stream, seq, end, t, now, voiced)
        length = self._window_length(flags)
        if length == 0:
            return None  # too little audio since the stream start or the last pause
        n_frames = frames_in(length, self.frontend.spec)
        if self._frames.size < n_frames:
            return None
        frames = self._frames.last(n_frames)
        feats = self.frontend.normalize_window(frames, self._samples.last(length))
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if feats.shape != frames.shape:
            raise ConfigError(
                f"normalize_window changed the window shape {frames.shape} → {feats.shape}"
            )
        feats.flags.writeable = False
        return WindowRequest(self.stream, seq, end, t, feats, now, voiced)

    def _window_length(self, flags: NDArray[np.bool_]) -> int:
        """Samples of the window to cut now: the longest bucket after the last pause (0: none)."""
        available = self._samples.size  # bounded by window_s (the ring's capacity)
        p = self._pause_frames
        if flags.size >= p:
            silent = np.convolve(~flags, np.ones(p, dtype=np.int32), mode="valid") == p
            runs = np.flatnonzero(silent)
            if runs.size:
                unflagged = self._samples.total - self.gate.frames_out * self.gate.frame
                after_pause = (flags.size - (runs[-1] + p)) * self.gate.frame + unflagged
                available = min(available, after_pause)
        fitting = [b for b in self._buckets if b <= available]
        return fitting[-1] if fitting else 0


def _checked(samples: ArrayLike) -> NDArray[np.float32]:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ProtocolError(
            f"audio must be a 1-D array of samples, got shape {x.shape}",
            hint="send mono audio",
        )
    peak = float(np.abs(x).max(initial=0.0))  # NaN or inf: not ≤ MAX (one pass, not two)
    if not peak <= MAX_SAMPLE_ABS:
        if not np.isfinite(x).all():
            raise ProtocolError("audio contains NaN or infinite samples", hint="send PCM audio")
        # squares overflow float32 in the front-end: NaN features
        raise ProtocolError(
            f"audio samples must be in [-1, 1], got a peak of {peak:.3g}",
            hint="scale integer PCM by 1/32768",
        )
    return x
