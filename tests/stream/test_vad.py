from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.stream.fakes import FakeFrontEnd, at_level, noise, silence, vowel
from voiceid.errors import ConfigError
from voiceid.stream.scheduler import HopScheduler, SchedulerConfig, SilentHop, WindowRequest
from voiceid.stream.vad import VadConfig, VoiceGate, level_dbfs

CONFIGS = [VadConfig(kind="webrtc", mode=m) for m in range(4)] + [
    VadConfig(kind="energy"),
    VadConfig(kind="webrtc", window_ms=10),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.kind}-{c.mode}-{c.window_ms}")
@pytest.mark.parametrize("kind", ["zeros", "noise-60", "noise-55"])
def test_silence_and_low_noise_are_never_voice(config: VadConfig, kind: str) -> None:
    x = {"zeros": silence(5.0), "noise-60": noise(5.0, -60), "noise-55": noise(5.0, -55, 3)}[kind]
    gate = VoiceGate(config)
    flags = gate.accept(x)
    assert flags.size >= 498 and not flags.any()  # 30 ms windows: 498 flags in 5 s
    assert gate.voiced_s(400) == 0.0


def test_energy_mode_threshold() -> None:
    gate = VoiceGate(VadConfig(kind="energy", energy_dbfs=-40.0))
    assert gate.accept(noise(1.0, -20)).all()
    assert not gate.accept(noise(1.0, -45)).any()
    assert gate.voiced_s(200) == pytest.approx(1.0)  # the loud second, then the quiet one
    assert gate.voiced_s(100) == 0.0


def test_flags_arrive_per_completed_frame_in_subwindow_groups() -> None:
    gate = VoiceGate(VadConfig(window_ms=30))
    assert gate.accept(np.zeros(479, dtype=np.float32)).size == 0  # < one 30 ms window
    assert gate.accept(np.zeros(1, dtype=np.float32)).size == 3
    assert gate.frames_out == 3


@pytest.mark.parametrize(
    "config", [VadConfig(), VadConfig(kind="energy")], ids=["webrtc", "energy"]
)
def test_flush_decides_the_whole_pending_frames(config: VadConfig) -> None:
    gate = VoiceGate(config)
    x = vowel(1.0, -25)
    flags = gate.accept(x[:800])  # webrtc: one 30 ms window (3 flags), 320 samples pending
    assert flags.size == (3 if config.kind == "webrtc" else 5)
    tail = gate.flush()  # webrtc: the 320 pending samples as one 20 ms window
    assert tail.size == (2 if config.kind == "webrtc" else 0) and tail.all()
    assert gate.frames_out == 5 and gate.flush().size == 0
    gate.accept(x[800:1000])  # 200 samples: one 10 ms frame and 40 samples
    assert gate.flush().size == (1 if config.kind == "webrtc" else 0)
    assert gate.frames_out == 6  # the 40 samples wait for more
    assert gate.accept(x[1000:1440]).size == 3  # 40 + 440 samples: one 30 ms window


@pytest.fixture(scope="module")
def speech(speakers: dict[str, list[Path]]) -> np.ndarray:
    x, rate = sf.read(next(iter(speakers.values()))[0], dtype="float32")
    assert rate == 16000
    return np.asarray(x, dtype=np.float32)


def test_real_speech_is_voiced(speech: np.ndarray) -> None:
    gate = VoiceGate()
    flags = gate.accept(speech)
    assert flags.size == speech.size // 480 * 3
    assert 0.5 < flags.mean() < 1.0  # mostly speech, with pauses
    padded = np.concatenate([silence(2.0), speech[:32000], silence(2.0)])
    flags = VoiceGate().accept(padded)
    assert not flags[:200].any() and not flags[-190:].any()
    assert flags[200:400].mean() > 0.5


