from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.stream.fakes import FakeClock, FakeFrontEnd, at_level, noise, silence, vowel
from voiceid.errors import ConfigError, ProtocolError
from voiceid.frontend.base import FrontEnd, FrontEndSpec
from voiceid.frontend.fbank import WESPEAKER_SPEC, KaldiFbank
from voiceid.frontend.melpower import MEL_POWER_40_SPEC, MelPower40
from voiceid.stream.scheduler import (
    Hop,
    HopScheduler,
    SchedulerConfig,
    SilentHop,
    WindowRequest,
    frames_in,
)
from voiceid.stream.vad import VadConfig

ENERGY = SchedulerConfig(vad=VadConfig(kind="energy"))
HOP = 8000  # samples per hop (0.5 s)


def feed_chunks(sched: HopScheduler, x: np.ndarray, chunk: int) -> list[Hop]:
    out: list[Hop] = []
    for i in range(0, x.size, chunk):
        out += sched.feed(x[i : i + chunk])
    return out


def pattern(hops: Sequence[Hop], n_hops: int) -> list[object]:
    """Per hop 1..n: ``"-"`` silent hop, ``"."`` no marker, else the request's T."""
    out: list[object] = ["."] * n_hops
    for h in hops:
        out[h.seq - 1] = h.feats.shape[0] if isinstance(h, WindowRequest) else "-"
    return out


def alone(frontend: FrontEnd, x: np.ndarray) -> np.ndarray:
    """Normalised features of ``x`` through a fresh front-end, as one window."""
    return frontend.normalize_window(frontend.accept(x), x)


# -- buckets -------------------------------------------------------------------------


def test_window_buckets_and_their_frame_counts() -> None:
    cfg = SchedulerConfig()
    assert cfg.bucket_samples == (16000, 24000, 32000)  # 1.0, 1.5, 2.0 s
    # Kaldi counting, 1 + (samples − 400) // 160, for every front-end
    assert cfg.bucket_frames(WESPEAKER_SPEC) == (98, 148, 198)
    assert cfg.bucket_frames(MEL_POWER_40_SPEC) == (98, 148, 198)
    assert [frames_in(n, WESPEAKER_SPEC) for n in (399, 400, 559, 560)] == [1, 1, 1, 2]
    assert SchedulerConfig(min_window_s=2.0).bucket_samples == (32000,)
    # window_s is a bucket even off the hop grid
    odd = SchedulerConfig(window_s=3.0, min_window_s=1.2, vad=VadConfig(history_s=4.0))
    assert odd.bucket_samples == (19200, 27200, 35200, 43200, 48000)


def test_windows_grow_through_the_buckets_from_the_stream_start() -> None:
    fe = FakeFrontEnd()
    sched = HopScheduler("s", fe, ENERGY)
    x = noise(6.0, -20)
    hops = feed_chunks(sched, x, 320)
    # hop 1 (0.5 s) holds < min_voiced_s; then the longest bucket since the stream start
    assert pattern(hops, 12) == ["-", 98, 148] + [198] * 9
    reqs = [h for h in hops if isinstance(h, WindowRequest)]
    assert [r.seq for r in reqs] == list(range(2, 13))
    assert [r.end_sample for r in reqs] == [HOP * k for k in range(2, 13)]
    assert [r.stream_time_s for r in reqs] == [0.5 * k for k in range(2, 13)]
    assert [r.voiced_s for r in reqs] == pytest.approx([1.0, 1.5] + [2.0] * 9)
    assert all(r.feats.dtype == np.float32 and not r.feats.flags.writeable for r in reqs)
    # each window is exactly the newest bucket of audio (Kaldi frames start at end − L)
    for r, length in zip(reqs, [16000, 24000] + [32000] * 9, strict=True):
        np.testing.assert_array_equal(
            r.feats, alone(FakeFrontEnd(), x[r.end_sample - length : r.end_sample])
        )
    assert sched.window_frames == 200  # frames kept: 2 s at 10 ms


def test_kaldi_fbank_windows_grow_98_148_198() -> None:
    x = noise(3.0, -20)
    hops = feed_chunks(HopScheduler("s", KaldiFbank(), ENERGY), x, 320)
    assert pattern(hops, 6) == ["-", 98, 148, 198, 198, 198]
    reqs = [h for h in hops if isinstance(h, WindowRequest)]
    assert {r.feats.shape[1] for r in reqs} == {80}
    for r in reqs:
        assert np.abs(r.feats.mean(axis=0)).max() < 1e-3  # CMN applied per window
        length = {98: 16000, 148: 24000, 198: 32000}[r.feats.shape[0]]
        expected = alone(KaldiFbank(), x[r.end_sample - length : r.end_sample])
        np.testing.assert_array_equal(r.feats, expected)  # Kaldi frames: their own samples


