"""Reading audio files: any format libsndfile reads, any rate and channel count, to mono
float32 at the model's rate.

Resampling uses soxr (quality "HQ"); channels are averaged. Every failure is an
:class:`~voiceid.errors.AudioError` with a one-line message and a hint.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from voiceid.errors import AudioError
from voiceid.frontend.base import Float32Array

#: What libsndfile ≥ 1.1 reads (the common ones; ``soundfile.available_formats()`` has all).
SUPPORTED_FORMATS = "WAV, FLAC, OGG (Vorbis, Opus), MP3, AIFF, CAF, W64/RF64, AU"
#: Longest file decoded (seconds): bounds memory whatever the file or its header claims.
MAX_DURATION_S = 3600.0
_BLOCK_FRAMES = 1 << 18


def _formats_hint() -> str:
    return (
        f"supported formats: {SUPPORTED_FORMATS} (libsndfile {sf.__libsndfile_version__}); "
        "convert others first, e.g. ffmpeg -i in.m4a -ar 16000 -ac 1 out.wav"
    )


def duration_s(samples: Float32Array | int, rate: int) -> float:
    """Duration in seconds of ``samples`` (an array or a sample count) at ``rate`` Hz."""
    n = samples if isinstance(samples, int) else int(np.shape(samples)[0])
    return n / float(rate)


def load_audio(
    path: str | Path,
    sample_rate: int = 16000,
    *,
    start: float | None = None,
    end: float | None = None,
) -> Float32Array:
    """Mono float32 samples of ``path`` at ``sample_rate``, optionally only [start, end) s.

    Channels are averaged; the rate is converted with soxr "HQ". ``start``/``end`` are
    seconds from the beginning of the file (either may be omitted).
    """
    if sample_rate <= 0:
        raise AudioError(
            f"invalid sample rate {sample_rate}", hint="use a positive rate such as 16000"
        )
    p = Path(path)
    if not p.exists():
        raise AudioError(f"audio file not found: {p}", hint="check the path and spelling")
    if p.is_dir():
        raise AudioError(
            f"{p} is a directory, not an audio file", hint="pass one file, e.g. speech.wav"
        )
    try:
        size = p.stat().st_size
    except OSError as err:
        raise AudioError(f"cannot access audio file {p}: {err.strerror}") from err
    if size == 0:
        raise AudioError(f"audio file is empty (0 bytes): {p}", hint="record or copy it again")

    try:
        with sf.SoundFile(str(p)) as f:
            rate_in = int(f.samplerate)
            total = int(f.frames)
            first, last = _frame_range(p, total, rate_in, start, end)
            f.seek(first)
            data = _read_frames(f, last - first, max_frames=int(MAX_DURATION_S * rate_in))
    except PermissionError as err:
        raise AudioError(
            f"no permission to read audio file {p}", hint="check the file's permissions"
        ) from err
    except sf.LibsndfileError as err:
        raise AudioError(
            f"cannot read audio file {p}: {err.error_string.rstrip('.')}", hint=_formats_hint()
        ) from err
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise AudioError(f"cannot read audio file {p}: {err}", hint=_formats_hint()) from err

    if data.shape[0] == 0:
        if start is None and end is None:
            raise AudioError(
                f"audio file has no samples: {p}", hint="the file holds a header but no audio"
            )
        raise AudioError(f"no samples between {start} s and {end} s in {p}")

    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if rate_in != sample_rate:
        mono = np.asarray(soxr.resample(mono, rate_in, sample_rate, quality="HQ"), np.float32)
    return mono


def _read_frames(f: sf.SoundFile, frames: int, *, max_frames: int) -> Float32Array:
    """Up to ``frames`` frames [n, channels], read in blocks until the end of the data.

    Never allocates for the frame count the header claims: a damaged or crafted header
    (an MP3 Xing frame count, say) can claim 10^12 frames for a 3 kB file.
    """
    blocks: list[Float32Array] = []
    left, total = frames, 0
    while left > 0:
        block = f.read(min(left, _BLOCK_FRAMES), dtype="float32", always_2d=True)
        if block.shape[0] == 0:
            break
        blocks.append(block)
        left -= block.shape[0]
        total += block.shape[0]
        if total > max_frames:
            raise AudioError(
                f"{f.name}: longer than {MAX_DURATION_S / 60:g} minutes",
                hint="cut it into shorter recordings",
            )
    if not blocks:
        return np.zeros((0, f.channels), dtype=np.float32)
    return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]


def _frame_range(
    p: Path, total: int, rate: int, start: float | None, end: float | None
) -> tuple[int, int]:
    """Validate start/end seconds against the file; return [first, last) frame indices."""
    duration = total / rate
    for name, value in (("start", start), ("end", end)):
        if value is not None and not math.isfinite(value):
            raise AudioError(f"{name}={value} is not a number of seconds")
    if start is not None and start < 0:
        raise AudioError(f"start={start} s is negative", hint="use 0 or more seconds")
    if start is not None and start >= duration:
        raise AudioError(
            f"start={start} s is past the end of {p.name} ({duration:.3f} s long)",
            hint=f"use a start below {duration:.3f}",
        )
    if end is not None and end <= (start or 0.0):
        raise AudioError(
            f"end={end} s must be after start={start or 0.0} s", hint="use start < end"
        )
    if end is not None and end > duration + 0.5 / rate:
        raise AudioError(
            f"end={end} s is past the end of {p.name} ({duration:.3f} s long)",
            hint=f"use an end of at most {duration:.3f} or leave it out",
        )
    first = 0 if start is None else min(total, round(start * rate))
    last = total if end is None else min(total, round(end * rate))
    return first, max(first, last)


def write_wav(path: str | Path, samples: Float32Array, sample_rate: int = 16000) -> Path:
    """Write float samples in [-1, 1] ([n] or [n, channels]) as 16-bit PCM WAV; clips."""
    p = Path(path)
    x = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 32767.0 / 32768.0)
    pcm = np.round(x * 32768.0).astype(np.int16)
    sf.write(str(p), pcm, sample_rate, format="WAV", subtype="PCM_16")
    return p
