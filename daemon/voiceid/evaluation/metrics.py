"""Verification metrics over trial scores (pure numpy).

Conventions, shared by every function here:

* ``tar``: scores of target trials (same speaker), ``non``: of non-target trials.
* A trial is *accepted* when ``score >= threshold``.
  FAR (false acceptance rate, P_fa) = fraction of non-targets accepted;
  FRR (false rejection rate, P_miss) = fraction of targets rejected.
* Rates are fractions in [0, 1] (multiply by 100 for %).

The operating points swept by :func:`sweep` are one per distinct score: thresholds
below every score, between each pair of adjacent distinct scores (the midpoint), and
above every score, so FAR falls from 1 to 0 and FRR rises from 0 to 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]


def _scores(values: ArrayLike, what: str) -> F64:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not bool(np.isfinite(arr).all()):
        raise ValueError(f"{what} scores contain NaN or infinite values")
    return arr


def _both(tar: ArrayLike, non: ArrayLike) -> tuple[F64, F64]:
    t, n = _scores(tar, "target"), _scores(non, "non-target")
    if t.size == 0 or n.size == 0:
        raise ValueError(
            f"need target and non-target trials (got {t.size} target, {n.size} non-target)"
        )
    return t, n


@dataclass(frozen=True)
class Sweep:
    """Operating points, thresholds ascending: FAR non-increasing, FRR non-decreasing."""

    thresholds: F64
    far: F64
    frr: F64


def sweep(tar: ArrayLike, non: ArrayLike) -> Sweep:
    """Every distinct operating point of the scores (see the module doc)."""
    t, n = _both(tar, non)
    scores = np.concatenate([t, n])
    is_tar = np.concatenate([np.ones(t.size, bool), np.zeros(n.size, bool)])
    order = np.argsort(scores, kind="stable")
    s, lab = scores[order], is_tar[order]
    cum_tar = np.cumsum(lab)  # targets with score <= s[i]
    cum_non = np.cumsum(~lab)
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # last index of each value
    values = s[last]
    # threshold k (k = 0..U): below values[0], between values[k-1] and values[k], above all
    below = np.concatenate([[0], cum_tar[last]])  # targets rejected at threshold k
    below_non = np.concatenate([[0], cum_non[last]])
    span = max(1.0, float(np.abs(values).max()))
    eps = 1e-6 * span
    thresholds = np.concatenate(
        [[values[0] - eps], (values[:-1] + values[1:]) / 2.0, [values[-1] + eps]]
    )
    frr = below / t.size
    far = 1.0 - below_non / n.size
    return Sweep(thresholds, far.astype(np.float64), frr.astype(np.float64))


@dataclass(frozen=True)
class EER:
    """Equal error rate and the threshold where FAR and FRR cross."""

    eer: float
    threshold: float


def eer(tar: ArrayLike, non: ArrayLike) -> EER:
    """Equal error rate: where FAR and FRR cross.

    ``d = FAR - FRR`` falls from 1 to -1 along :func:`sweep`. If an operating point has
    ``d == 0`` its rate is the EER; otherwise the EER is where the straight line between
    the two operating points around the sign change meets FAR = FRR (a mix of the two
    classifiers reaches it), and the threshold is interpolated the same way.
    Perfectly separated scores give 0; identical distributions give about 0.5.
    """
    sw = sweep(tar, non)
    return _eer_of(sw.thresholds, sw.far, sw.frr)


def _eer_of(thr: F64, far: F64, frr: F64) -> EER:
    d = far - frr
    j = int(np.argmax(d <= 0.0))  # first point with FAR <= FRR (exists: d[-1] = -1)
    if d[j] == 0.0 or j == 0:
        return EER(float(far[j]), float(thr[j]))
    a = d[j - 1] / (d[j - 1] - d[j])  # in (0, 1)
    rate = far[j - 1] + a * (far[j] - far[j - 1])
    return EER(float(rate), float(thr[j - 1] + a * (thr[j] - thr[j - 1])))


def bootstrap_eer(
    tar: ArrayLike,
    non: ArrayLike,
    *,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the EER (targets and non-targets resampled
    independently, with replacement, ``n`` times; seeded, so repeatable).

    Trials sharing a speaker or an utterance are not independent, so this interval is
    optimistic (too narrow); read it as a lower bound on the uncertainty.
    """
    t, nn = _both(tar, non)
    if n < 1:
        raise ValueError(f"bootstrap resamples must be >= 1, got {n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        out[i] = eer(t[rng.integers(0, t.size, t.size)], nn[rng.integers(0, nn.size, nn.size)]).eer
    lo, hi = np.quantile(out, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


@dataclass(frozen=True)
class DCF:
    """Normalised minimum detection cost and the threshold reaching it."""

    min_dcf: float
    threshold: float
    p_target: float


def min_dcf(
    tar: ArrayLike,
    non: ArrayLike,
    p_target: float,
    *,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> DCF:
    """Minimum over thresholds of the normalised detection cost function

    ``DCF(t) = (C_miss·p·P_miss(t) + C_fa·(1-p)·P_fa(t)) / min(C_miss·p, C_fa·(1-p))``.

    Accepting or rejecting everything costs at most 1 after normalisation, so the result
    is in [0, 1]; 0 means perfect separation.
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError("c_miss and c_fa must be > 0")
    sw = sweep(tar, non)
    cost = c_miss * p_target * sw.frr + c_fa * (1.0 - p_target) * sw.far
    cost /= min(c_miss * p_target, c_fa * (1.0 - p_target))
    k = int(np.argmin(cost))
    return DCF(float(cost[k]), float(sw.thresholds[k]), p_target)


def rates_at(tar: ArrayLike, non: ArrayLike, threshold: float) -> tuple[float, float]:
    """(FAR, FRR) at ``threshold`` (accept when score >= threshold)."""
    t, n = _both(tar, non)
    return float(np.mean(n >= threshold)), float(np.mean(t < threshold))


@dataclass(frozen=True)
class FarThreshold:
    """The lowest threshold whose FAR on the non-targets is ≤ ``target_far``."""

    threshold: float
    far: float  # FAR measured at ``threshold`` (≤ target_far)
    target_far: float
    resolvable: bool  # False when there are fewer than 1 / target_far non-targets


def threshold_for_far(non: ArrayLike, target_far: float) -> FarThreshold:
    """Lowest threshold with measured FAR ≤ ``target_far``.

    With non-targets sorted descending, at most ``k = floor(target_far · n)`` may be
    accepted, so the threshold must sit above the (k+1)-th highest score ``v``: it is the
    midpoint between ``v`` and the next higher distinct score (or just above ``v`` when
    none is higher). Any threshold ≤ ``v`` accepts k+1 or more.
    """
    n = _scores(non, "non-target")
    if n.size == 0:
        raise ValueError("need non-target trials")
    if not 0.0 <= target_far <= 1.0:
        raise ValueError(f"target FAR must be in [0, 1], got {target_far}")
    desc = np.sort(n)[::-1]
    k = int(np.floor(target_far * n.size + 1e-9))
    if k >= n.size:
        t = float(desc[-1])  # accept everything
    else:
        v = desc[k]
        higher = desc[:k][desc[:k] > v]
        t = float((v + higher[-1]) / 2.0) if higher.size else float(np.nextafter(v, np.inf))
    far = float(np.mean(n >= t))
    return FarThreshold(t, far, target_far, resolvable=target_far * n.size >= 1.0)


def det_points(tar: ArrayLike, non: ArrayLike) -> tuple[F64, F64]:
    """(FAR, FRR) of every operating point, for a DET curve."""
    sw = sweep(tar, non)
    return sw.far, sw.frr


def identification(
    scores: ArrayLike, truth: ArrayLike, ks: tuple[int, ...] = (1, 5)
) -> dict[int, float]:
    """Closed-set identification: fraction of rows of ``scores`` [T, N] whose true column
    ``truth[i]`` is among the ``k`` highest, for each k (k is capped at N)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(truth, dtype=np.int64).reshape(-1)
    if s.ndim != 2 or s.shape[0] != y.size:
        raise ValueError(f"scores {s.shape} do not match {y.size} labels")
    if y.size == 0:
        raise ValueError("no test utterances to identify")
    true = s[np.arange(y.size), y]
    rank = (s > true[:, None]).sum(axis=1)  # 0 = best (ties count in its favour)
    return {k: float(np.mean(rank < k)) for k in ks}