def test_mel_power_windows_have_the_same_t() -> None:
    hops = feed_chunks(HopScheduler("s", MelPower40(), ENERGY), noise(3.0, -20), 320)
    assert pattern(hops, 6) == ["-", 98, 148, 198, 198, 198]
    assert {h.feats.shape[1] for h in hops if isinstance(h, WindowRequest)} == {40}


def test_the_default_gate_opens_a_window_after_one_second_of_voice() -> None:
    # webrtcvad decides 30 ms sub-windows; a hop (0.5 s) is not a multiple of 30 ms, so the
    # gate is flushed at each hop end: 1.0 s of voice is 1.0 s of flags, not 0.99 s
    sched = HopScheduler("s", FakeFrontEnd(), SchedulerConfig())
    hops = feed_chunks(sched, vowel(3.0, -25), 320)
    assert pattern(hops, 6) == ["-", 98, 148, 198, 198, 198]
    assert [h.voiced_s for h in hops] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    assert sched.gate.frames_out == 300  # flags reach the end of the audio


# -- pauses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frontend", "edge"), [(KaldiFbank, 0), (MelPower40, 1)], ids=["kaldi", "melpower"]
)
def test_a_pause_cuts_the_window(frontend: type[KaldiFbank | MelPower40], edge: int) -> None:
    # voice 0-3.0 s, a pause of exactly pause_s (0.5 s), voice 3.5-5.0 s
    x = np.concatenate([noise(3.0, -20), silence(0.5), noise(1.5, -25, seed=4)])
    hops = feed_chunks(HopScheduler("s", frontend(), ENERGY), x, 320)
    # 3.5, 4.0: ≥ 1 s of voice in the look-back, but < 1.0 s since the pause: no marker
    assert pattern(hops, 10) == ["-", 98, 148, 198, 198, 198, ".", ".", 98, 148]
    reqs = {h.seq: h for h in hops if isinstance(h, WindowRequest)}
    start = 56000  # the end of the pause (3.5 s)
    for seq in (9, 10):  # 4.5 s and 5.0 s: the audio after the pause, nothing before it
        post = x[start : reqs[seq].end_sample]
        # a centred front-end's first frame on the segment's own edge is not in the window
        # (the window's first frame reaches 40 samples back, into the silent pause)
        expected = alone(frontend(), post)[edge : edge + reqs[seq].feats.shape[0]]
        np.testing.assert_array_equal(reqs[seq].feats, expected)


@pytest.mark.parametrize(
    ("gap_s", "expected"),
    [
        (0.49, ["-", 98, 148] + [198] * 13),  # shorter than pause_s: 2 s windows through it
        (0.5, ["-", 98, 148, 198, 198, 198, ".", ".", 98, 148] + [198] * 6),
        # voice again from 3.8 s: 1.0 s windows from 4.8, so the first is at 5.0; at 5.5 the
        # pause began before the 2 s look-back, and still the window starts after it
        (0.8, ["-", 98, 148, 198, 198, 198, ".", ".", ".", 98, 148] + [198] * 5),
    ],
)
def test_only_a_pause_of_pause_s_cuts(gap_s: float, expected: list[object]) -> None:
    x = np.concatenate([noise(3.0, -20), silence(gap_s), noise(5.0 - gap_s, -20, seed=2)])
    assert x.size == 16 * HOP
    hops = feed_chunks(HopScheduler("s", FakeFrontEnd(), ENERGY), x, 320)
    assert pattern(hops, 16) == expected


def test_pause_s_is_configurable() -> None:
    x = np.concatenate([noise(3.0, -20), silence(0.3), noise(2.2, -20, seed=2)])
    short = SchedulerConfig(pause_s=0.3, vad=VadConfig(kind="energy"))
    hops = feed_chunks(HopScheduler("s", FakeFrontEnd(), short), x, 320)
    # the pause ends at 3.3 s: a 1.0 s window first fits at 4.5, 1.5 s at 5.0, 2.0 s at 5.5
    assert pattern(hops, 11) == ["-", 98, 148, 198, 198, 198, ".", ".", 98, 148, 198]
    hops = feed_chunks(HopScheduler("s", FakeFrontEnd(), ENERGY), x, 320)
    assert pattern(hops, 11) == ["-", 98, 148] + [198] * 8  # 0.3 s < the default 0.5 s


