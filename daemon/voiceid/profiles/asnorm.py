"""Adaptive symmetric score normalisation (AS-norm) against a cohort of other speakers.

For an enrollment ``e`` and a test embedding ``t`` with cosine ``s``::

    s' = 0.5 * ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t)

where ``mu_e, sigma_e`` are the mean and standard deviation of the ``top_n`` highest
cosines of ``e`` with the cohort embeddings, and ``mu_t, sigma_t`` the same for ``t``
(Matejka et al., Interspeech 2017; WeSpeaker uses VoxCeleb2-dev speaker means, top 300).
The result is a z-score-like number, **not a cosine**: thresholds must be measured on
normalised scores (``voiceid eval --norm asnorm``).

The cohort must be speakers that are neither enrolled nor tested, embedded with the same
model: :func:`save_cohort` stores the model fingerprint and :func:`load_cohort` refuses a
cohort of another model.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from voiceid.errors import ConfigError, ProfileError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

COHORT_FORMAT = "voiceid-cohort"
COHORT_VERSION = 1
#: sigma below this is treated as this (a degenerate cohort must not divide by zero)
MIN_SIGMA = 1e-4


def _unit_rows(x: npt.ArrayLike, what: str) -> F32:
    m = np.asarray(x, dtype=np.float32)
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise ProfileError(f"{what} must be a non-empty [M, D] matrix, got shape {m.shape}")
    if not bool(np.isfinite(m).all()):
        raise ProfileError(f"{what} contains NaN or infinite values")
    norms = np.linalg.norm(m.astype(np.float64), axis=1, keepdims=True)
    if bool((norms <= 1e-6).any()):
        raise ProfileError(f"{what} contains all-zero rows")
    return np.ascontiguousarray(m / norms, dtype=np.float32)


def cohort_stats(emb: npt.ArrayLike, cohort: F32, top_n: int) -> tuple[F64, F64]:
    """(mean, std) of the ``top_n`` highest cosines of each row of ``emb`` [B, D] with
    the ``cohort`` [M, D] (top_n capped at M); std floored at :data:`MIN_SIGMA`."""
    q = np.asarray(emb, dtype=np.float32)
    if q.ndim != 2:
        raise ValueError(f"expected [B, D] embeddings, got shape {q.shape}")
    if q.shape[0] == 0:
        return np.zeros(0), np.ones(0)
    s = q @ cohort.T  # [B, M]
    return topn_stats(s, top_n)


def topn_stats(cohort_scores: npt.ArrayLike, top_n: int) -> tuple[F64, F64]:
    """(mean, std) over the ``top_n`` highest values of each row of ``cohort_scores``."""
    s = np.asarray(cohort_scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"expected [B, M] cohort scores with M > 0, got shape {s.shape}")
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    k = min(int(top_n), s.shape[1])
    top = s if k == s.shape[1] else np.partition(s, s.shape[1] - k, axis=1)[:, -k:]
    return top.mean(axis=1), np.maximum(top.std(axis=1), MIN_SIGMA)


def asnorm(
    raw: npt.ArrayLike,
    enroll_stats: tuple[F64, F64],
    test_stats: tuple[F64, F64],
) -> F64:
    """Normalise raw scores [B, N] (test rows, enrollment columns) with enrollment stats
    ([N] each) and test stats ([B] each)."""
    s = np.asarray(raw, dtype=np.float64)
    mu_e, sd_e = enroll_stats
    mu_t, sd_t = test_stats
    return 0.5 * ((s - mu_e[None, :]) / sd_e[None, :] + (s - mu_t[:, None]) / sd_t[:, None])


class _Index(Protocol):
    """What the scorer needs of a :class:`~voiceid.profiles.index.ProfileIndex`."""

    @property
    def names(self) -> list[str]: ...

    @property
    def matrix(self) -> F32: ...


@dataclass
class _EnrollCache:
    key: object
    names: list[str]
    matrix: F32
    mu: F64
    sd: F64


class ASNormScorer:
    """A ``Scorer`` (``.names``, ``.scores``) giving AS-normalised scores of an index.

    Enrollment-side statistics are computed once per state of the index and reused until
    the index changes (a profile added, replaced or removed). Thread-safe.
    """

    def __init__(self, index: _Index, cohort: npt.ArrayLike, top_n: int = 300) -> None:
        if top_n < 1:
            raise ConfigError(f"cohort top_n must be >= 1, got {top_n}")
        self.index = index
        self.cohort = _unit_rows(cohort, "cohort")
        if self.cohort.shape[0] < 2:
            raise ProfileError(
                f"a cohort needs at least 2 embeddings, got {self.cohort.shape[0]}",
                hint="build it from more speakers: voiceid cohort build DIR -o FILE",
            )
        self.top_n = int(top_n)
        self._lock = threading.Lock()
        self._cache: _EnrollCache | None = None
        self.updates = 0  # times the enrollment statistics were (re)computed

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (the daemon sends its scorer to worker processes): no lock, no cache."""
        state = dict(vars(self))
        del state["_lock"]
        state["_cache"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state)
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return self._enrolled().names

    def _state(self) -> tuple[object, list[str], F32]:
        """(key, names, centroids) of one consistent state of the index.

        A :class:`ProfileIndex` replaces its internal snapshot object on every change, so
        that object is an exact, cheap key (read twice to be sure names and matrix come
        from the same one). Other indexes are keyed by their content.
        """
        index: Any = self.index
        for _ in range(100):
            snap = getattr(index, "_snap", None)
            names, matrix = list(index.names), np.asarray(index.matrix, dtype=np.float32)
            if snap is None:
                key = (tuple(names), matrix.shape, hash(matrix.tobytes()))
                return key, names, matrix
            if getattr(index, "_snap", None) is snap:
                return snap, names, matrix
        raise RuntimeError("profile index kept changing while being read")

    def _enrolled(self) -> _EnrollCache:
        key, names, matrix = self._state()
        cache = self._cache
        if cache is not None and (
            cache.key is key or (isinstance(key, tuple) and cache.key == key)
        ):
            return cache
        with self._lock:
            if len(names) and matrix.shape[1] != self.cohort.shape[1]:
                raise ProfileError(
                    f"cohort has dimension {self.cohort.shape[1]}, profiles have {matrix.shape[1]}",
                    hint="build the cohort with the same model as the profiles",
                )
            if names:
                mu, sd = cohort_stats(matrix, self.cohort, self.top_n)
            else:
                mu, sd = np.zeros(0), np.ones(0)
                matrix = np.zeros((0, self.cohort.shape[1]), np.float32)
            cache = _EnrollCache(key, names, matrix, mu, sd)
            self._cache = cache
            self.updates += 1
            return cache

    def scores(self, emb: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """AS-normalised scores: ``[B, D] -> [B, N]`` (``[D] -> [N]``), :attr:`names` order."""
        q = np.asarray(emb, dtype=np.float32)
        single = q.ndim == 1
        if single:
            q = q[None, :]
        if q.ndim != 2:
            raise ValueError(f"expected [B, D] embeddings, got shape {q.shape}")
        enrolled = self._enrolled()
        n = len(enrolled.names)
        if n == 0:
            out = np.zeros((q.shape[0], 0), dtype=np.float32)
            return out[0] if single else out
        if q.shape[1] != enrolled.matrix.shape[1]:
            raise ProfileError(
                f"query has dimension {q.shape[1]}, profiles have {enrolled.matrix.shape[1]}"
            )
        raw = q @ enrolled.matrix.T
        norm = asnorm(raw, (enrolled.mu, enrolled.sd), cohort_stats(q, self.cohort, self.top_n))
        out = norm.astype(np.float32)
        return out[0] if single else out


# ------------------------------------------------------------------------- cohort files


@dataclass(frozen=True)
class Cohort:
    """Cohort embeddings [M, D] (unit rows) and where they came from."""

    embeddings: F32
    fingerprint: str
    model: str = ""
    kind: str = "speaker-means"  # or "utterances"
    speakers: list[str] = field(default_factory=list)
    files_sha256: list[str] = field(default_factory=list)
    source: str = ""


def save_cohort(path: str | Path, cohort: Cohort) -> Path:
    """Write ``cohort`` as an ``.npz`` (no pickles), atomically."""
    p = Path(path)
    emb = _unit_rows(cohort.embeddings, "cohort")
    meta = {
        "format": COHORT_FORMAT,
        "version": COHORT_VERSION,
        "fingerprint": cohort.fingerprint,
        "model": cohort.model,
        "kind": cohort.kind,
        "dim": int(emb.shape[1]),
        "count": int(emb.shape[0]),
        "speakers": list(cohort.speakers),
        "files_sha256": list(cohort.files_sha256),
        "source": cohort.source,
    }
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".npz", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, embeddings=emb, meta=np.array(json.dumps(meta)))
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


