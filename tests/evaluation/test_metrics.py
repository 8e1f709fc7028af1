"""Verification metrics against hand-computed cases, plus the DET plot and the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voiceid.evaluation import metrics
from voiceid.evaluation.cache import EmbeddingCache, file_sha256
from voiceid.evaluation.det import Curve, plot_det, probit

# Hand example (accept when score >= threshold):
#   sorted: 0.1n 0.2n 0.3t 0.4n 0.5n 0.6t 0.7n 0.8t 0.9t
#   between 0.4 and 0.5: FAR 2/5, FRR 1/4;  between 0.5 and 0.6: FAR 1/5, FRR 1/4
#   FAR - FRR goes 0.15 -> -0.05: the crossing is 3/4 of the way, FAR = FRR = 0.25,
#   threshold 0.45 + 0.75 * 0.1 = 0.525.
TAR = [0.9, 0.8, 0.6, 0.3]
NON = [0.7, 0.5, 0.4, 0.2, 0.1]


def test_hand_example_eer() -> None:
    e = metrics.eer(TAR, NON)
    assert e.eer == pytest.approx(0.25)
    assert e.threshold == pytest.approx(0.525)


def test_hand_example_sweep() -> None:
    sw = metrics.sweep(TAR, NON)
    assert sw.far.tolist() == pytest.approx([1, 0.8, 0.6, 0.6, 0.4, 0.2, 0.2, 0, 0, 0])
    assert sw.frr.tolist() == pytest.approx([0, 0, 0, 0.25, 0.25, 0.25, 0.5, 0.5, 0.75, 1])
    assert np.all(np.diff(sw.thresholds) > 0)


def test_hand_example_min_dcf() -> None:
    # p = 0.5: cost = FAR + FRR, least 0.45 (FAR 0.2, FRR 0.25) between 0.5 and 0.6
    d = metrics.min_dcf(TAR, NON, 0.5)
    assert d.min_dcf == pytest.approx(0.45)
    assert d.threshold == pytest.approx(0.55)
    # p = 0.05: cost = FRR + 19 FAR, least 0.5 (FAR 0, FRR 0.5) between 0.7 and 0.8
    for p in (0.05, 0.01):
        d = metrics.min_dcf(TAR, NON, p)
        assert d.min_dcf == pytest.approx(0.5)
        assert d.threshold == pytest.approx(0.75)


def test_hand_example_rates() -> None:
    assert metrics.rates_at(TAR, NON, 0.55) == pytest.approx((0.2, 0.25))
    assert metrics.rates_at(TAR, NON, 0.6) == pytest.approx((0.2, 0.25))  # 0.6 accepted
    assert metrics.rates_at(TAR, NON, 0.61) == pytest.approx((0.2, 0.5))
    assert metrics.rates_at(TAR, NON, 0.0) == (1.0, 0.0)
    assert metrics.rates_at(TAR, NON, 1.0) == (0.0, 1.0)


def test_threshold_for_far_hand() -> None:
    t = metrics.threshold_for_far(NON, 0.2)  # 1 of 5 may pass: just above 0.5 -> 0.6
    assert t.threshold == pytest.approx(0.6) and t.far == pytest.approx(0.2)
    assert t.resolvable
    t = metrics.threshold_for_far(NON, 0.4)  # 2 of 5: between 0.4 and 0.5
    assert t.threshold == pytest.approx(0.45) and t.far == pytest.approx(0.4)
    t = metrics.threshold_for_far(NON, 0.1)  # none may pass: just above the max
    assert t.threshold > 0.7 and t.threshold == pytest.approx(0.7) and t.far == 0.0
    assert not t.resolvable  # 5 non-targets cannot measure 10 %


@pytest.mark.parametrize("target", [0.001, 0.01, 0.05, 0.3])
def test_threshold_for_far_is_the_lowest(target: float) -> None:
    rng = np.random.default_rng(1)
    non = np.round(rng.normal(0.3, 0.1, 5000), 3)  # rounded: many ties
    t = metrics.threshold_for_far(non, target)
    assert np.mean(non >= t.threshold) <= target
    below = non[non < t.threshold].max()  # the next lower threshold accepts too many
    assert np.mean(non >= below) > target


def test_perfect_separation() -> None:
    tar, non = np.linspace(0.8, 0.9, 50), np.linspace(0.1, 0.5, 500)
    e = metrics.eer(tar, non)
    assert e.eer == 0.0
    assert 0.5 < e.threshold < 0.8
    assert metrics.rates_at(tar, non, e.threshold) == (0.0, 0.0)
    for p in (0.01, 0.05):
        assert metrics.min_dcf(tar, non, p).min_dcf == 0.0
    assert metrics.bootstrap_eer(tar, non, n=50) == (0.0, 0.0)


def test_identical_distributions() -> None:
    assert metrics.eer([1, 2, 3], [1, 2, 3]).eer == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    e = metrics.eer(rng.normal(size=4000), rng.normal(size=4000))
    assert e.eer == pytest.approx(0.5, abs=0.03)
    assert metrics.eer(np.zeros(10), np.zeros(20)).eer == pytest.approx(0.5)  # all tied


def test_gaussian_eer_matches_theory() -> None:
    # two unit Gaussians 2 apart: EER = Phi(-1) = 0.1587
    rng = np.random.default_rng(2)
    e = metrics.eer(rng.normal(2, 1, 20000), rng.normal(0, 1, 20000))
    assert e.eer == pytest.approx(0.1587, abs=0.01)
    assert e.threshold == pytest.approx(1.0, abs=0.05)


def test_min_dcf_bounds() -> None:
    rng = np.random.default_rng(3)
    for shift in (0.0, 0.5, 2.0, -1.0):
        tar, non = rng.normal(shift, 1, 300), rng.normal(0, 1, 3000)
        for p in (0.01, 0.05):
            d = metrics.min_dcf(tar, non, p).min_dcf
            assert 0.0 <= d <= 1.0 + 1e-12
    assert metrics.min_dcf([0.0], [1.0], 0.01).min_dcf == pytest.approx(1.0)  # reversed


def test_bootstrap_interval() -> None:
    rng = np.random.default_rng(4)
    tar, non = rng.normal(2, 1, 300), rng.normal(0, 1, 3000)
    e = metrics.eer(tar, non).eer
    lo, hi = metrics.bootstrap_eer(tar, non, n=300, seed=7)
    assert lo <= e <= hi and hi - lo < 0.1
    assert metrics.bootstrap_eer(tar, non, n=300, seed=7) == (lo, hi)  # seeded
    assert metrics.bootstrap_eer(tar, non, n=300, seed=8) != (lo, hi)


def test_det_points_monotone() -> None:
    rng = np.random.default_rng(5)
    far, frr = metrics.det_points(rng.normal(1, 1, 100), rng.normal(0, 1, 1000))
    assert far[0] == 1.0 and frr[0] == 0.0 and far[-1] == 0.0 and frr[-1] == 1.0
    assert np.all(np.diff(far) <= 0) and np.all(np.diff(frr) >= 0)


def test_identification() -> None:
    scores = np.array([[0.9, 0.1, 0.2], [0.3, 0.2, 0.8], [0.5, 0.6, 0.4]])
    acc = metrics.identification(scores, [0, 2, 2], (1, 2, 3))
    assert acc == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="non-target"):
        metrics.eer([0.5], [])
    with pytest.raises(ValueError, match="NaN"):
        metrics.eer([np.nan], [0.1])
    with pytest.raises(ValueError, match="p_target"):
        metrics.min_dcf(TAR, NON, 1.0)


def test_probit() -> None:
    assert probit(np.array([0.5, 0.975, 0.025])) == pytest.approx([0, 1.959964, -1.959964])


def test_det_plot_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    tar, non = rng.normal(2, 1, 500), rng.normal(0, 1, 5000)
    far, frr = metrics.det_points(tar, non)
    out = plot_det(
        tmp_path / "sub" / "det.png", [Curve("test", far, frr, metrics.eer(tar, non).eer)]
    )
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_embedding_cache(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"hello")
    sha = file_sha256(f)
    cache = EmbeddingCache("abcd1234", tmp_path / "cache")
    assert cache.get(sha) is None
    vec = np.arange(4, dtype=np.float32)
    cache.put(sha, vec)
    assert np.array_equal(cache.get(sha, 4), vec)
    assert cache.get(sha, 5) is None  # wrong dimension: a miss
    assert EmbeddingCache("other", tmp_path / "cache").get(sha) is None  # other model
    path = cache.path_for(sha)
    assert path is not None and path.parent.parent.name == "abcd1234"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    path.write_bytes(b"garbage")  # a corrupt entry is a miss, not an error
    assert cache.get(sha) is None
    off = EmbeddingCache("abcd1234", None)
    off.put(sha, vec)
    assert off.get(sha) is None