# -- voice rules, chunking, inputs -----------------------------------------------------


def test_front_end_sees_each_sample_once() -> None:
    fe = FakeFrontEnd()
    sched = HopScheduler("s", fe, ENERGY)
    x = noise(7.3, -20)
    hops = feed_chunks(sched, x, 777)
    # once per hop, in one call: the samples of the unfinished hop (0.3 s) still wait
    hop = ENERGY.hop_samples
    assert sched.samples_in == x.size
    assert fe.samples_seen == x.size // hop * hop
    assert fe.calls == x.size // hop
    reqs = [h for h in hops if isinstance(h, WindowRequest)]
    assert fe.normalized == len(reqs) > 0  # one normalisation per request, no recompute


def _same_hops(ref: Sequence[Hop], got: Sequence[Hop]) -> None:
    assert len(got) == len(ref) > 0
    for a, b in zip(ref, got, strict=True):
        assert type(a) is type(b)
        assert (a.seq, a.end_sample, a.voiced_s) == (b.seq, b.end_sample, b.voiced_s)
        if isinstance(a, WindowRequest) and isinstance(b, WindowRequest):
            np.testing.assert_array_equal(a.feats, b.feats)


@pytest.mark.parametrize("chunk", [320, 3, 16000, 12345])
def test_requests_do_not_depend_on_chunk_size(chunk: int) -> None:
    # a pause (1.3 s) and windows of every bucket after it
    x = np.concatenate([noise(3.0, -20), silence(1.3), noise(2.2, -25, seed=2)])
    ref = feed_chunks(HopScheduler("s", FakeFrontEnd(), ENERGY), x, x.size)
    got = feed_chunks(HopScheduler("s", FakeFrontEnd(), ENERGY), x, chunk)
    # 3.5, 4.0: ≥ 1 s of voice in the look-back but none after the pause; 4.5, 5.0: < 1 s
    # in the look-back; 5.5, 6.0: 1.2 s, 1.7 s since the pause; 6.5: 2.2 s
    assert pattern(ref, 13) == ["-", 98, 148, 198, 198, 198, ".", ".", "-", "-", 98, 148, 198]
    _same_hops(ref, got)


@pytest.fixture(scope="module")
def quiet_talk(speakers: dict[str, list[Path]]) -> np.ndarray:
    """10 s of real speech with a 0.8 s pause added at 4 s, at −35 dBFS RMS over −75 dBFS
    white noise: the adaptive floor sits near −65 dBFS, where chunking used to matter."""
    x, rate = sf.read(speakers["1688"][0], dtype="float32")
    assert rate == 16000
    return at_level(
        np.concatenate([x[: 4 * 16000], silence(0.8), x[4 * 16000 : 10 * 16000]]), -35, -75
    )


@pytest.mark.parametrize("chunk", [160, 333, 480, 40000])
def test_default_gate_requests_do_not_depend_on_chunk_size(
    quiet_talk: np.ndarray, chunk: int
) -> None:
    # webrtcvad, the adaptive floor and the hop-end flush all work in sample time
    ref = feed_chunks(HopScheduler("s", FakeFrontEnd(), SchedulerConfig()), quiet_talk, 8000)
    got = feed_chunks(HopScheduler("s", FakeFrontEnd(), SchedulerConfig()), quiet_talk, chunk)
    _same_hops(ref, got)
    start = ["-", "-", 148] + [198] * 4  # talk from ≈ 0.3 s to 3.5 s
    gap = ["-"] * 4  # 4.0-5.5 s: the added pause, then quiet words: < 1 s voiced
    regrow = [98, 148, 198]  # windows grow again from the end of the added pause (4.8 s)
    rest = [".", ".", "-", 98, 148, 198, 198]  # a pause of the talker's own at ≈ 7 s
    assert pattern(ref, 21) == start + gap + regrow + rest


@pytest.mark.parametrize("vad", [VadConfig(), VadConfig(kind="energy"), VadConfig(mode=0)])
@pytest.mark.parametrize("kind", ["zeros", "noise-60"])
def test_silence_makes_only_silent_hops(vad: VadConfig, kind: str) -> None:
    x = silence(6.0) if kind == "zeros" else noise(6.0, -60)
    sched = HopScheduler("s", FakeFrontEnd(), SchedulerConfig(vad=vad))
    hops = feed_chunks(sched, x, 320)
    assert len(hops) == 12
    assert all(isinstance(h, SilentHop) and h.voiced_s == 0.0 for h in hops)