def read_cohort(path: str | Path) -> Cohort:
    """Read a cohort file written by :func:`save_cohort` (any model)."""
    p = Path(path)
    hint = "build one with `voiceid cohort build DIR --model MODEL -o FILE`"
    if not p.is_file():
        raise ConfigError(f"cohort file {p} not found", hint=hint)
    try:
        loaded = np.load(p, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a bare array, without the model it was built with")
        with loaded as data:
            emb = np.asarray(data["embeddings"])
            meta = json.loads(str(data["meta"][()]))
    except (OSError, ValueError, KeyError, EOFError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{p} is not a voiceid cohort file ({exc})", hint=hint) from None
    if not isinstance(meta, dict) or meta.get("format") != COHORT_FORMAT:
        raise ProfileError(f"{p} is not a voiceid cohort file", hint=hint)
    if int(meta.get("version", 0)) > COHORT_VERSION:
        raise ProfileError(
            f"cohort {p} has format version {meta.get('version')}, this voiceid reads "
            f"up to {COHORT_VERSION}",
            hint="upgrade voiceid or rebuild the cohort",
        )
    return Cohort(
        embeddings=_unit_rows(emb, f"cohort {p}"),
        fingerprint=str(meta.get("fingerprint", "")),
        model=str(meta.get("model", "")),
        kind=str(meta.get("kind", "")),
        speakers=[str(s) for s in meta.get("speakers", [])],
        files_sha256=[str(s) for s in meta.get("files_sha256", [])],
        source=str(meta.get("source", "")),
    )


def check_cohort(cohort: Cohort, fingerprint: str, *, path: str | Path = "cohort") -> None:
    """Raise :class:`ProfileError` unless ``cohort`` was built with model ``fingerprint``."""
    if cohort.fingerprint != fingerprint:
        model = cohort.model or "another model"
        raise ProfileError(
            f"cohort {path} was built with {model} (fingerprint {cohort.fingerprint}); "
            f"the loaded model has fingerprint {fingerprint}",
            hint=f"rebuild it: voiceid cohort build DIR --model <this model> -o {path}",
        )


def load_cohort(path: str | Path, fingerprint: str) -> F32:
    """Cohort embeddings [M, D] of ``path``; :class:`ProfileError` if another model built it."""
    cohort = read_cohort(path)
    check_cohort(cohort, fingerprint, path=path)
    return cohort.embeddings


def speaker_means(embeddings: Sequence[F32] | F32, labels: Sequence[str]) -> tuple[F32, list[str]]:
    """One unit-norm mean embedding per label (labels in first-seen order)."""
    rows = np.asarray(embeddings, dtype=np.float32)
    order: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        order.setdefault(lab, []).append(i)
    means = np.stack([rows[idx].astype(np.float64).mean(axis=0) for idx in order.values()])
    return _unit_rows(means, "speaker means"), list(order)