def test_flags_do_not_depend_on_chunking(speech: np.ndarray) -> None:
    whole = VoiceGate().accept(speech[:48000])
    gate = VoiceGate()
    parts = [gate.accept(speech[i : i + 333]) for i in range(0, 48000, 333)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


@pytest.mark.parametrize("chunk", [160, 333, 8000])
def test_adaptive_floor_flags_do_not_depend_on_chunking(speech: np.ndarray, chunk: int) -> None:
    # quiet speech over low noise: the floor sits near −65 dBFS, where the quiet parts
    # of the speech are; each sub-window's floor comes only from the audio up to it
    x = at_level(speech, -35, -75)
    whole = VoiceGate().accept(x)
    gate = VoiceGate()
    parts = [gate.accept(x[i : i + chunk]) for i in range(0, x.size, chunk)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


# -- the adaptive floor ------------------------------------------------------------------


def test_the_floor_follows_the_noise_level() -> None:
    assert VoiceGate().floor_dbfs == -50.0  # nothing heard yet: the ceiling
    for dbfs in (-70.0, -60.0):
        x = noise(3.6, dbfs)  # 360 frames, 120 webrtc windows: all inside history_s
        gate = VoiceGate()
        gate.accept(x)
        noise_level = np.percentile(level_dbfs(x.reshape(-1, 160)), 5)
        assert gate.floor_dbfs == pytest.approx(noise_level + 10.0, abs=1e-9)
        assert dbfs + 9.0 < gate.floor_dbfs < dbfs + 10.0  # 5th percentile: a bit below
    for x in (noise(2.0, -75), silence(2.0)):  # clamped at min_floor_dbfs
        gate = VoiceGate()
        gate.accept(x)
        assert gate.floor_dbfs == -65.0
    gate = VoiceGate(VadConfig(min_floor_dbfs=-80.0))
    gate.accept(noise(2.0, -75))
    assert gate.floor_dbfs == pytest.approx(-65.8, abs=0.2)
    gate = VoiceGate()  # clamped at floor_dbfs
    gate.accept(noise(4.0, -40))
    assert gate.floor_dbfs == -50.0
    gate.accept(noise(4.0, -70))  # history_s later only the new level counts
    assert gate.floor_dbfs == pytest.approx(-60.8, abs=0.2)
    gate.reset()
    assert gate.floor_dbfs == -50.0


@pytest.mark.parametrize(
    "config",
    [VadConfig(mode=m) for m in range(4)] + [VadConfig(kind="energy", energy_dbfs=-100.0)],
    ids=["webrtc-0", "webrtc-1", "webrtc-2", "webrtc-3", "energy-100"],
)
def test_digital_silence_is_never_voice(config: VadConfig) -> None:
    # between loud vowels, and after seconds of it (the floor then at its lowest, −65)
    x = np.concatenate([vowel(1.02, -25), silence(3.0), vowel(0.99, -25, seed=1), silence(1.02)])
    gate = VoiceGate(config)
    flags = np.concatenate([gate.accept(x[i : i + 8000]) for i in range(0, x.size, 8000)])
    assert flags.size == x.size // 160 == 603  # vowel, zeros, vowel, zeros: 102, 300, 99, 102
    assert flags[:102].all() and flags[402:501].all()
    assert not flags[102:402].any() and not flags[501:].any()
    assert gate.floor_dbfs == -65.0


@pytest.fixture(scope="module")
def quiet_talk(speakers: dict[str, list[Path]]) -> tuple[np.ndarray, np.ndarray]:
    """One utterance (≈ 3.5 s of silence, then talk) as recorded (−26 dBFS RMS), and at
    −35 dBFS RMS; both over −75 dBFS white noise."""
    x, rate = sf.read(speakers["2033"][0], dtype="float32")
    assert rate == 16000 and x.size == 145200
    native = 10 * np.log10(np.mean(np.square(x, dtype=np.float64)))
    return at_level(x, native, -75), at_level(x, -35, -75)


def hop_pattern(x: np.ndarray, vad: VadConfig) -> list[object]:
    hops = HopScheduler("s", FakeFrontEnd(), SchedulerConfig(vad=vad)).feed(x)
    out: list[object] = ["."] * (x.size // 8000)
    for h in hops:
        out[h.seq - 1] = h.feats.shape[0] if isinstance(h, WindowRequest) else "-"
    return out


def test_quiet_speech_on_a_quiet_channel_is_voiced_enough(
    quiet_talk: tuple[np.ndarray, np.ndarray],
) -> None:
    loud, quiet = quiet_talk
    talk = ["-"] * 7 + [98, 148] + [198] * 9  # windows from the talk's first second on
    assert hop_pattern(loud, VadConfig()) == talk
    # at −35 dBFS the adaptive floor (−65 dBFS here) keeps the quiet sounds: same windows
    assert hop_pattern(quiet, VadConfig()) == talk
    gate = VoiceGate()
    flags = gate.accept(quiet)
    assert gate.floor_dbfs == -65.0
    # a floor fixed at −50 dBFS loses them: a second later, and a false pause at ≈ 6.5 s
    fixed = VadConfig(min_floor_dbfs=-50.0)
    assert hop_pattern(quiet, fixed) == ["-"] * 8 + [148] + [198] * 4 + [".", ".", 98, 148, 198]
    assert flags.mean() > VoiceGate(fixed).accept(quiet).mean() + 0.05


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("dbfs", [-60.0, -40.0])
def test_steady_white_noise_alone_is_not_voice(mode: int, dbfs: float) -> None:
    x = noise(5.0, dbfs, seed=3)
    flags = VoiceGate(VadConfig(mode=mode)).accept(x)
    # −60 dBFS: under the floor (−50.8 dBFS). −40 dBFS: over the floor (capped at −50),
    # and webrtcvad says "not speech", except in its own first 120 ms (it starts with
    # no noise model): a blip, far from the 1 s of voice a window needs
    assert not flags[12:].any()
    assert flags.sum() <= (12 if dbfs == -40.0 else 0)
    hops = HopScheduler("s", FakeFrontEnd(), SchedulerConfig(vad=VadConfig(mode=mode))).feed(x)
    assert len(hops) == 10 and all(isinstance(h, SilentHop) for h in hops)


def test_loud_white_noise_is_speech_to_webrtcvad() -> None:
    # A known limit, asserted as it is: the floor is capped at floor_dbfs (−50), so loud
    # steady noise reaches webrtcvad, which calls white noise speech from about −28 dBFS
    # (mode 2; −30 dBFS in modes 0 and 1). Such noise alone makes windows.
    x = noise(5.0, -20, seed=3)
    assert VoiceGate().accept(x).all()
    hops = HopScheduler("s", FakeFrontEnd(), SchedulerConfig()).feed(x)
    assert sum(isinstance(h, WindowRequest) for h in hops) == 9


def test_bad_config() -> None:
    with pytest.raises(ConfigError):
        VadConfig(mode=4)
    with pytest.raises(ConfigError):
        VadConfig(window_ms=25)
    with pytest.raises(ConfigError):
        VoiceGate(sample_rate=22050)
