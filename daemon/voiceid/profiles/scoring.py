"""Verify (1:1) and identify (1:N) against enrolled profiles of one model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from voiceid.errors import ProfileError
from voiceid.profiles.index import ProfileIndex
from voiceid.profiles.model import Profile
from voiceid.profiles.store import ProfileStore

Vector = NDArray[np.float32]


@dataclass(frozen=True)
class Verification:
    name: str
    score: float  # cosine
    threshold: float
    accepted: bool


@dataclass(frozen=True)
class Match:
    name: str
    score: float


@dataclass(frozen=True)
class Identification:
    decision: str | None  # best name, or None (unknown) below threshold
    threshold: float
    matches: tuple[Match, ...]  # best first


def require_same_model(profile: Profile, fingerprint: str, model_name: str) -> None:
    if profile.fingerprint != fingerprint:
        raise ProfileError(
            f"profile {profile.name!r} was enrolled with model {profile.model_name} "
            f"(fingerprint {profile.fingerprint}), not {model_name} ({fingerprint})",
            hint=f"re-enroll {profile.name!r} with model {model_name}, or use --model "
            f"{profile.model_name}",
        )


def verify(
    store: ProfileStore, name: str, embedding: Vector, *, fingerprint: str, model_name: str,
    threshold: float,
) -> Verification:
    """Score ``embedding`` against the centroid of profile ``name`` (1:1)."""
    profile = store.get(name)
    require_same_model(profile, fingerprint, model_name)
    score = float(np.dot(profile.centroid, embedding))
    return Verification(profile.name, score, threshold, score >= threshold)


def identify(  # 1:N
    index: ProfileIndex, embedding: Vector, *, threshold: float, top_k: int = 5
) -> Identification:
    if len(index) == 0:
        raise ProfileError(
            "no profiles enrolled with this model",
            hint="enroll someone first: voiceid enroll NAME FILE...",
        )
    top = index.top_k(embedding, top_k)
    matches = tuple(Match(n, round(float(s), 6)) for n, s in top)
    decision = matches[0].name if matches and matches[0].score >= threshold else None
    return Identification(decision, threshold, matches)
