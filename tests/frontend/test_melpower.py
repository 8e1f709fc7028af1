"""Resemblyzer's front-end in numpy: preprocessing, mel power frames, streaming."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from voiceid.errors import AudioError
from voiceid.frontend.ge2e_preprocess import (
    normalize_volume,
    preprocess_utterance,
    trim_long_silences,
)
from voiceid.frontend.melpower import (
    MEL_POWER_40_SPEC,
    MelPower40,
    mel_filterbank,
    mel_power_spectrogram,
)


@pytest.fixture(scope="module")
def reference(shared_dir: Path) -> dict[str, Any]:
    path = shared_dir / "reference-ge2e.json"
    if not path.is_file():
        pytest.skip(f"Resemblyzer reference outputs not found at {path}")
    files: dict[str, Any] = json.loads(path.read_text())["files"]
    return files


@pytest.fixture(scope="module")
def speech(speakers: dict[str, list[Path]]) -> np.ndarray:
    """One real utterance, preprocessed like Resemblyzer does."""
    first = next(iter(speakers.values()))[0]
    wav, sr = sf.read(first, dtype="float32")
    assert sr == 16000
    return preprocess_utterance(wav)


def _stream(fe: MelPower40, samples: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, pos = [], 0
    for n in sizes:
        out.append(fe.accept(samples[pos : pos + n]))
        pos += n
    out.append(fe.accept(samples[pos:]))
    out.append(fe.flush())
    return np.concatenate(out)


def test_spec() -> None:
    fe = MelPower40()
    assert fe.spec == MEL_POWER_40_SPEC
    assert (fe.spec.kind, fe.spec.num_bins, fe.spec.cmn, fe.spec.target_dbfs) == (
        "mel_power",
        40,
        False,
        -30.0,
    )


@pytest.mark.parametrize("n", [0, 1, 159, 160, 199, 200, 201, 399, 400, 401, 1234, 16000])
def test_frame_count(n: int) -> None:
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 0.1).astype(np.float32)
    fe = MelPower40()
    frames = np.concatenate((fe.accept(x), fe.flush()))
    expected = 1 + n // 160 if n else 0
    assert frames.shape == (expected, 40)
    assert fe.frames_out == expected
    assert frames.dtype == np.float32


def test_chunked_20ms_equals_one_call(speech: np.ndarray) -> None:
    whole = mel_power_spectrogram(speech)
    fe = MelPower40()
    chunked = _stream(fe, speech, [320] * (len(speech) // 320))
    assert chunked.shape == whole.shape == (1 + len(speech) // 160, 40)
    np.testing.assert_array_equal(chunked, whole)


def test_random_chunks_equal_one_call(speech: np.ndarray) -> None:
    whole = mel_power_spectrogram(speech)
    rng = np.random.default_rng(0)
    fe = MelPower40()
    for _ in range(3):
        sizes = rng.integers(0, 1500, size=len(speech) // 700).tolist()
        fe.reset()
        assert fe.frames_out == 0
        np.testing.assert_array_equal(_stream(fe, speech, sizes), whole)


def test_frames_come_as_soon_as_complete() -> None:
    fe = MelPower40()
    x = np.full(200, 0.1, dtype=np.float32)
    assert fe.accept(x[:199]).shape == (0, 40)
    assert fe.accept(x[199:]).shape == (1, 40)  # 200 left zeros + 200 samples = 400
    assert fe.accept(np.zeros(159, np.float32)).shape == (0, 40)
    assert fe.accept(np.zeros(1, np.float32)).shape == (1, 40)
    assert fe.frames_out == 2
    assert fe.flush().shape == (1 + 360 // 160 - 2, 40)


def test_accept_after_flush_needs_reset() -> None:
    fe = MelPower40()
    fe.accept(np.zeros(800, np.float32))
    fe.flush()
    with pytest.raises(AudioError, match="reset"):
        fe.accept(np.zeros(10, np.float32))
    fe.reset()
    assert fe.accept(np.zeros(400, np.float32)).shape == (2, 40)


def test_matches_resemblyzer_reference(reference: dict[str, Any], shared_dir: Path) -> None:
    for rel, ref in reference.items():
        path = shared_dir / rel
        if not path.is_file():
            pytest.skip(f"reference audio {path} missing")
        wav, sr = sf.read(path, dtype="float32")
        assert sr == 16000
        pre = preprocess_utterance(wav)
        assert len(pre) == ref["preprocessed_samples"], rel
        mel = mel_power_spectrogram(pre)
        assert mel.shape == (ref["mel_frames"], 40), rel
        got = mel[0, :8].astype(np.float64)
        want = np.array(ref["mel_first_frame_first8"])
        # The reference values are rounded to 6 decimals: allow half a unit in that place
        # (5e-7) for tiny values, 1e-4 relative otherwise.
        tol = np.maximum(1e-4 * np.abs(want), 5.0e-7 + 1e-9)
        assert np.all(np.abs(got - want) <= tol), (rel, got, want)


def test_trim_keeps_whole_windows_and_shortens_silence(speech: np.ndarray) -> None:
    silence = np.zeros(16000, dtype=np.float32)  # 1 s, longer than 6 windows
    padded = np.concatenate((silence, speech, silence))
    trimmed = trim_long_silences(padded)
    assert len(trimmed) % 480 == 0
    assert len(trimmed) < len(padded) - 16000
    assert len(trim_long_silences(np.zeros(479, np.float32))) == 0


def test_normalize_volume_increase_only() -> None:
    rng = np.random.default_rng(1)
    quiet = (rng.standard_normal(16000) * 0.001).astype(np.float32)
    loud = quiet * 100
    target_rms = 10 ** (-30 / 20)
    out = normalize_volume(quiet)
    assert out.dtype == np.float32
    rms = float(np.sqrt(np.mean((out.astype(np.float64) * 32767) ** 2)) / 32767)
    assert rms == pytest.approx(target_rms, rel=1e-4)
    np.testing.assert_array_equal(normalize_volume(loud), loud)  # -10 dBFS stays
    np.testing.assert_array_equal(normalize_volume(np.zeros(100, np.float32)), 0)


def test_normalize_window_is_gain_squared(speech: np.ndarray) -> None:
    fe = MelPower40()
    window = speech[:32000] * np.float32(0.05)  # quieter than -30 dBFS
    frames = mel_power_spectrogram(window)
    normed = fe.normalize_window(frames, window)
    louder = normalize_volume(window)
    expected = mel_power_spectrogram(louder)
    np.testing.assert_allclose(normed, expected, rtol=2e-4, atol=1e-9)
    assert normed is not frames
    # already loud: unchanged (increase only)
    loud = mel_power_spectrogram(speech[:32000] * np.float32(4.0))
    np.testing.assert_array_equal(fe.normalize_window(loud, speech[:32000] * np.float32(4.0)), loud)


def test_slaney_filterbank() -> None:
    fb = mel_filterbank(16000, 400, 40)
    assert fb.shape == (40, 201)
    assert fb.dtype == np.float32
    assert np.all(fb >= 0)
    assert np.all(fb.max(axis=1) > 0)
    # Centres: 42 mel points evenly spaced on the slaney scale from 0 Hz to 8 kHz; filter i
    # peaks at centre i+1, i.e. at the FFT bin nearest to it (on one side or the other).
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27
    min_log_mel = min_log_hz / f_sp
    max_mel = min_log_mel + np.log(8000 / min_log_hz) / logstep
    mels = np.linspace(0, max_mel, 42)
    hz = np.where(
        mels < min_log_mel, mels * f_sp, min_log_hz * np.exp(logstep * (mels - min_log_mel))
    )
    bin_hz = 40.0
    for i in range(40):
        peak = int(np.argmax(fb[i]))
        centre_bin = hz[i + 1] / bin_hz
        assert abs(peak - centre_bin) <= 1.0, (i, peak, centre_bin)
        # slaney norm: area of the triangle in Hz is 1 → peak height 2 / (right − left)
        tri_peak = 2.0 / (hz[i + 2] - hz[i])
        assert fb[i, peak] <= tri_peak * (1 + 1e-6)
    # strictly increasing centres
    assert np.all(np.diff(np.argmax(fb, axis=1)) >= 0)
