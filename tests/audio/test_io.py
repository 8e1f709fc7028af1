"""load_audio: formats, resampling, downmix, start/end, and the errors users will meet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voiceid.audio.io import duration_s, load_audio, write_wav
from voiceid.errors import AudioError, VoiceidError


def _sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


def _can_write(fmt: str, subtype: str) -> bool:
    return fmt in sf.available_formats() and subtype in sf.available_subtypes(fmt)


@pytest.fixture(scope="module")
def flac(speakers: dict[str, list[Path]]) -> Path:
    return next(iter(speakers.values()))[0]


def test_flac_from_shared_audio(flac: Path) -> None:
    ref, rate = sf.read(flac, dtype="float32")
    assert rate == 16000
    x = load_audio(flac)
    assert x.dtype == np.float32 and x.ndim == 1
    np.testing.assert_array_equal(x, ref)  # 16 kHz mono: untouched
    assert duration_s(x, 16000) == pytest.approx(len(ref) / 16000)
    assert load_audio(str(flac)).shape == x.shape  # str path works too


def test_flac_start_end(flac: Path) -> None:
    full = load_audio(flac)
    part = load_audio(flac, start=0.5, end=1.25)
    np.testing.assert_array_equal(part, full[8000:20000])
    np.testing.assert_array_equal(load_audio(flac, start=1.0), full[16000:])
    np.testing.assert_array_equal(load_audio(flac, end=0.1), full[:1600])


def test_wav_44k1_stereo_resampled_to_mono(tmp_path: Path) -> None:
    rate, secs = 44100, 1.5
    left = _sine(440.0, rate, secs)
    right = _sine(440.0, rate, secs) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")
    x = load_audio(path)
    assert x.ndim == 1 and x.dtype == np.float32
    assert abs(len(x) - round(len(left) * 16000 / rate)) <= 1
    assert _peak_hz(x, 16000) == pytest.approx(440.0, abs=1.0)
    # mono = mean of the channels: amplitude (0.5 + 0.25) / 2
    mid = x[2000:-2000]
    assert np.abs(mid).max() == pytest.approx(0.375, abs=0.01)
    # other target rates
    assert abs(len(load_audio(path, 8000)) - round(len(left) * 8000 / rate)) <= 1


def test_write_wav_roundtrip(tmp_path: Path) -> None:
    x = _sine(1000.0, 16000, 0.5, amp=0.9)
    x[:10] = 2.0  # clipped
    path = write_wav(tmp_path / "a.wav", x)
    assert sf.info(path).subtype == "PCM_16"
    y = load_audio(path)
    np.testing.assert_allclose(y[10:], x[10:], atol=1 / 32768 + 1e-7)
    assert y[:10].max() == pytest.approx(32767 / 32768)


@pytest.mark.parametrize(
    ("fmt", "subtype", "suffix", "rate"),
    [
        ("OGG", "VORBIS", ".ogg", 22050),
        ("OGG", "OPUS", ".opus", 48000),
        ("MP3", "MPEG_LAYER_III", ".mp3", 44100),
    ],
)
def test_lossy_formats(tmp_path: Path, fmt: str, subtype: str, suffix: str, rate: int) -> None:
    if not _can_write(fmt, subtype):
        pytest.skip(
            f"libsndfile {sf.__libsndfile_version__} here cannot write {fmt}/{subtype} "
            "(needs libsndfile ≥ 1.1 built with it)"
        )
    path = tmp_path / f"tone{suffix}"
    sf.write(path, _sine(1000.0, rate, 1.0), rate, format=fmt, subtype=subtype)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    # lossy codecs add/trim a little at the edges; length within 50 ms
    assert abs(len(x) - 16000) <= 800
    assert _peak_hz(x, 16000) == pytest.approx(1000.0, abs=2.0)


# -- errors -------------------------------------------------------------------------------


def _err(path: Path, **kw: float) -> AudioError:
    with pytest.raises(AudioError) as info:
        load_audio(path, **kw)  # type: ignore[arg-type]
    err = info.value
    assert isinstance(err, VoiceidError) and err.exit_code == 3
    assert "\n" not in str(err)
    return err


def test_missing_file(tmp_path: Path) -> None:
    err = _err(tmp_path / "nope.wav")
    assert "not found" in err.message and "nope.wav" in err.message
    assert err.hint


def test_directory(tmp_path: Path) -> None:
    err = _err(tmp_path)
    assert "directory" in err.message


def test_garbage_bytes(tmp_path: Path) -> None:
    path = tmp_path / "garbage.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    err = _err(path)
    assert "cannot read" in err.message and "garbage.wav" in err.message
    assert err.hint is not None and "FLAC" in err.hint and "MP3" in err.hint


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.flac"
    path.touch()
    err = _err(path)
    assert "empty" in err.message


def test_header_without_samples(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    err = _err(path)
    assert "no samples" in err.message


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"start": -1.0}, "negative"),
        ({"start": 5.0}, "past the end"),
        ({"end": 5.0}, "past the end"),
        ({"start": 0.5, "end": 0.5}, "after start"),
        ({"start": 0.6, "end": 0.2}, "after start"),
        ({"end": float("nan")}, "not a number"),
    ],
)
def test_start_end_out_of_range(tmp_path: Path, kw: dict[str, float], words: str) -> None:
    path = write_wav(tmp_path / "one.wav", _sine(300.0, 16000, 1.0))
    err = _err(path, **kw)
    assert words in err.message


def test_end_at_exact_duration_is_fine(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "one.wav", _sine(300.0, 16000, 1.0))
    assert len(load_audio(path, start=0.25, end=1.0)) == 12000
