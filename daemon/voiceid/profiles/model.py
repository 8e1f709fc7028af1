"""Enrolled-profile value types and the centroid rule.

A profile is a named speaker enrolled with one embedding model. The model is
identified by its ``fingerprint`` (a string that changes whenever the embeddings
it produces would change); scores are only meaningful between embeddings of the
same fingerprint.

All arrays held by these types are float32, C-contiguous, 1-D and read-only, so a
frozen instance really is immutable and can be shared between threads.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from voiceid.errors import ProfileError

Vector = npt.NDArray[np.float32]

#: Embeddings whose L2 norm is below this are treated as zero (unusable).
MIN_NORM = 1e-6


def as_vector(value: Any, *, what: str = "embedding") -> Vector:
    """A read-only, contiguous float32 copy of a 1-D array-like."""
    try:
        arr = np.array(value, dtype=np.float32, copy=True, order="C")
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"{what} is not a numeric vector: {exc}") from None
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ProfileError(f"{what} must be a non-empty 1-D vector, got shape {arr.shape}")
    arr.setflags(write=False)
    return arr


def check_vector(vec: Vector, *, what: str = "embedding", dim: int | None = None) -> float:
    """Check that ``vec`` is finite, non-zero and of ``dim``; return its L2 norm."""
    if dim is not None and vec.shape[0] != dim:
        raise ProfileError(f"{what} has dimension {vec.shape[0]}, expected {dim}")
    if not bool(np.isfinite(vec).all()):
        raise ProfileError(f"{what} contains NaN or infinite values")
    norm = float(np.linalg.norm(vec.astype(np.float64)))
    if not norm > MIN_NORM:
        raise ProfileError(f"{what} is all zeros (norm {norm:.3g})")
    return norm


def centroid(embeddings: Iterable[npt.ArrayLike] | npt.NDArray[Any]) -> Vector:
    """Mean of the L2-normalised embeddings, renormalised to unit norm (float32).

    ``embeddings`` is a 2-D array ``[n, D]`` or an iterable of 1-D vectors of the
    same dimension. Raises ``ProfileError`` for no embeddings, mixed dimensions,
    non-finite or all-zero vectors, or embeddings that cancel out.
    """
    rows = [as_vector(e) for e in embeddings]
    if not rows:
        raise ProfileError("cannot compute a centroid from no embeddings")
    dim = rows[0].shape[0]
    acc = np.zeros(dim, dtype=np.float64)
    for i, row in enumerate(rows):
        norm = check_vector(row, what=f"embedding {i}", dim=dim)
        acc += row.astype(np.float64) / norm
    acc /= len(rows)
    total = float(np.linalg.norm(acc))
    if not total > MIN_NORM:
        raise ProfileError(
            "the enrollment embeddings cancel out (their mean is zero)",
            hint="enroll again with more, cleaner speech",
        )
    out = (acc / total).astype(np.float32)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Utterance:
    """One enrollment utterance: its embedding (as produced by the model, not
    necessarily unit-norm), seconds of speech it came from, and a free-form
    ``source`` (file name, "mic", ...)."""

    embedding: Vector
    speech_s: float
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "embedding", as_vector(self.embedding))
        object.__setattr__(self, "speech_s", float(self.speech_s))
        object.__setattr__(self, "source", str(self.source))

    @property
    def dim(self) -> int:
        return int(self.embedding.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Utterance):
            return NotImplemented
        return (
            self.speech_s == other.speech_s
            and self.source == other.source
            and np.array_equal(self.embedding, other.embedding)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class Profile:
    """An enrolled speaker. ``centroid`` is :func:`centroid` of the utterances'
    embeddings (unit norm); ``created``/``updated`` are unix seconds."""

    id: str
    name: str
    fingerprint: str
    model_name: str
    centroid: Vector
    utterances: tuple[Utterance, ...]
    created: float
    updated: float
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "centroid", as_vector(self.centroid, what="centroid"))
        object.__setattr__(self, "utterances", tuple(self.utterances))
        object.__setattr__(self, "metadata", dict(self.metadata))

    @property
    def dim(self) -> int:
        return int(self.centroid.shape[0])

    @property
    def speech_s(self) -> float:
        """Total seconds of enrollment speech."""
        return float(sum(u.speech_s for u in self.utterances))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Profile):
            return NotImplemented
        return (
            self.id == other.id
            and self.name == other.name
            and self.fingerprint == other.fingerprint
            and self.model_name == other.model_name
            and self.created == other.created
            and self.updated == other.updated
            and self.metadata == other.metadata
            and self.utterances == other.utterances
            and np.array_equal(self.centroid, other.centroid)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class ProfileSummary:
    """A profile without its utterances (what :meth:`ProfileStore.list` returns):
    enough to build a :class:`~voiceid.profiles.index.ProfileIndex` or print a table."""

    id: str
    name: str
    fingerprint: str
    model_name: str
    centroid: Vector
    n_utterances: int
    speech_s: float
    created: float
    updated: float
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "centroid", as_vector(self.centroid, what="centroid"))
        object.__setattr__(self, "metadata", dict(self.metadata))

    @property
    def dim(self) -> int:
        return int(self.centroid.shape[0])

    @classmethod
    def of(cls, profile: Profile) -> ProfileSummary:
        return cls(
            id=profile.id,
            name=profile.name,
            fingerprint=profile.fingerprint,
            model_name=profile.model_name,
            centroid=profile.centroid,
            n_utterances=len(profile.utterances),
            speech_s=profile.speech_s,
            created=profile.created,
            updated=profile.updated,
            metadata=profile.metadata,
        )


MAX_NAME_LEN = 100
_HEX = frozenset("0123456789abcdef")


def looks_like_id(value: str) -> bool:
    """True for a profile id: 32 lowercase hex digits (``uuid4().hex``)."""
    return len(value) == 32 and set(value) <= _HEX


def check_name(name: str) -> str:
    """A valid profile name (surrounding whitespace stripped) or ``ProfileError``.

    Names are 1-100 characters without control characters, and must not look like
    a profile id (32 hex digits), so ``get(name_or_id)`` is never ambiguous.
    """
    if not isinstance(name, str):
        raise ProfileError(f"profile name must be a string, got {type(name).__name__}")
    name = name.strip()
    if not name:
        raise ProfileError("profile name is empty")
    if len(name) > MAX_NAME_LEN:
        raise ProfileError(f"profile name is longer than {MAX_NAME_LEN} characters: {name!r}")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise ProfileError(f"profile name contains control characters: {name!r}")
    if looks_like_id(name.lower()):
        raise ProfileError(
            f"profile name {name!r} looks like a profile id (32 hex digits)",
            hint="choose a name with other characters",
        )
    return name


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """A copy of ``metadata``; keys and values must be strings."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ProfileError(f"metadata must be a mapping of strings, got {type(metadata).__name__}")
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ProfileError(
                f"metadata must map strings to strings, got {key!r}: {value!r}",
            )
        out[key] = value
    return out
