"""Where GE2E partial utterances fall: Resemblyzer's ``compute_partial_slices``.

Units: ``n_samples`` counts samples at 16 kHz; a *frame* is one mel frame, ``frame_shift``
(160) samples apart; slices are ``(start, stop)`` half-open frame index ranges into the mel
spectrogram of the (end-padded) utterance. Multiply by ``frame_shift`` for sample ranges.

Resemblyzer (``VoiceEncoder.embed_utterance``, rate 1.3 partials per second, min coverage
0.75): partials of 160 frames (1.6 s) every ``round(16000 / 1.3 / 160) = 77`` frames,
covering ``ceil((n_samples + 1) / 160)`` frames; the last one is dropped when less than
``min_coverage`` of its samples are real audio (but one partial always remains). Before
computing the mel spectrogram, Resemblyzer zero-pads the waveform to the end of the last
partial (:func:`padded_length`) when that is longer, so every slice lies inside the
spectrogram.
"""

from __future__ import annotations

from collections.abc import Sequence

SEGMENT_FRAMES = 160  # frames per partial (1.6 s)
STEP_FRAMES = 77  # frames between partial starts (rate 1.3/s)
FRAME_SHIFT = 160  # samples per frame step (10 ms at 16 kHz)
MIN_COVERAGE = 0.75  # keep the last partial when ≥ this fraction of it is audio


def step_frames_for_rate(
    rate: float, sample_rate: int = 16000, frame_shift: int = FRAME_SHIFT
) -> int:
    """Frames between partial starts for ``rate`` partials per second (Resemblyzer: 1.3 → 77)."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    # Python's round() is round-half-even like the np.round Resemblyzer uses.
    return round((sample_rate / rate) / frame_shift)


def segment_slices(
    n_samples: int,
    segment_frames: int = SEGMENT_FRAMES,
    step_frames: int = STEP_FRAMES,
    frame_shift: int = FRAME_SHIFT,
    min_coverage: float = MIN_COVERAGE,
) -> list[tuple[int, int]]:
    """Frame ranges ``(start, stop)`` of the partials of an utterance of ``n_samples`` samples.

    Identical to Resemblyzer's ``compute_partial_slices(n_samples, rate=1.3,
    min_coverage=0.75)`` mel slices for the defaults. Always at least one range; ranges
    may extend past the audio (see :func:`padded_length`).
    """
    if n_samples < 0:
        raise ValueError(f"n_samples must be ≥ 0, got {n_samples}")
    if not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    if not 0 < step_frames <= segment_frames:
        raise ValueError(
            f"step_frames must be in (0, segment_frames={segment_frames}], got {step_frames}"
        )
    if frame_shift <= 0:
        raise ValueError(f"frame_shift must be > 0, got {frame_shift}")
    n_frames = -(-(n_samples + 1) // frame_shift)  # ceil((n_samples + 1) / frame_shift)
    steps = max(1, n_frames - segment_frames + step_frames + 1)
    slices = [(i, i + segment_frames) for i in range(0, steps, step_frames)]
    last_start = slices[-1][0] * frame_shift
    coverage = (n_samples - last_start) / (segment_frames * frame_shift)
    if coverage < min_coverage and len(slices) > 1:
        slices.pop()
    return slices


def padded_length(slices: Sequence[tuple[int, int]], frame_shift: int = FRAME_SHIFT) -> int:
    """Samples spanned by ``slices`` (frame ranges): the end of the last one × ``frame_shift``.

    Resemblyzer zero-pads the waveform to ``max(n_samples, padded_length(slices))`` before
    its mel spectrogram (``center=True``), which then has ``1 + padded // frame_shift``
    frames and so covers every slice of :func:`segment_slices`. (When the last partial was
    dropped for low coverage this can be less than ``n_samples``: no padding then.)
    """
    if not slices:
        raise ValueError("no slices")
    return max(stop for _, stop in slices) * frame_shift
