"""Verify (1:1) and identify (1:N) against enrolled profiles of one model.

Scores are cosine similarities between a unit-norm utterance embedding and a
profile's unit-norm centroid; a decision accepts when ``score >= threshold``.
Profiles enrolled with another model (another fingerprint) are never scored:
their embeddings live in another space, so a score would be meaningless. The
error says which model to re-enroll with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from voiceid.errors import ProfileError
from voiceid.profiles.index import ProfileIndex
from voiceid.profiles.model import Profile, ProfileSummary
from voiceid.profiles.store import ProfileStore

Vector = NDArray[np.float32]


@dataclass(frozen=True)
class Verification:
    name: str
    score: float  # cosine
    threshold: float
    accepted: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "score": round(self.score, 6),
            "threshold": self.threshold,
            "accepted": self.accepted,
        }


@dataclass(frozen=True)
class Match:
    name: str
    score: float


@dataclass(frozen=True)
class Identification:
    decision: str | None  # best name, or None (unknown) below threshold
    threshold: float
    matches: tuple[Match, ...]  # best first

    def as_dict(self) -> dict[str, object]:
        return {
            "decision": self.decision,
            "threshold": self.threshold,
            "matches": [{"name": m.name, "score": round(m.score, 6)} for m in self.matches],
        }


def require_same_model(
    profile: Profile | ProfileSummary, fingerprint: str, model_name: str
) -> None:
    """``ProfileError`` unless ``profile`` was enrolled with the model ``fingerprint``."""
    if profile.fingerprint != fingerprint:
        raise ProfileError(
            f"profile {profile.name!r} was enrolled with model {profile.model_name} "
            f"(fingerprint {profile.fingerprint}), not {model_name} ({fingerprint}): "
            "its scores would be meaningless",
            hint=f"re-enroll {profile.name} with model {model_name}: voiceid enroll --replace "
            f"--model {model_name} {profile.name} FILE...; or score with --model "
            f"{profile.model_name}",
        )


def _unit(embedding: Vector, dim: int) -> Vector:
    q = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if q.shape[0] != dim:
        raise ProfileError(f"embedding has dimension {q.shape[0]}, the profile {dim}")
    norm = float(np.linalg.norm(q.astype(np.float64)))
    if not np.isfinite(norm) or norm == 0.0:
        raise ProfileError("embedding has NaN/Inf or is all zeros")
    return (q / np.float32(norm)).astype(np.float32)


def score(profile: Profile | ProfileSummary, embedding: Vector) -> float:
    """Cosine of an embedding with the profile's centroid."""
    return float(np.dot(profile.centroid, _unit(embedding, profile.dim)))


def verify(
    store: ProfileStore,
    name: str,
    embedding: Vector,
    *,
    fingerprint: str,
    model_name: str,
    threshold: float,
) -> Verification:
    """Score ``embedding`` against the centroid of profile ``name`` (1:1)."""
    profile = store.get(name)
    require_same_model(profile, fingerprint, model_name)
    s = score(profile, embedding)
    return Verification(profile.name, s, threshold, s >= threshold)


def require_profiles(index: ProfileIndex) -> None:
    """``ProfileError`` when ``index`` holds no profile: nobody enrolled yet, or
    only with other models (then it names them and says to re-enroll)."""
    if len(index) > 0:
        return
    foreign = index.foreign
    if foreign:
        model = index.model_name or f"fingerprint {index.fingerprint}"
        shown = ", ".join(f"{f.name} ({f.model_name})" for f in foreign[:5])
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise ProfileError(
            f"no profiles enrolled with model {model}; enrolled with other models: {shown}{more}",
            hint=f"re-enroll them with {model}, or identify with their model (--model)",
        )
    raise ProfileError(
        "no profiles enrolled yet",
        hint="enroll someone first: voiceid enroll NAME FILE...",
    )


def identify(  # 1:N
    index: ProfileIndex, embedding: Vector, *, threshold: float, top_k: int = 5
) -> Identification:
    """The ``top_k`` best profiles for ``embedding``; ``decision`` is the best
    one when it reaches ``threshold``, else ``None`` (an unknown speaker)."""
    if top_k < 1:
        raise ProfileError(f"top_k must be >= 1, got {top_k}")
    require_profiles(index)
    dim = index.dim
    q = _unit(embedding, dim if dim is not None else np.asarray(embedding).size)
    top = index.top_k(q, top_k)
    matches = tuple(Match(n, float(s)) for n, s in top)
    decision = matches[0].name if matches and matches[0].score >= threshold else None
    return Identification(decision, threshold, matches)
