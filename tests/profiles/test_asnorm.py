"""AS-norm: the formula, its invariances, ranking sanity, the scorer's cache, cohort files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from voiceid.errors import ConfigError, ProfileError
from voiceid.evaluation import metrics
from voiceid.profiles.asnorm import (
    ASNormScorer,
    Cohort,
    asnorm,
    cohort_stats,
    load_cohort,
    read_cohort,
    save_cohort,
    speaker_means,
    topn_stats,
)
from voiceid.profiles.index import ProfileIndex


def unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    return out


def speakers_data(
    seed: int = 0, n_spk: int = 12, per: int = 6, dim: int = 32, noise: float = 0.6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered unit embeddings: (embeddings [n_spk*per, D], labels, cohort [40, D])."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_spk, dim))
    emb = unit(np.repeat(centers, per, axis=0) + noise * rng.normal(size=(n_spk * per, dim)))
    cohort_centers = rng.normal(size=(40, dim))
    return emb, np.repeat(np.arange(n_spk), per), unit(cohort_centers)


def test_formula_matches_a_naive_loop() -> None:
    rng = np.random.default_rng(1)
    enroll, test, cohort = (unit(rng.normal(size=(n, 16))) for n in (4, 3, 25))
    got = ASNormScorer(
        ProfileIndex.from_matrix("fp", list("abcd"), list("abcd"), enroll), cohort, top_n=10
    ).scores(test)
    for b in range(3):
        for n in range(4):
            s = float(test[b] @ enroll[n])
            ce = np.sort(cohort @ enroll[n])[-10:]
            ct = np.sort(cohort @ test[b])[-10:]
            want = 0.5 * ((s - ce.mean()) / ce.std() + (s - ct.mean()) / ct.std())
            assert got[b, n] == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_topn_stats_uses_the_highest() -> None:
    s = np.array([[0.1, 0.9, 0.5, 0.7, 0.3]])
    mu, sd = topn_stats(s, 2)
    assert mu[0] == pytest.approx(0.8) and sd[0] == pytest.approx(0.1)
    mu, _ = topn_stats(s, 300)  # capped at the cohort size
    assert mu[0] == pytest.approx(0.5)


def test_invariant_to_an_affine_map_of_all_scores() -> None:
    rng = np.random.default_rng(2)
    raw, ce, ct = rng.normal(size=(5, 4)), rng.normal(size=(4, 30)), rng.normal(size=(5, 30))
    base = asnorm(raw, topn_stats(ce, 8), topn_stats(ct, 8))
    for a, b in ((2.0, 0.3), (0.1, -5.0), (7.0, 0.0)):
        moved = asnorm(a * raw + b, topn_stats(a * ce + b, 8), topn_stats(a * ct + b, 8))
        assert moved == pytest.approx(base, rel=1e-9, abs=1e-9)


def test_a_speakers_offset_and_scale_cancel_on_its_side() -> None:
    """Shift/scale every score of one enrolled speaker (its trials and its cohort scores,
    e.g. a speaker who scores high with everybody): its enrollment-side z-score is
    unchanged, so the normalised score moves only through the test side, by exactly
    0.5 * (a*s + b - s) / sigma_t; the other speakers do not move at all."""
    rng = np.random.default_rng(3)
    raw, ce, ct = rng.normal(size=(6, 3)), rng.normal(size=(3, 30)), rng.normal(size=(6, 30))
    t_stats = topn_stats(ct, 10)
    base = asnorm(raw, topn_stats(ce, 10), t_stats)
    a, b = 1.7, 0.4
    raw2, ce2 = raw.copy(), ce.copy()
    raw2[:, 1] = a * raw[:, 1] + b
    ce2[1] = a * ce[1] + b
    moved = asnorm(raw2, topn_stats(ce2, 10), t_stats)
    assert moved[:, [0, 2]] == pytest.approx(base[:, [0, 2]])
    expected = base[:, 1] + 0.5 * (raw2[:, 1] - raw[:, 1]) / t_stats[1]
    assert moved[:, 1] == pytest.approx(expected)


def test_monotone_in_the_raw_score() -> None:
    rng = np.random.default_rng(4)
    stats_e, stats_t = (
        topn_stats(rng.normal(size=(1, 20)), 5),
        topn_stats(rng.normal(size=(1, 20)), 5),
    )
    raw = np.linspace(-1, 1, 50)[:, None]
    out = asnorm(raw, stats_e, (np.repeat(stats_t[0], 50), np.repeat(stats_t[1], 50)))
    assert np.all(np.diff(out[:, 0]) > 0)


def test_ranking_sanity_on_clustered_speakers() -> None:
    emb, labels, cohort = speakers_data()
    enroll_rows = [np.flatnonzero(labels == s)[:2] for s in range(labels.max() + 1)]
    centroids = unit(np.stack([emb[r].mean(axis=0) for r in enroll_rows]))
    test = np.setdiff1d(np.arange(len(labels)), np.concatenate(enroll_rows))
    names = [f"s{i}" for i in range(len(centroids))]
    index = ProfileIndex.from_matrix("fp", names, names, centroids)
    raw = index.scores(emb[test])
    norm = ASNormScorer(index, cohort, top_n=20).scores(emb[test])
    truth = labels[test]
    assert (
        metrics.identification(norm, truth, (1,))[1]
        >= metrics.identification(raw, truth, (1,))[1] - 0.05
    )
    assert metrics.identification(norm, truth, (1,))[1] > 0.9
    is_t = truth[:, None] == np.arange(len(names))[None, :]
    e = metrics.eer(norm[is_t], norm[~is_t]).eer
    assert e < 0.1
    assert norm[is_t].mean() > norm[~is_t].mean() + 2  # z-like units
    assert abs(float(np.median(norm[~is_t]))) < 1.5  # non-targets centred near 0


@dataclass(frozen=True)
class P:
    """Just what ProfileIndex.add reads."""

    id: str
    name: str
    centroid: np.ndarray
    fingerprint: str = "fp"
    model_name: str = "m"


def profile(name: str, vec: np.ndarray) -> P:
    return P(f"{name}-{float(vec[0]):.6f}", name, vec)


def test_scorer_caches_enrollment_stats_until_the_index_changes() -> None:
    emb, _, cohort = speakers_data(seed=5)
    index = ProfileIndex("fp", model_name="m")
    scorer = ASNormScorer(index, cohort, top_n=10)
    assert scorer.scores(emb[:3]).shape == (3, 0)
    index.add(profile("alice", emb[0]))
    index.add(profile("bob", emb[10]))
    first = scorer.scores(emb[:4])
    updates = scorer.updates
    assert scorer.scores(emb[:4]) == pytest.approx(first)
    assert scorer.names == ["alice", "bob"]
    assert scorer.updates == updates  # reused
    index.add(profile("carol", emb[20]))
    got = scorer.scores(emb[:4])
    assert scorer.updates == updates + 1
    assert scorer.names == ["alice", "bob", "carol"]
    fresh = ASNormScorer(index, cohort, top_n=10).scores(emb[:4])
    assert got == pytest.approx(fresh)
    index.add(profile("alice", emb[30]))  # replaced: new centroid, stats recomputed
    assert scorer.scores(emb[:4]) == pytest.approx(ASNormScorer(index, cohort, 10).scores(emb[:4]))
    one = scorer.scores(emb[0])
    assert one.shape == (3,)


class PlainIndex:
    """Not a ProfileIndex: names and matrix only (keyed by content)."""

    def __init__(self, names: list[str], matrix: np.ndarray) -> None:
        self.names, self.matrix = names, matrix


def test_scorer_on_another_index_type() -> None:
    emb, _, cohort = speakers_data(seed=6)
    plain = PlainIndex(["a", "b"], emb[[0, 10]])
    scorer = ASNormScorer(plain, cohort, top_n=10)
    s1 = scorer.scores(emb[:2])
    plain.matrix = emb[[0, 20]]
    s2 = scorer.scores(emb[:2])
    assert scorer.updates == 2 and not np.allclose(s1, s2)


def test_scorer_errors() -> None:
    emb, _, cohort = speakers_data(seed=7)
    index = ProfileIndex.from_matrix("fp", ["a"], ["a"], emb[:1])
    with pytest.raises(ProfileError, match="at least 2"):
        ASNormScorer(index, cohort[:1])
    with pytest.raises(ConfigError):
        ASNormScorer(index, cohort, top_n=0)
    with pytest.raises(ProfileError, match="dimension"):
        ASNormScorer(index, cohort[:, :16]).scores(emb[:1])


def test_cohort_file_roundtrip_and_model_check(tmp_path: Path) -> None:
    emb, labels, _ = speakers_data(seed=8)
    means, names = speaker_means(emb, [f"s{i}" for i in labels])
    assert means.shape == (12, 32) and names[0] == "s0"
    assert np.linalg.norm(means, axis=1) == pytest.approx(np.ones(12), abs=1e-5)
    path = save_cohort(
        tmp_path / "c.npz", Cohort(means, "fp1", "model-a", speakers=names, files_sha256=["ab"])
    )
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary left
    got = read_cohort(path)
    assert got.speakers == names and got.files_sha256 == ["ab"] and got.model == "model-a"
    assert load_cohort(path, "fp1") == pytest.approx(means)
    with pytest.raises(ProfileError, match=r"model-a \(fingerprint fp1\).*fp2"):
        load_cohort(path, "fp2")
    with pytest.raises(ConfigError, match="not found"):
        load_cohort(tmp_path / "missing.npz", "fp1")
    np.save(tmp_path / "raw.npy", means)
    with pytest.raises(ProfileError, match="not a voiceid cohort"):
        load_cohort(tmp_path / "raw.npy", "fp1")


def test_cohort_stats_empty_batch() -> None:
    _, _, cohort = speakers_data()
    mu, sd = cohort_stats(np.zeros((0, 32), np.float32), cohort, 5)
    assert mu.shape == (0,) and sd.shape == (0,)