def test_too_little_voice_in_the_look_back_is_a_silent_hop() -> None:
    # 0.8 s of voice then silence: never 1 s voiced inside the 2 s look-back
    x = np.concatenate([noise(0.8, -20), silence(4.0)])
    hops = feed_chunks(HopScheduler("s", FakeFrontEnd(), ENERGY), x, 320)
    assert pattern(hops, 9) == ["-"] * 9
    # 1.5 s of voice between silences: the leading second is a pause, so the windows
    # start at the voice (1.0 s at 2.0, 1.5 s at 2.5). From 3.0 the voice is followed by
    # a pause: no marker while the look-back still holds ≥ 1 s of voice, then silent hops.
    x = np.concatenate([silence(1.0), noise(1.5, -20), silence(3.0)])
    hops = feed_chunks(HopScheduler("s", FakeFrontEnd(), ENERGY), x, 320)
    assert pattern(hops, 11) == ["-", "-", "-", 98, 148, ".", ".", "-", "-", "-", "-"]


def test_min_hop_voiced_makes_the_end_of_speech_silent_sooner() -> None:
    x = np.concatenate([noise(3.0, -20), silence(2.0)])
    hops = feed_chunks(HopScheduler("s", FakeFrontEnd(), ENERGY), x, 320)
    assert pattern(hops, 10) == ["-", 98, 148, 198, 198, 198, ".", ".", "-", "-"]
    cfg = SchedulerConfig(min_hop_voiced_s=0.1, vad=VadConfig(kind="energy"))
    hops = feed_chunks(HopScheduler("s", FakeFrontEnd(), cfg), x, 320)
    # the newest hop holds no voice from 3.5 on: silent at once
    assert pattern(hops, 10) == ["-", 98, 148, 198, 198, 198, "-", "-", "-", "-"]


def test_fed_at_is_the_clock_at_feed_time() -> None:
    clock = FakeClock(50.0)
    sched = HopScheduler("s", FakeFrontEnd(), ENERGY, clock=clock)
    x = noise(4.0, -20)
    sched.feed(x[:30000])
    clock.t = 51.0
    hops = sched.feed(x[30000:])
    assert [h.fed_at for h in hops] == [51.0] * len(hops) and hops


def test_bad_input_and_config() -> None:
    sched = HopScheduler("s", FakeFrontEnd(), ENERGY)
    with pytest.raises(ProtocolError):
        sched.feed(np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(ProtocolError):
        sched.feed(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(ConfigError):
        SchedulerConfig(min_voiced_s=3.0)
    with pytest.raises(ConfigError):
        SchedulerConfig(hop_s=0.0)
    with pytest.raises(ConfigError):
        SchedulerConfig(min_window_s=0.0)
    with pytest.raises(ConfigError):
        SchedulerConfig(min_window_s=2.5)  # > window_s
    with pytest.raises(ConfigError):
        SchedulerConfig(pause_s=0.0)
    fe = FakeFrontEnd()
    fe.spec = FrontEndSpec(kind="kaldi_fbank", sample_rate=8000, num_bins=4)
    with pytest.raises(ConfigError):
        HopScheduler("s", fe)


@pytest.mark.parametrize("slice_s", [0.02, 0.1, 0.3, 2.0])
def test_slices_change_the_calls_not_the_hops(
    speakers: dict[str, list[Path]], slice_s: float
) -> None:
    """Real speech through the webrtc gate and Kaldi fbank: any slice gives the same hops,
    bit for bit, as one call per hop; only the number of front-end calls differs."""
    paths = speakers[sorted(speakers)[0]]
    x = np.concatenate([sf.read(p, dtype="float32")[0] for p in paths[:2]])
    ref = feed_chunks(HopScheduler("s", KaldiFbank(), SchedulerConfig()), x, 320)
    cfg = SchedulerConfig(slice_s=slice_s)
    _same_hops(ref, feed_chunks(HopScheduler("s", KaldiFbank(), cfg), x, 777))
    fake = FakeFrontEnd()
    feed_chunks(HopScheduler("s", fake, SchedulerConfig(slice_s=slice_s)), x, 320)
    hops, per_hop = x.size // 8000, max(1, -(-8000 // round(slice_s * 16000)))
    assert hops * per_hop <= fake.calls < (hops + 1) * per_hop  # (+ the unfinished hop's)


def test_slice_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="slice_s"):
        SchedulerConfig(slice_s=0.0)
