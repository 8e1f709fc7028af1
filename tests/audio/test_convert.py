"""PcmDecoder: byte-stream splitting, validation, NaN/Inf, clipping, downmix, resampling."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voiceid.audio.convert import PcmDecoder
from voiceid.errors import ProtocolError

RATES = [8000, 16000, 22050, 44100, 48000]
SETTINGS = settings(max_examples=60, deadline=None)


def _decode_all(dec: PcmDecoder, data: bytes, cuts: list[int]) -> np.ndarray:
    """Feed ``data`` split at ``cuts`` (sorted offsets), then flush."""
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    parts = [dec.decode(data[a:b]) for a, b in itertools.pairwise(bounds)]
    parts.append(dec.flush())
    for p in parts:
        assert p.dtype == np.float32 and p.ndim == 1
    return np.concatenate(parts)


def _sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


# -- property tests ---------------------------------------------------------------------------


@SETTINGS
@given(
    data=st.binary(min_size=0, max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
    rate=st.sampled_from(RATES),
    channels=st.integers(min_value=1, max_value=8),
)
def test_any_split_same_samples_s16(data: bytes, cuts: list[int], rate: int, channels: int) -> None:
    whole = _decode_all(PcmDecoder(rate, "pcm_s16le", channels), data, [])
    split = _decode_all(PcmDecoder(rate, "pcm_s16le", channels), data, cuts)
    np.testing.assert_array_equal(split, whole)


@SETTINGS
@given(
    values=st.lists(
        st.floats(min_value=-4.0, max_value=4.0, allow_nan=False, width=32), max_size=800
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=3200), max_size=12),
    rate=st.sampled_from(RATES),
    channels=st.integers(min_value=1, max_value=4),
)
def test_any_split_same_samples_f32(
    values: list[float], cuts: list[int], rate: int, channels: int
) -> None:
    data = np.asarray(values, dtype="<f4").tobytes()
    whole = _decode_all(PcmDecoder(rate, "f32le", channels), data, [])
    split = _decode_all(PcmDecoder(rate, "f32le", channels), data, cuts)
    np.testing.assert_array_equal(split, whole)
    if rate == 16000:  # identity path: clipped mean of channels, exactly
        n = len(values) // channels * channels
        expected = np.clip(np.asarray(values[:n], np.float32), -1, 1).reshape(-1, channels)
        np.testing.assert_array_equal(whole, expected.mean(axis=1, dtype=np.float32))


@SETTINGS
@given(
    pieces=st.lists(st.binary(max_size=700), max_size=8),
    encoding=st.sampled_from(["pcm_s16le", "f32le"]),
    rate=st.sampled_from(RATES),
    channels=st.integers(min_value=1, max_value=8),
)
def test_random_bytes_only_protocol_error(
    pieces: list[bytes], encoding: str, rate: int, channels: int
) -> None:
    dec = PcmDecoder(rate, encoding, channels)  # type: ignore[arg-type]
    stream = b""
    for piece in pieces:
        try:
            out = dec.decode(piece)
        except ProtocolError as err:
            assert encoding == "f32le"
            # the offset named in the message points at a non-finite float of the stream
            offset = int(err.message.rsplit(" ", 1)[1])
            value = np.frombuffer((stream + piece)[offset : offset + 4], "<f4")[0]
            assert not math.isfinite(float(value))
            return
        stream += piece
        assert out.dtype == np.float32
        assert np.isfinite(out).all()
    tail = dec.flush()
    assert np.isfinite(tail).all()


# -- examples ------------------------------------------------------------------------------


def test_48k_stereo_s16_to_16k_mono_length() -> None:
    seconds = 2.0
    left = _sine(440.0, 48000, seconds, 0.5)
    right = _sine(440.0, 48000, seconds, 0.25)
    pcm = np.round(np.stack([left, right], axis=1) * 32767).astype("<i2").tobytes()
    dec = PcmDecoder(48000, "pcm_s16le", 2)
    chunk = 48000 * 2 * 2 // 50  # 20 ms
    parts = [dec.decode(pcm[i : i + chunk]) for i in range(0, len(pcm), chunk)]
    live = sum(len(p) for p in parts)
    expected = round(len(left) / 3)  # 32000
    delay = 16000 * 0.02  # soxr HQ holds back ~12 ms at 16 kHz (193 samples measured)
    assert expected - delay <= live <= expected
    tail = dec.flush()
    assert live + len(tail) == expected
    out = np.concatenate([*parts, tail])
    assert np.abs(out[1000:-1000]).max() == pytest.approx(0.375, abs=0.01)  # mean of L, R


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 96000])
def test_1khz_sine_keeps_frequency(rate: int) -> None:
    x = _sine(1000.0, rate, 1.0)
    dec = PcmDecoder(rate, "f32le", 1)
    y = np.concatenate([dec.decode(x.astype("<f4").tobytes()), dec.flush()])
    assert abs(len(y) - 16000) <= 1
    assert _peak_hz(y, 16000) == pytest.approx(1000.0, abs=1.0)
    # steady-state amplitude preserved
    assert np.abs(y[2000:-2000]).max() == pytest.approx(0.5, abs=0.01)


def test_identity_s16_scaling_and_downmix() -> None:
    frames = np.array([[32767, -32768], [0, 16384], [-16384, -16384]], dtype="<i2")
    dec = PcmDecoder(16000, "pcm_s16le", 2)
    out = dec.decode(frames.tobytes())
    expected = (frames.astype(np.float32) / 32768).mean(axis=1)
    np.testing.assert_array_equal(out, expected)
    assert dec.flush().shape == (0,)


def test_partial_frames_are_kept() -> None:
    dec = PcmDecoder(16000, "pcm_s16le", 2)
    data = np.arange(12, dtype="<i2").tobytes()  # 6 stereo frames of 4 bytes
    assert dec.decode(data[:3]).shape == (0,)
    assert dec.pending_bytes == 3
    out = dec.decode(data[3:10])
    assert out.shape == (2,) and dec.pending_bytes == 2
    out2 = dec.decode(data[10:])
    assert out2.shape == (4,) and dec.pending_bytes == 0
    assert dec.bytes_in == len(data)


def test_f32_clipped() -> None:
    dec = PcmDecoder(16000, "f32le", 1)
    out = dec.decode(np.array([2.0, -3.0, 0.25, 1e30], dtype="<f4").tobytes())
    np.testing.assert_array_equal(out, np.array([1.0, -1.0, 0.25, 1.0], dtype=np.float32))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_rejected_with_offset(bad: float) -> None:
    dec = PcmDecoder(16000, "f32le", 2)
    good = np.zeros(6, dtype="<f4").tobytes()  # 24 bytes
    dec.decode(good[:10])  # leaves 2 bytes pending
    data = good[10:] + np.array([0.0, bad], dtype="<f4").tobytes()
    with pytest.raises(ProtocolError, match=r"NaN/Inf in f32le audio at byte offset 28"):
        dec.decode(data)
    # the bad piece was not consumed; the decoder still works
    assert dec.decode(good[10:]).shape == (2,)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((7999, "pcm_s16le", 1), "sample rate"),
        ((192001, "pcm_s16le", 1), "sample rate"),
        ((16000.0, "pcm_s16le", 1), "sample rate"),
        ((16000, "pcm_s24le", 1), "encoding"),
        ((16000, "pcm_s16le", 0), "channel"),
        ((16000, "pcm_s16le", 9), "channel"),
    ],
)
def test_validation(args: tuple[object, object, object], words: str) -> None:
    with pytest.raises(ProtocolError, match=words) as info:
        PcmDecoder(*args)  # type: ignore[arg-type]
    assert info.value.hint and info.value.exit_code == 7


def test_out_rate_validated() -> None:
    with pytest.raises(ProtocolError, match="output rate"):
        PcmDecoder(16000, "pcm_s16le", 1, out_rate=4000)
    assert PcmDecoder(8000, "pcm_s16le", 1, out_rate=8000).decode(b"\x00\x40").tolist() == [0.5]


def test_non_bytes_rejected() -> None:
    with pytest.raises(ProtocolError, match="bytes"):
        PcmDecoder(16000, "pcm_s16le", 1).decode("abc")  # type: ignore[arg-type]


def test_flush_resets_for_a_new_stream() -> None:
    pcm = (_sine(300.0, 48000, 0.5) * 32767).astype("<i2").tobytes()
    dec = PcmDecoder(48000, "pcm_s16le", 1)
    first = np.concatenate([dec.decode(pcm + b"\x01"), dec.flush()])
    assert dec.pending_bytes == 0 and dec.bytes_in == 0
    second = np.concatenate([dec.decode(pcm), dec.flush()])
    np.testing.assert_array_equal(first, second)
