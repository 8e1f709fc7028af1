from __future__ import annotations

import numpy as np
import pytest

from tests.stream.fakes import FakeClock, FakeFrontEnd, noise, silence
from voiceid.errors import ConfigError, ProtocolError
from voiceid.frontend.base import FrontEndSpec
from voiceid.stream.scheduler import (
    HopScheduler,
    SchedulerConfig,
    SilentHop,
    WindowRequest,
)
from voiceid.stream.vad import VadConfig

ENERGY = SchedulerConfig(vad=VadConfig(kind="energy"))


def feed_chunks(sched: HopScheduler, x: np.ndarray, chunk: int) -> list[object]:
    out: list[object] = []
    for i in range(0, x.size, chunk):
        out += sched.feed(x[i : i + chunk])
    return out


def test_one_request_per_hop_once_the_window_is_full() -> None:
    fe = FakeFrontEnd()
    sched = HopScheduler("s", fe, ENERGY)
    hops = feed_chunks(sched, noise(6.0, -20), 320)
    # Hop 1 (0.5 s) holds < min_voiced_s: silent. Hops 2-4: enough voice but the window
    # is not full (frames after N samples: 1 + (N - 400) // 160 → 200 first at 2.5 s).
    assert [type(h) for h in hops] == [SilentHop] + [WindowRequest] * 8
    reqs = [h for h in hops if isinstance(h, WindowRequest)]
    assert [r.seq for r in reqs] == list(range(5, 13))
    assert [r.end_sample for r in reqs] == [8000 * k for k in range(5, 13)]
    assert [r.stream_time_s for r in reqs] == [0.5 * k for k in range(5, 13)]
    assert {r.feats.shape for r in reqs} == {(200, 4)}
    assert all(r.feats.dtype == np.float32 and not r.feats.flags.writeable for r in reqs)
    assert all(r.voiced_s == pytest.approx(2.0) for r in reqs)
    assert sched.window_frames == 200


def test_front_end_sees_each_sample_once() -> None:
    fe = FakeFrontEnd()
    sched = HopScheduler("s", fe, ENERGY)
    x = noise(7.3, -20)
    hops = feed_chunks(sched, x, 777)
    assert fe.samples_seen == x.size == sched.samples_in
    reqs = [h for h in hops if isinstance(h, WindowRequest)]
    assert fe.normalized == len(reqs) > 0  # one normalisation per request, no recompute


@pytest.mark.parametrize("chunk", [320, 3, 16000, 12345])
def test_requests_do_not_depend_on_chunk_size(chunk: int) -> None:
    x = np.concatenate([noise(3.0, -20), silence(1.3), noise(2.2, -25, seed=2)])
    ref = feed_chunks(HopScheduler("s", FakeFrontEnd(), ENERGY), x, x.size)
    got = feed_chunks(HopScheduler("s", FakeFrontEnd(), ENERGY), x, chunk)
    assert len(got) == len(ref) > 0
    for a, b in zip(ref, got, strict=True):
        assert type(a) is type(b)
        assert (a.seq, a.end_sample, a.voiced_s) == (b.seq, b.end_sample, b.voiced_s)  # type: ignore[attr-defined]
        if isinstance(a, WindowRequest) and isinstance(b, WindowRequest):
            np.testing.assert_array_equal(a.feats, b.feats)


@pytest.mark.parametrize("vad", [VadConfig(), VadConfig(kind="energy"), VadConfig(mode=0)])
@pytest.mark.parametrize("kind", ["zeros", "noise-60"])
def test_silence_makes_only_silent_hops(vad: VadConfig, kind: str) -> None:
    x = silence(6.0) if kind == "zeros" else noise(6.0, -60)
    sched = HopScheduler("s", FakeFrontEnd(), SchedulerConfig(vad=vad))
    hops = feed_chunks(sched, x, 320)
    assert len(hops) == 12
    assert all(isinstance(h, SilentHop) and h.voiced_s == 0.0 for h in hops)


def test_too_little_voice_in_the_window_is_a_silent_hop() -> None:
    # 0.8 s of voice then silence: never 1 s voiced inside a 2 s window.
    x = np.concatenate([noise(0.8, -20), silence(4.0)])
    hops = feed_chunks(HopScheduler("s", FakeFrontEnd(), ENERGY), x, 320)
    assert all(isinstance(h, SilentHop) for h in hops)
    # 1.5 s of voice then silence: requests while ≥ 1 s of voice is in the window.
    x = np.concatenate([silence(1.0), noise(1.5, -20), silence(3.0)])
    hops = feed_chunks(HopScheduler("s", FakeFrontEnd(), ENERGY), x, 320)
    kinds = ["R" if isinstance(h, WindowRequest) else "-" for h in hops]
    assert "".join(kinds) == "---RRR----"  # hop 4 (2.0 s): voiced, window not yet full


def test_min_hop_voiced_makes_the_end_of_speech_silent_sooner() -> None:
    x = np.concatenate([noise(3.0, -20), silence(2.0)])
    cfg = SchedulerConfig(min_hop_voiced_s=0.1, vad=VadConfig(kind="energy"))
    hops = feed_chunks(HopScheduler("s", FakeFrontEnd(), cfg), x, 320)
    kinds = ["R" if isinstance(h, WindowRequest) else "-" for h in hops]
    assert "".join(kinds) == "-RR----"  # hop 1: 0.5 s of voice; 5, 6 voiced; 7.. silence


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
    fe = FakeFrontEnd()
    fe.spec = FrontEndSpec(kind="kaldi_fbank", sample_rate=8000, num_bins=4)
    with pytest.raises(ConfigError):
        HopScheduler("s", fe)


def test_kaldi_fbank_windows() -> None:
    fbank = pytest.importorskip(
        "voiceid.frontend.fbank", reason="voiceid.frontend.fbank (KaldiFbank) not written yet"
    )
    x = np.concatenate([noise(3.0, -20), silence(0.5), noise(1.5, -25, seed=4)])
    ref = feed_chunks(HopScheduler("s", fbank.KaldiFbank(), ENERGY), x, x.size)
    got = feed_chunks(HopScheduler("s", fbank.KaldiFbank(), ENERGY), x, 320)
    reqs = [h for h in got if isinstance(h, WindowRequest)]
    assert len(got) == len(ref) and reqs
    for a, b in zip(ref, got, strict=True):
        assert type(a) is type(b)
        if not (isinstance(a, WindowRequest) and isinstance(b, WindowRequest)):
            continue
        assert a.feats.shape == (200, 80)
        np.testing.assert_allclose(a.feats, b.feats, atol=1e-5)
        assert np.abs(b.feats.mean(axis=0)).max() < 1e-3  # CMN applied per window
