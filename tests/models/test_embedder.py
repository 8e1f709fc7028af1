"""``Embedder``: audio -> embeddings for both model kinds, on real speech.

GE2E (segments) must reproduce Resemblyzer's own embeddings through the public path
``Embedder.embed(load_audio(file))``; WeSpeaker (whole utterance) runs the random-weight
ResNet34 with CMN'd Kaldi fbank. Also: sliding windows, and clips refused as silent or short.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import MODEL_CACHE
from voiceid.audio.io import load_audio
from voiceid.errors import AudioError
from voiceid.frontend.fbank import fbank
from voiceid.models import registry
from voiceid.models.embedder import MIN_DURATION_S, Embedder
from voiceid.models.inference import EmbeddingModel

RATE = 16000


@pytest.fixture(scope="module")
def ge2e(ge2e_embedder: Embedder) -> Embedder:
    return ge2e_embedder


@pytest.fixture(scope="module")
def wespeaker() -> Embedder:
    resolved = registry.resolve(
        "wespeaker-resnet34-random", fetch=True, cache=MODEL_CACHE / "models"
    )
    return Embedder(EmbeddingModel(resolved.path, resolved.card, device="cpu", intra_threads=2))


@pytest.fixture(scope="module")
def utterance(speakers: dict[str, list[Path]]) -> np.ndarray:
    """15.0 s of read speech (speaker 1688, first utterance)."""
    return load_audio(speakers["1688"][0])


@pytest.fixture(scope="module")
def reference(shared_dir: Path) -> dict[str, Any]:
    path = shared_dir / "reference-ge2e.json"
    if not path.is_file():
        pytest.skip(f"Resemblyzer reference outputs not found at {path}")
    files: dict[str, Any] = json.loads(path.read_text())["files"]
    return files


# -- GE2E ---------------------------------------------------------------------------------


def test_ge2e_embedder_identity(ge2e: Embedder) -> None:
    assert ge2e.card.name == "resemblyzer-ge2e"
    assert ge2e.sample_rate == RATE
    assert ge2e.card.segment_frames == 160 and ge2e.card.segment_step == 77
    assert ge2e.fingerprint == registry.card("resemblyzer-ge2e").fingerprint()


def test_ge2e_utterance_embeddings_unit_norm(
    ge2e: Embedder, speakers: dict[str, list[Path]]
) -> None:
    embs = np.stack([ge2e.embed(load_audio(f)) for f in speakers["367"][:3]])
    assert embs.dtype == np.float32 and embs.shape == (3, 256)
    np.testing.assert_allclose(np.linalg.norm(embs, axis=1), 1.0, rtol=1e-5)
    assert np.all(embs >= 0)  # ReLU before the norm, and the mean of partials keeps it
    # deterministic: the same audio gives the same vector
    np.testing.assert_array_equal(ge2e.embed(load_audio(speakers["367"][0])), embs[0])


def test_ge2e_reproduces_resemblyzer(
    ge2e: Embedder, reference: dict[str, Any], shared_dir: Path
) -> None:
    assert len(reference) >= 3
    for rel, ref in reference.items():
        path = shared_dir / rel
        if not path.is_file():
            pytest.skip(f"reference audio {path} missing")
        emb = ge2e.embed(load_audio(path), where=rel)
        want = np.asarray(ref["embedding"], dtype=np.float64)
        cosine = float(emb @ want / np.linalg.norm(want))
        print(f"{rel}: cosine to Resemblyzer {cosine:.7f}")
        assert cosine >= 0.9999, (rel, cosine)


# -- sliding windows ------------------------------------------------------------------------


def test_sliding_windows_cover_the_file(ge2e: Embedder, utterance: np.ndarray) -> None:
    duration = len(utterance) / RATE
    segments = ge2e.sliding(utterance, duration_s=2.0, step_s=1.0)
    starts = [s.start_s for s in segments]
    # read speech has no 2 s without speech: every window of the grid is there
    assert starts == [float(k) for k in range(int(duration - 2.0) + 1)]
    for s in segments:
        assert s.end_s == s.start_s + 2.0
        assert s.embedding.shape == (256,)
        assert abs(float(np.linalg.norm(s.embedding)) - 1.0) < 1e-5
    assert segments[-1].end_s <= duration < segments[-1].end_s + 1.0  # tail < one step
    # times say which samples were embedded
    k = 5
    chunk = utterance[k * RATE : (k + 2) * RATE]
    np.testing.assert_allclose(segments[k].embedding, ge2e.embed(chunk, check=False), atol=1e-6)
    # windows differ from each other and from the whole utterance
    whole = ge2e.embed(utterance)
    assert all(float(s.embedding @ whole) < 0.9999 for s in segments)
    assert float(segments[0].embedding @ segments[-1].embedding) < 0.9999


def test_sliding_fractional_step(ge2e: Embedder, utterance: np.ndarray) -> None:
    clip = utterance[: 4 * RATE]
    segments = ge2e.sliding(clip, duration_s=1.5, step_s=0.5)
    assert [(s.start_s, s.end_s) for s in segments] == [
        (0.0, 1.5),
        (0.5, 2.0),
        (1.0, 2.5),
        (1.5, 3.0),
        (2.0, 3.5),
        (2.5, 4.0),
    ]


def test_sliding_skips_silent_windows(ge2e: Embedder, utterance: np.ndarray) -> None:
    # 4 s speech | 4 s digital silence | 4 s speech
    audio = np.concatenate(
        [utterance[: 4 * RATE], np.zeros(4 * RATE, np.float32), utterance[8 * RATE : 12 * RATE]]
    )
    segments = ge2e.sliding(audio, duration_s=2.0, step_s=1.0)
    starts = {s.start_s for s in segments}
    assert starts.isdisjoint({4.0, 5.0, 6.0})  # windows wholly inside the silence
    assert {0.0, 1.0, 2.0, 8.0, 9.0, 10.0} <= starts  # windows wholly inside speech
    assert starts <= {float(k) for k in range(11)}


def test_sliding_refusals(ge2e: Embedder, utterance: np.ndarray) -> None:
    with pytest.raises(AudioError) as info:
        ge2e.sliding(utterance[:RATE], duration_s=2.0, step_s=1.0)
    assert info.value.message == "audio (1.00 s) is shorter than one window (2.0 s)"
    with pytest.raises(AudioError, match="no window holds speech"):
        ge2e.sliding(np.zeros(5 * RATE, np.float32), duration_s=2.0, step_s=1.0)
    for duration, step in ((0.0, 1.0), (2.0, 0.0), (-1.0, 1.0)):
        with pytest.raises(AudioError, match="must be positive seconds"):
            ge2e.sliding(utterance, duration_s=duration, step_s=step)


# -- refused clips ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["zeros", "quiet-noise"], ids=["digital-silence", "noise-at-60dBFS"]
)
def test_silence_is_refused(kind: str, ge2e: Embedder, wespeaker: Embedder) -> None:
    rng = np.random.default_rng(0)
    if kind == "zeros":
        samples = np.zeros(3 * RATE, np.float32)
    else:
        samples = (rng.standard_normal(3 * RATE) * 10 ** (-60 / 20)).astype(np.float32)
    for embedder in (ge2e, wespeaker):
        with pytest.raises(AudioError) as info:
            embedder.embed(samples, where="quiet.wav")
        assert info.value.exit_code == 3
        assert info.value.message == "quiet.wav holds no speech (0.00 s voiced of 3.0 s)"
        assert info.value.hint is not None and "silence or noise" in info.value.hint


def test_too_short_is_refused(ge2e: Embedder, wespeaker: Embedder, utterance: np.ndarray) -> None:
    short = utterance[RATE : RATE + int(0.3 * RATE)]
    for embedder in (ge2e, wespeaker):
        with pytest.raises(AudioError) as info:
            embedder.embed(short)
        assert info.value.message == "audio is too short: 0.30 s"
        assert info.value.hint is not None and f"at least {MIN_DURATION_S} s" in info.value.hint
        with pytest.raises(AudioError, match=r"too short: 0\.00 s"):
            embedder.embed(np.zeros(0, np.float32))
    # exactly the minimum duration of real speech is accepted
    ok = ge2e.embed(utterance[RATE : RATE + int(MIN_DURATION_S * RATE)])
    assert abs(float(np.linalg.norm(ok)) - 1.0) < 1e-5


def test_ge2e_unchecked_silence_fails_after_trimming(ge2e: Embedder) -> None:
    with pytest.raises(AudioError, match="x holds no speech after silence trimming"):
        ge2e.embed(np.zeros(2 * RATE, np.float32), where="x", check=False)


# -- WeSpeaker (whole utterance, random-weight ResNet34) ------------------------------------


def test_wespeaker_path_end_to_end(wespeaker: Embedder, utterance: np.ndarray) -> None:
    clip = utterance[: 4 * RATE]
    emb = wespeaker.embed(clip)
    assert emb.dtype == np.float32 and emb.shape == (256,)
    assert abs(float(np.linalg.norm(emb)) - 1.0) < 1e-5
    assert wespeaker.card.segment_frames is None  # one pass over the whole utterance


def test_wespeaker_features_are_cmn(wespeaker: Embedder, utterance: np.ndarray) -> None:
    clip = utterance[: 4 * RATE]
    raw = fbank(clip)
    feats = wespeaker.features(clip)
    assert feats.shape == raw.shape == (1 + (len(clip) - 400) // 160, 80)
    assert feats.dtype == np.float32
    # per-bin mean over time is ~0 after CMN, and clearly not before
    assert np.max(np.abs(feats.mean(axis=0))) < 1e-4
    assert np.max(np.abs(raw.mean(axis=0))) > 1.0
    np.testing.assert_allclose(feats, raw - raw.mean(axis=0), atol=1e-4)
    # the embedding is the model's output on the CMN'd features, not on the raw ones
    emb = wespeaker.embed(clip)
    np.testing.assert_allclose(emb, wespeaker.model.embed(feats[None])[0], atol=1e-6)
    without_cmn = wespeaker.model.embed(raw[None])[0]
    assert float(emb @ without_cmn) < 0.9999


def test_default_fingerprint_of_unpinned_model_is_the_file_hash(wespeaker: Embedder) -> None:
    resolved = registry.resolve("wespeaker-resnet34-random", cache=MODEL_CACHE / "models")
    assert wespeaker.fingerprint == resolved.fingerprint
