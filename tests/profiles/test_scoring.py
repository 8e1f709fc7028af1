"""Verify / identify, and the acceptance test on real speech.

Acceptance (resemblyzer-ge2e, librispeech-test-other, 10 speakers x 10 utterances):
each speaker is enrolled through an EnrollmentSession from utterances 0-2 into a real
SQLite file; the other 7 utterances of each (70 probes) are identified (top-1 >= 98 %)
and scored against every profile for the verification EER (70 target / 630 non-target
trials). The counts are printed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voiceid.audio.io import load_audio
from voiceid.errors import ProfileError
from voiceid.profiles.enroll import EnrollmentSession
from voiceid.profiles.index import ProfileIndex
from voiceid.profiles.model import Utterance
from voiceid.profiles.scoring import (
    identify,
    require_profiles,
    require_same_model,
    score,
    verify,
)
from voiceid.profiles.store import ProfileStore

ENROLL = 3  # utterances 0..2 enroll, 3..9 are probes


def eer(target: np.ndarray, nontarget: np.ndarray) -> tuple[float, float]:
    """(EER, threshold): the threshold where FAR (non-targets >= t) and FRR (targets < t)
    are closest, over midpoints of adjacent observed scores; EER is their mean there."""
    values = np.unique(np.concatenate([target, nontarget]))
    cands = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1]])
    frr = np.searchsorted(np.sort(target), cands, side="left") / len(target)
    far = 1.0 - np.searchsorted(np.sort(nontarget), cands, side="left") / len(nontarget)
    i = int(np.argmin(np.abs(far - frr) + 1e-9 * (far + frr)))
    return float((far[i] + frr[i]) / 2), float(cands[i])


def test_eer_helper() -> None:
    assert eer(np.array([0.9, 0.8]), np.array([0.1, 0.2]))[0] == 0.0
    e, _ = eer(np.array([0.5, 0.9, 0.9, 0.9]), np.array([0.6, 0.1, 0.1, 0.1]))
    assert e == pytest.approx(0.25)


@pytest.fixture(scope="module")
def enrolled(
    speakers: dict[str, list[Path]], ge2e_embedder: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ProfileStore, dict[str, np.ndarray]]]:
    """A real DB with the 10 speakers enrolled (utterances 0-2) and the probe embeddings
    (utterances 3-9 of each speaker, ``[7, 256]``), computed once for the module."""
    path = tmp_path_factory.mktemp("acceptance") / "profiles.db"
    emb = ge2e_embedder
    probes: dict[str, np.ndarray] = {}
    with ProfileStore.open(path) as store:
        for spk, files in speakers.items():
            s = EnrollmentSession.start(spk, store, emb, threshold=emb.card.threshold)
            for f in files[:ENROLL]:
                r = s.add_audio(load_audio(f, emb.sample_rate), source=f.name)
                assert r.accepted, (f.name, r)
            s.finish()
            probes[spk] = np.stack(
                [emb.embed(load_audio(f, emb.sample_rate), where=f.name) for f in files[ENROLL:]]
            )
        yield store, probes


def test_acceptance_identify_and_eer(
    enrolled: tuple[ProfileStore, dict[str, np.ndarray]],
    ge2e_embedder: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store, probes = enrolled
    emb = ge2e_embedder
    assert len(store) == 10
    index = ProfileIndex.from_profiles(store.list(), emb.fingerprint, model_name=emb.card.name)
    threshold = emb.card.threshold
    correct = total = 0
    target: list[float] = []
    nontarget: list[float] = []
    profiles = {p.name: p for p in store.list()}
    for spk, vecs in probes.items():
        for v in vecs:
            result = identify(index, v, threshold=threshold, top_k=3)
            correct += result.matches[0].name == spk
            total += 1
            for name, p in profiles.items():
                (target if name == spk else nontarget).append(score(p, v))
    tar, non = np.array(target), np.array(nontarget)
    rate, at = eer(tar, non)
    far = float(np.mean(non >= threshold))
    frr = float(np.mean(tar < threshold))
    with capsys.disabled():
        print(
            f"\nacceptance (resemblyzer-ge2e, 3-utterance enrollment): identify top-1: "
            f"{correct}/{total}; verification EER {100 * rate:.2f}% at {at:.3f} "
            f"({len(tar)} target / {len(non)} non-target trials); at threshold "
            f"{threshold}: FAR {100 * far:.2f}%, FRR {100 * frr:.2f}%; "
            f"min target {tar.min():.3f}, max non-target {non.max():.3f}"
        )
    assert total == 70 and len(tar) == 70 and len(non) == 630
    assert correct >= 69  # >= 98 %
    assert rate <= 0.02


def test_verify_against_store(
    enrolled: tuple[ProfileStore, dict[str, np.ndarray]], ge2e_embedder: Any
) -> None:
    store, probes = enrolled
    fp, model = ge2e_embedder.fingerprint, ge2e_embedder.card.name
    spk, other = sorted(probes)[:2]
    ok = verify(store, spk, probes[spk][0], fingerprint=fp, model_name=model, threshold=0.75)
    assert ok.accepted and ok.name == spk and ok.score >= 0.75
    assert ok.as_dict() == {
        "name": spk,
        "score": round(ok.score, 6),
        "threshold": 0.75,
        "accepted": True,
    }
    no = verify(store, spk, probes[other][0], fingerprint=fp, model_name=model, threshold=0.75)
    assert not no.accepted and no.score < 0.75
    # Unnormalised queries are normalised: same score.
    again = verify(store, spk, probes[spk][0] * 7, fingerprint=fp, model_name=model, threshold=0.75)
    assert again.score == pytest.approx(ok.score, abs=1e-6)
    with pytest.raises(ProfileError, match="no profile named 'nobody'"):
        verify(store, "nobody", probes[spk][0], fingerprint=fp, model_name=model, threshold=0.5)
    with pytest.raises(ProfileError, match="dimension"):
        verify(store, spk, probes[spk][0][:10], fingerprint=fp, model_name=model, threshold=0.5)


def test_wrong_model_is_refused(
    enrolled: tuple[ProfileStore, dict[str, np.ndarray]], ge2e_embedder: Any
) -> None:
    store, probes = enrolled
    spk = sorted(probes)[0]
    with pytest.raises(ProfileError) as err:
        verify(
            store,
            spk,
            probes[spk][0],
            fingerprint="f" * 16,
            model_name="other-model",
            threshold=0.5,
        )
    msg = str(err.value)
    assert f"re-enroll {spk} with model other-model" in msg
    assert "enrolled with model resemblyzer-ge2e" in msg
    require_same_model(store.get(spk), ge2e_embedder.fingerprint, "resemblyzer-ge2e")
    # The 1:N index of another model holds none of them and says so.
    index = ProfileIndex.from_profiles(store.list(), "f" * 16, model_name="other-model")
    assert len(index) == 0
    with pytest.raises(ProfileError, match="enrolled with other models") as err2:
        identify(index, probes[spk][0], threshold=0.5)
    assert "re-enroll them with other-model" in str(err2.value)
    with pytest.raises(ProfileError, match="re-enroll"):
        index.check(spk)


def test_identify_unknown_and_topk(
    enrolled: tuple[ProfileStore, dict[str, np.ndarray]], ge2e_embedder: Any
) -> None:
    store, probes = enrolled
    index = ProfileIndex.from_profiles(store.list(), ge2e_embedder.fingerprint)
    spk = sorted(probes)[3]
    q = probes[spk][1]
    r = identify(index, q, threshold=0.999, top_k=4)
    assert r.decision is None and r.threshold == 0.999
    assert len(r.matches) == 4 and r.matches[0].name == spk
    assert [m.score for m in r.matches] == sorted((m.score for m in r.matches), reverse=True)
    d = r.as_dict()
    assert d["decision"] is None and d["matches"][0]["name"] == spk
    assert len(identify(index, q, threshold=0.5, top_k=50).matches) == 10
    with pytest.raises(ProfileError, match="top_k"):
        identify(index, q, threshold=0.5, top_k=0)


def test_empty_index() -> None:
    with pytest.raises(ProfileError, match="no profiles enrolled yet"):
        require_profiles(ProfileIndex("fp"))
    with pytest.raises(ProfileError, match="no profiles enrolled yet"):
        identify(ProfileIndex("fp"), np.ones(4, np.float32), threshold=0.5)


def test_score_helper(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    u = [Utterance(rng.standard_normal(8).astype(np.float32), 3.0) for _ in range(3)]
    with ProfileStore.open(tmp_path / "p.db") as store:
        p = store.add("x", "fp", "m", u)
    v = u[0].embedding
    want = float(p.centroid @ (v / np.linalg.norm(v)))
    assert score(p, v) == pytest.approx(want, abs=1e-6)
    with pytest.raises(ProfileError, match="NaN"):
        score(p, np.zeros(8, np.float32))
