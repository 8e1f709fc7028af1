from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.stream.fakes import noise, silence
from voiceid.errors import ConfigError
from voiceid.stream.vad import VadConfig, VoiceGate

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


def test_bad_config() -> None:
    with pytest.raises(ConfigError):
        VadConfig(mode=4)
    with pytest.raises(ConfigError):
        VadConfig(window_ms=25)
    with pytest.raises(ConfigError):
        VoiceGate(sample_rate=22050)
