"""KaldiFbank: streaming equals one call, frame count, two independent references (float64
numpy Kaldi, kaldi-native-fbank C++), CMN, bounded memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voiceid.frontend.base import FrontEnd, FrontEndSpec
from voiceid.frontend.fbank import WESPEAKER_SPEC, KaldiFbank, fbank

FLOAT_EPS = float(np.finfo(np.float32).eps)


# -- independent reference: Kaldi's fbank algorithm in plain numpy ------------------------


def _mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def kaldi_mel_banks(
    num_bins: int = 80, n_fft: int = 512, rate: float = 16000.0, low: float = 20.0
) -> np.ndarray:
    """Kaldi MelBanks: triangles in the mel domain over the first n_fft/2 FFT bins."""
    high = rate / 2
    num_fft_bins = n_fft // 2
    fft_bin_width = rate / n_fft
    mel_low, mel_high = _mel(low), _mel(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    mels = _mel(fft_bin_width * np.arange(num_fft_bins))
    banks = np.zeros((num_bins, num_fft_bins + 1))  # last column: Nyquist bin, weight 0
    for b in range(num_bins):
        left, center, right = (mel_low + (b + k) * delta for k in range(3))
        up = (mels - left) / (center - left)
        down = (right - mels) / (right - center)
        w = np.where(mels <= center, up, down)
        inside = (mels > left) & (mels < right)
        banks[b, :num_fft_bins] = np.where(inside, w, 0.0)
    return banks


def numpy_kaldi_fbank(samples: np.ndarray) -> np.ndarray:
    """Kaldi fbank as WeSpeaker configures it, computed in float64."""
    x = samples.astype(np.float64) * 32768.0
    n_len, shift, n_fft = 400, 160, 512
    n_frames = 1 + (len(x) - n_len) // shift
    idx = np.arange(n_len)[None, :] + shift * np.arange(n_frames)[:, None]
    frames = x[idx]
    frames = frames - frames.mean(axis=1, keepdims=True)  # remove DC per frame
    pre = frames.copy()  # pre-emphasis; Kaldi's rule: x[0] -= 0.97 * x[0]
    pre[:, 1:] -= 0.97 * frames[:, :-1]
    pre[:, 0] -= 0.97 * frames[:, 0]
    window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n_len) / (n_len - 1))  # hamming
    spec = np.fft.rfft(pre * window, n=n_fft)
    power = spec.real**2 + spec.imag**2
    energies = power @ kaldi_mel_banks().T
    out: np.ndarray = np.log(np.maximum(energies, FLOAT_EPS))
    return out


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech(speakers: dict[str, list[Path]]) -> np.ndarray:
    """About 10 s of real speech (two utterances of two speakers)."""
    ids = sorted(speakers)
    parts = [sf.read(speakers[s][0], dtype="float32")[0] for s in ids[:2]]
    return np.concatenate(parts)[: 16000 * 10].astype(np.float32)


# -- tests -----------------------------------------------------------------------------------


def test_is_a_frontend() -> None:
    fe: FrontEnd = KaldiFbank()
    assert fe.spec == WESPEAKER_SPEC
    assert fe.spec.kind == "kaldi_fbank"


@pytest.mark.parametrize("n", [0, 1, 399, 400, 401, 559, 560, 16000, 16321])
def test_frame_count_formula(n: int) -> None:
    x = np.random.default_rng(n).uniform(-0.5, 0.5, n).astype(np.float32)
    expected = 1 + (n - 400) // 160 if n >= 400 else 0
    out = fbank(x)
    assert out.shape == (expected, 80)
    assert out.dtype == np.float32


def test_20ms_chunks_equal_one_call(speech: np.ndarray) -> None:
    whole = fbank(speech)
    fe = KaldiFbank()
    parts = [fe.accept(speech[i : i + 320]) for i in range(0, len(speech), 320)]
    assert all(p.dtype == np.float32 and p.shape[1] == 80 for p in parts)
    streamed = np.concatenate(parts)
    assert fe.frames_out == len(streamed) == len(whole)
    np.testing.assert_array_equal(streamed, whole)
    assert fe.flush().shape == (0, 80)
    assert fe.frames_out == len(whole)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_chunks_equal_one_call(speech: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = speech[: 16000 * 3]
    whole = fbank(x)
    fe = KaldiFbank()
    parts, i = [], 0
    while i < len(x):
        n = int(rng.choice([0, 1, 7, 159, 160, 161, 399, 400, 1000, 4321]))
        parts.append(fe.accept(x[i : i + n]))
        i += n
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_matches_numpy_kaldi_reference(speakers: dict[str, list[Path]]) -> None:
    """One utterance of each speaker against the float64 numpy reference.

    Ours works in float32 (as Kaldi and kaldi-native-fbank do): a bin whose energy is ~70
    dB or more below the frame's loudest bin carries float32 rounding noise of the FFT
    (kaldi-native-fbank is off there by as much, up to ~3e-3 in 18 of 6.1 M values over
    all 100 files). So: ≤ 1e-3 wherever the bin is within 70 dB (16 nats) of the frame's
    loudest one (> 99.8 % of the values), ≤ 5e-3 everywhere.
    """
    worst_near, worst_all, n_values = 0.0, 0.0, 0
    for paths in speakers.values():
        x = sf.read(paths[0], dtype="float32")[0]
        ours = fbank(x).astype(np.float64)
        ref = numpy_kaldi_fbank(x)
        assert ours.shape == ref.shape == (1 + (len(x) - 400) // 160, 80)
        diff = np.abs(ours - ref)
        near = ref > ref.max(axis=1, keepdims=True) - 16.0
        worst_near = max(worst_near, float(diff[near].max()))
        worst_all = max(worst_all, float(diff.max()))
        n_values += diff.size
    assert n_values > 500_000
    assert worst_near <= 1e-3, f"max abs diff {worst_near:.3g} (bins within 70 dB)"
    assert worst_all <= 5e-3, f"max abs diff {worst_all:.3g}"


def test_matches_numpy_kaldi_reference_fixture(speech: np.ndarray) -> None:
    diff = float(np.abs(fbank(speech).astype(np.float64) - numpy_kaldi_fbank(speech)).max())
    assert diff <= 1e-3, f"max abs diff {diff:.3g}"


def test_reference_log_floor_on_silence() -> None:
    ours = fbank(np.zeros(800, dtype=np.float32))
    ref = numpy_kaldi_fbank(np.zeros(800, dtype=np.float32))
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(ours, np.log(FLOAT_EPS), atol=1e-5)


def test_reset_starts_over(speech: np.ndarray) -> None:
    fe = KaldiFbank()
    first = fe.accept(speech[:8000])
    fe.accept(speech[8000:8100])
    fe.reset()
    assert fe.frames_out == 0
    np.testing.assert_array_equal(fe.accept(speech[:8000]), first)


def test_cmn_mean_zero(speech: np.ndarray) -> None:
    fe = KaldiFbank()
    frames = fe.accept(speech[: 16000 * 2])
    before = frames.copy()
    norm = fe.normalize_window(frames, speech[: 16000 * 2])
    assert norm is not frames and norm.dtype == np.float32
    np.testing.assert_array_equal(frames, before)  # input untouched
    assert np.abs(norm.mean(axis=0)).max() < 1e-4
    np.testing.assert_allclose(norm, frames - frames.mean(axis=0), atol=1e-4)


def test_no_cmn_when_spec_says_so(speech: np.ndarray) -> None:
    spec = FrontEndSpec(kind="kaldi_fbank", cmn=False)
    fe = KaldiFbank(spec)
    frames = fe.accept(speech[:16000])
    norm = fe.normalize_window(frames, speech[:16000])
    assert norm is not frames
    np.testing.assert_array_equal(norm, frames)


def test_rejects_other_kind() -> None:
    with pytest.raises(ValueError, match="kaldi_fbank"):
        KaldiFbank(FrontEndSpec(kind="mel_power", num_bins=40))


def test_matches_kaldi_native_fbank(speakers: dict[str, list[Path]]) -> None:
    """A second, independent implementation: kaldi-native-fbank's C++ ``OnlineFbank``
    (what sherpa-onnx uses) with the same options, on one utterance of each speaker."""
    knf = pytest.importorskip("kaldi_native_fbank", reason="dev extra kaldi-native-fbank")
    opts = knf.FbankOptions()
    fo = opts.frame_opts
    fo.dither = 0.0
    fo.window_type = "hamming"
    fo.snip_edges = True
    fo.preemph_coeff = 0.97
    fo.remove_dc_offset = True
    opts.mel_opts.num_bins = 80
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    opts.use_energy = False
    opts.use_power = True
    opts.use_log_fbank = True
    worst = 0.0
    for paths in speakers.values():
        x = sf.read(paths[0], dtype="float32")[0]
        online = knf.OnlineFbank(opts)
        online.accept_waveform(16000.0, (x * 32768.0).tolist())
        ref = np.stack([online.get_frame(i) for i in range(online.num_frames_ready)])
        ours = fbank(x)
        assert ours.shape == ref.shape
        near = ref > ref.max(axis=1, keepdims=True) - 16.0
        worst = max(worst, float(np.abs(ours - ref)[near].max()))
    assert worst <= 1e-3, f"max abs diff {worst:.3g} (bins within 70 dB)"


def test_memory_stays_bounded_over_10_minutes() -> None:
    """10 minutes in 1 s chunks: every frame comes out, < one frame of samples stays."""
    rng = np.random.default_rng(0)
    second = rng.uniform(-0.3, 0.3, 16000).astype(np.float32)
    fe = KaldiFbank()
    total = 0
    for _ in range(600):
        total += len(fe.accept(second))
        assert fe.buffered_samples < 400
    assert total == fe.frames_out == 1 + (600 * 16000 - 400) // 160


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_rss_flat_over_10_minutes() -> None:
    """Kept frames would cost ~19 MB per 10 minutes (~130 MB/h, measured); popped: flat."""
    second = np.random.default_rng(1).uniform(-0.3, 0.3, 16000).astype(np.float32)
    fe = KaldiFbank()
    for _ in range(60):
        fe.accept(second)
    before = _rss_mb()
    for _ in range(600):
        fe.accept(second)
    assert _rss_mb() - before < 8.0
