"""Enrollment sessions on real speech (GE2E): every feedback code triggered by real or
synthesized audio, progress numbers, finish/cancel/re-enroll against a real SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voiceid.audio.io import load_audio
from voiceid.audio.vad import voice_flags
from voiceid.errors import ConfigError, ProfileError
from voiceid.profiles.enroll import (
    ADVICE,
    EnrollmentPolicy,
    EnrollmentSession,
    Feedback,
    assess,
)
from voiceid.profiles.model import centroid
from voiceid.profiles.store import ProfileStore

RATE = 16000
SPK_A, SPK_B = "1688", "2609"  # two speakers of librispeech-test-other


@pytest.fixture(scope="module")
def clips(speakers: dict[str, list[Path]]) -> dict[str, list[np.ndarray]]:
    """The first 4 utterances of speakers A and B, 16 kHz float32."""
    return {s: [load_audio(f, RATE) for f in speakers[s][:4]] for s in (SPK_A, SPK_B)}


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[ProfileStore]:
    with ProfileStore.open(tmp_path / "profiles.db") as s:
        yield s


def start(store: ProfileStore, embedder: Any, name: str = "alice", **kw: Any) -> EnrollmentSession:
    return EnrollmentSession.start(name, store, embedder, threshold=embedder.card.threshold, **kw)


def speech_cut(x: np.ndarray, seconds: float) -> np.ndarray:
    """``seconds`` of audio starting at the first voiced 30 ms frame."""
    first = int(np.flatnonzero(voice_flags(x))[0]) * 480
    return x[first : first + int(seconds * RATE)].copy()


# ------------------------------------------------------------------ feedback codes


def test_ok_counts_and_reports_progress(
    store: ProfileStore, ge2e_embedder: Any, clips: dict[str, list[np.ndarray]]
) -> None:
    s = start(store, ge2e_embedder)
    r = s.add_audio(clips[SPK_A][2], source="a2.flac")
    assert r.accepted and r.feedback == (Feedback.OK,)
    assert 1.0 <= r.speech_s <= len(clips[SPK_A][2]) / RATE
    assert r.level_dbfs is not None and -45 < r.level_dbfs < -10
    assert r.consistency is None  # nothing to compare the first one with
    p = r.progress
    assert (p.utterances, p.required_utterances, p.required_s) == (1, 3, 10.0)
    assert p.collected_s == pytest.approx(r.speech_s, abs=0.01)
    assert p.percent == min(int(100 * p.collected_s / 10.0), 33)
    assert not p.complete
    assert r.as_dict()["feedback"] == ["ok"]
    assert s.utterances[0].source == "a2.flac"


def test_too_short_one_second_of_speech(
    store: ProfileStore, ge2e_embedder: Any, clips: dict[str, list[np.ndarray]]
) -> None:
    s = start(store, ge2e_embedder)
    r = s.add_audio(speech_cut(clips[SPK_A][0], 1.0))
    assert not r.accepted
    assert r.feedback == (Feedback.TOO_SHORT,)
    assert 0.3 <= r.speech_s < 1.0
    assert r.progress.utterances == 0 and r.progress.collected_s == 0
    assert s.utterances == []


@pytest.mark.parametrize(
    "kind", ["silence", "noise-70dBFS", "hum-80dBFS", "hum-29dBFS", "noise-20dBFS", "brown-26dBFS"]
)
def test_no_voice(store: ProfileStore, ge2e_embedder: Any, kind: str) -> None:
    """Silence and stationary sound, quiet or loud (webrtcvad alone calls loud hum and
    hiss speech), are never counted as speech."""
    rng = np.random.default_rng(0)
    n = 3 * RATE
    t = np.arange(n) / RATE
    if kind == "silence":
        x = np.zeros(n)
    elif kind == "hum-80dBFS":  # very quiet mains hum
        x = 10 ** (-80 / 20) * np.sin(2 * np.pi * 50 * t)
    elif kind == "hum-29dBFS":  # loud 100 Hz hum
        x = 0.05 * np.sin(2 * np.pi * 100 * t)
    elif kind == "brown-26dBFS":  # low-frequency rumble
        b = np.cumsum(rng.standard_normal(n))
        b -= np.convolve(b, np.ones(200) / 200, "same")
        x = b / b.std() * 10 ** (-26 / 20)
    else:
        x = rng.standard_normal(n) * 10 ** (int(kind[5:8]) / 20)
    x = x.astype(np.float32)
    s = start(store, ge2e_embedder)
    r = s.add_audio(x)
    assert not r.accepted and r.feedback == (Feedback.NO_VOICE,), r
    assert r.progress.utterances == 0


def test_no_voice_tiny_clip(store: ProfileStore, ge2e_embedder: Any) -> None:
    s = start(store, ge2e_embedder)
    for x in (np.zeros(0, np.float32), np.zeros(100, np.float32)):
        r = s.add_audio(x)
        assert r.feedback == (Feedback.NO_VOICE,)


def test_clipping(
    store: ProfileStore, ge2e_embedder: Any, clips: dict[str, list[np.ndarray]]
) -> None:
    x = np.clip(clips[SPK_A][2] * 20.0, -1.0, 1.0).astype(np.float32)
    assert assess(x).clipped_fraction > 0.05
    s = start(store, ge2e_embedder)
    r = s.add_audio(x)
    assert not r.accepted and Feedback.CLIPPING in r.feedback
    assert Feedback.TOO_QUIET not in r.feedback
    assert s.utterances == []


def test_too_quiet(
    store: ProfileStore, ge2e_embedder: Any, clips: dict[str, list[np.ndarray]]
) -> None:
    x = (clips[SPK_A][2] * 0.003).astype(np.float32)  # about -50 dB below normal speech
    q = assess(x)
    assert q.quiet_speech and q.level_dbfs is not None and q.level_dbfs < -70
    s = start(store, ge2e_embedder)
    r = s.add_audio(x)
    assert not r.accepted and r.feedback == (Feedback.TOO_QUIET,)
    assert r.level_dbfs is not None and r.level_dbfs < -45


def test_quiet_but_usable_speech_is_accepted(
    store: ProfileStore, ge2e_embedder: Any, clips: dict[str, list[np.ndarray]]
) -> None:
    """10 dB quieter than the recording: still above the -45 dBFS bar."""
    x = (clips[SPK_A][2] * 10 ** (-10 / 20)).astype(np.float32)
    r = start(store, ge2e_embedder).add_audio(x)
    assert r.accepted, r


def test_inconsistent_speaker_after_two(
    store: ProfileStore, ge2e_embedder: Any, clips: dict[str, list[np.ndarray]]
) -> None:
    s = start(store, ge2e_embedder)
    assert s.add_audio(clips[SPK_A][0]).accepted
    second = s.add_audio(clips[SPK_A][1])
    assert second.accepted and second.consistency is not None
    assert second.consistency >= s.consistency_bar
    before = s.progress()
    r = s.add_audio(clips[SPK_B][0], source="other.flac")
    assert not r.accepted and r.feedback == (Feedback.INCONSISTENT,)
    assert r.consistency is not None and r.consistency < s.consistency_bar == 0.75
    assert r.progress == before and len(s.utterances) == 2
    assert "only the enrolling person" in ADVICE[Feedback.INCONSISTENT]
    # The bar is the model threshold unless the policy sets one.
    s2 = start(store, ge2e_embedder, "bob", policy=EnrollmentPolicy(consistency=-1.0))
    assert s2.consistency_bar == -1.0


def test_duplicate_recording(
    store: ProfileStore, ge2e_embedder: Any, clips: dict[str, list[np.ndarray]]
) -> None:
    s = start(store, ge2e_embedder)
    assert s.add_audio(clips[SPK_A][0]).accepted
    r = s.add_audio(clips[SPK_A][0].copy())
    assert not r.accepted and r.feedback == (Feedback.DUPLICATE,)
    assert len(s.utterances) == 1


# ------------------------------------------------------------- progress and commit


def test_progress_finish_and_store(
    store: ProfileStore, ge2e_embedder: Any, clips: dict[str, list[np.ndarray]]
) -> None:
    s = start(store, ge2e_embedder)
    accepted = []
    for i, x in enumerate(clips[SPK_A][:3]):
        r = s.add_audio(x, source=f"a{i}.flac")
        assert r.accepted, r
        accepted.append(r.speech_s)
        p = r.progress
        assert p.utterances == i + 1
        assert p.collected_s == pytest.approx(sum(accepted), abs=0.01)
        want = min(sum(accepted) / 10.0, (i + 1) / 3, 1.0)
        assert p.percent == (100 if p.complete else min(99, int(want * 100 + 1e-9)))
    assert s.progress().complete and s.progress().percent == 100
    assert s.progress().missing() == ""
    profile = s.finish({"lang": "en"})
    assert s.closed
    stored = store.get("alice")
    assert stored == profile
    assert stored.fingerprint == ge2e_embedder.fingerprint
    assert stored.model_name == "resemblyzer-ge2e"
    assert stored.metadata == {"lang": "en"}
    assert [u.source for u in stored.utterances] == ["a0.flac", "a1.flac", "a2.flac"]
    assert stored.speech_s == pytest.approx(sum(accepted), abs=1e-4)
    assert np.allclose(stored.centroid, centroid([u.embedding for u in s.utterances]))
    with pytest.raises(ProfileError, match="already finished"):
        s.add_audio(clips[SPK_A][3])


def test_finish_refuses_incomplete(
    store: ProfileStore, ge2e_embedder: Any, clips: dict[str, list[np.ndarray]]
) -> None:
    s = start(store, ge2e_embedder)
    assert s.add_audio(clips[SPK_A][2]).accepted  # ~2.5 s of speech
    with pytest.raises(ProfileError, match="incomplete: 1/3 utterances") as err:
        s.finish()
    assert "2 more accepted utterances" in str(err.value)
    assert "s more speech" in str(err.value)
    assert len(store) == 0 and not s.closed
    # Still usable: more speech completes it.
    assert s.add_audio(clips[SPK_A][0]).accepted
    assert s.add_audio(clips[SPK_A][1]).accepted
    s.finish()
    assert store.names() == ["alice"]


def test_speech_requirement_alone(
    store: ProfileStore, ge2e_embedder: Any, clips: dict[str, list[np.ndarray]]
) -> None:
    """Three short utterances are not enough when they hold < 10 s of speech."""
    s = start(store, ge2e_embedder)
    for x in clips[SPK_A][2:4]:
        assert s.add_audio(x).accepted
    short = s.add_audio(speech_cut(clips[SPK_A][0], 2.0))
    assert short.accepted
    p = s.progress()
    assert p.utterances == 3 and p.collected_s < 10.0 and not p.complete
    assert p.percent == int(p.collected_s / 10.0 * 100 + 1e-9)
    assert p.missing().endswith("s more speech") and "utterance" not in p.missing()


def test_cancel_writes_nothing(
    store: ProfileStore, ge2e_embedder: Any, clips: dict[str, list[np.ndarray]]
) -> None:
    before = store.path.read_bytes()
    s = start(store, ge2e_embedder)
    for x in clips[SPK_A][:3]:
        s.add_audio(x)
    assert s.progress().complete
    s.cancel()
    assert s.closed and s.utterances == []
    assert len(store) == 0 and "alice" not in store
    assert store.path.read_bytes() == before
    with pytest.raises(ProfileError, match="already finished or cancelled"):
        s.finish()


def test_duplicate_name_and_reenroll_with_replace(
    store: ProfileStore, ge2e_embedder: Any, clips: dict[str, list[np.ndarray]]
) -> None:
    s = start(store, ge2e_embedder)
    for x in clips[SPK_A][:3]:
        s.add_audio(x)
    first = s.finish({"k": "v"})
    with pytest.raises(ProfileError, match="already exists"):
        start(store, ge2e_embedder, "ALICE")  # names ignore case
    r = start(store, ge2e_embedder, "Alice", replace=True)
    for x in (clips[SPK_A][3], clips[SPK_A][1], clips[SPK_A][2]):
        assert r.add_audio(x).accepted
    again = r.finish()
    assert again.id == first.id and again.name == "alice"
    assert again.created == first.created and again.updated >= first.updated
    assert again.metadata == {"k": "v"}  # kept unless new metadata is given
    assert not np.array_equal(again.centroid, first.centroid)
    assert store.get("alice") == again and len(store) == 1
    # replace=True for a new name simply enrolls it.
    n = start(store, ge2e_embedder, "newcomer", replace=True)
    for x in clips[SPK_B][:3]:
        n.add_audio(x)
    assert n.finish({"x": "1"}).metadata == {"x": "1"}
    assert store.names() == ["alice", "newcomer"]


def test_add_embedding(store: ProfileStore, ge2e_embedder: Any) -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal(256).astype(np.float32)
    s = start(store, ge2e_embedder, policy=EnrollmentPolicy(consistency=0.5))
    assert s.add_embedding(base * 3, 4.0, "x").accepted
    assert np.isclose(np.linalg.norm(s.utterances[0].embedding), 1.0)
    assert s.add_embedding(base, 0.5).feedback == (Feedback.TOO_SHORT,)
    assert s.add_embedding(base, 0.1).feedback == (Feedback.NO_VOICE,)
    assert s.add_embedding(-base + 0.01, 4.0).feedback == (Feedback.INCONSISTENT,)
    with pytest.raises(ProfileError, match="dimension"):
        s.add_embedding(base[:10], 4.0)
    with pytest.raises(ProfileError, match="NaN"):
        s.add_embedding(np.full(256, np.nan, np.float32), 4.0)


def test_policy_validation() -> None:
    with pytest.raises(ConfigError, match="min_utterances"):
        EnrollmentPolicy(min_utterances=0)
    with pytest.raises(ConfigError, match="min_total_speech_s"):
        EnrollmentPolicy(min_total_speech_s=-1)
    with pytest.raises(ConfigError, match="consistency"):
        EnrollmentPolicy(consistency=2.0)


def test_invalid_name(store: ProfileStore, ge2e_embedder: Any) -> None:
    for bad in ("", "   ", "a\nb", "0123456789abcdef0123456789abcdef"):
        with pytest.raises(ProfileError):
            start(store, ge2e_embedder, bad)
