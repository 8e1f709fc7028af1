"""Enrollment sessions: collect utterances one by one with quality feedback, then commit.

The API every front door uses (CLI, WebSocket, REST): ``start`` -> ``add_audio`` /
``add_embedding`` (each returns feedback + progress) -> ``finish`` (one atomic
commit) or ``cancel``. Rejected utterances never count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from voiceid.audio.vad import frame_dbfs, voice_flags
from voiceid.errors import AudioError, ProfileError
from voiceid.models.embedder import Embedder
from voiceid.profiles.model import Profile, Utterance, centroid, check_name
from voiceid.profiles.store import ProfileStore

Vector = NDArray[np.float32]


class Feedback(StrEnum):
    OK = "ok"
    TOO_SHORT = "too_short"  # less speech than min_utterance_speech_s after VAD
    NO_VOICE = "no_voice"  # (almost) no speech at all
    CLIPPING = "clipping"  # too many samples at full scale
    TOO_QUIET = "too_quiet"  # speech level below min_level_dbfs
    INCONSISTENT = "inconsistent"  # far from the utterances so far: another speaker?


@dataclass(frozen=True)
class EnrollmentPolicy:
    """When an enrollment is good enough (defaults justified in docs/enrollment.md)."""

    min_utterances: int = 3
    min_total_speech_s: float = 10.0  # seconds of VAD speech over accepted utterances
    min_utterance_speech_s: float = 1.5  # seconds; below: too_short
    no_voice_s: float = 0.3  # seconds; below: no_voice
    max_clipped_fraction: float = 0.002  # of samples with |x| >= 0.999
    min_level_dbfs: float = -40.0  # median level of voiced 30 ms frames
    consistency: float | None = None  # cosine to running centroid; None: the model threshold


@dataclass(frozen=True)
class Progress:
    collected_s: float  # speech seconds accepted so far
    required_s: float
    utterances: int  # accepted utterances
    required_utterances: int
    percent: int  # 0..100, the lesser of the two requirements
    complete: bool


@dataclass(frozen=True)
class AddResult:
    accepted: bool
    feedback: tuple[Feedback, ...]  # (OK,) when accepted
    speech_s: float
    level_dbfs: float | None
    consistency: float | None  # cosine to the running centroid, when there was one
    progress: Progress

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["feedback"] = [str(f) for f in self.feedback]
        return d


@dataclass(frozen=True)
class AudioQuality:
    """What an utterance sounds like, before any embedding."""

    speech_s: float
    level_dbfs: float | None  # median level of voiced frames
    clipped_fraction: float


def assess(samples: Vector) -> AudioQuality:
    """VAD speech seconds, speech level and clipping of a 16 kHz float32 clip."""
    flags = voice_flags(samples)
    levels = frame_dbfs(samples, 480)[: len(flags)]
    voiced = levels[flags]
    level = float(np.median(voiced)) if len(voiced) else None
    clipped = float(np.mean(np.abs(samples) >= 0.999)) if len(samples) else 0.0
    return AudioQuality(float(flags.sum()) * 0.030, level, clipped)


@dataclass
class EnrollmentSession:
    """One person's enrollment in progress (not thread-safe; one owner)."""

    name: str
    store: ProfileStore
    fingerprint: str
    model_name: str
    threshold: float  # model decision threshold; default consistency bar
    embedder: Embedder | None = None
    policy: EnrollmentPolicy = field(default_factory=EnrollmentPolicy)
    replace: bool = False  # re-enroll an existing profile
    utterances: list[Utterance] = field(default_factory=list)
    closed: bool = False

    @classmethod
    def start(
        cls,
        name: str,
        store: ProfileStore,
        embedder: Embedder,
        *,
        threshold: float,
        policy: EnrollmentPolicy | None = None,
        replace: bool = False,
    ) -> EnrollmentSession:
        name = check_name(name)
        if not replace and name in store:
            raise ProfileError(
                f"a profile named {name!r} already exists",
                hint="choose another name, delete it first, or re-enroll with --replace",
            )
        return cls(
            name=name,
            store=store,
            fingerprint=embedder.fingerprint,
            model_name=embedder.card.name,
            threshold=threshold,
            embedder=embedder,
            policy=policy or EnrollmentPolicy(),
            replace=replace,
        )

    # -- progress ---------------------------------------------------------------
    def progress(self) -> Progress:
        p = self.policy
        got_s = sum(u.speech_s for u in self.utterances)
        n = len(self.utterances)
        frac = min(got_s / p.min_total_speech_s if p.min_total_speech_s else 1.0,
                   n / p.min_utterances if p.min_utterances else 1.0, 1.0)
        return Progress(
            collected_s=round(got_s, 2),
            required_s=p.min_total_speech_s,
            utterances=n,
            required_utterances=p.min_utterances,
            percent=int(frac * 100),
            complete=got_s >= p.min_total_speech_s and n >= p.min_utterances,
        )

    def _running_centroid(self) -> Vector | None:
        if not self.utterances:
            return None
        return centroid([u.embedding for u in self.utterances])

    def _check_open(self) -> None:
        if self.closed:
            raise ProfileError(f"enrollment of {self.name!r} is already finished or cancelled")

    # -- adding utterances --------------------------------------------------------
    def add_audio(self, samples: Vector, source: str = "") -> AddResult:
        """Judge a clip (16 kHz float32), embed it if it is good, and count it."""
        self._check_open()
        if self.embedder is None:
            raise ProfileError("this enrollment session takes embeddings only")
        q = assess(np.asarray(samples, dtype=np.float32))
        p = self.policy
        problems: list[Feedback] = []
        if q.speech_s < p.no_voice_s:
            problems.append(Feedback.NO_VOICE)
        elif q.speech_s < p.min_utterance_speech_s:
            problems.append(Feedback.TOO_SHORT)
        if q.clipped_fraction > p.max_clipped_fraction:
            problems.append(Feedback.CLIPPING)
        if q.level_dbfs is not None and q.level_dbfs < p.min_level_dbfs:
            problems.append(Feedback.TOO_QUIET)
        if problems:
            return AddResult(False, tuple(problems), q.speech_s, q.level_dbfs, None,
                             self.progress())
        try:
            emb = self.embedder.embed(samples, where=source or "utterance")
        except AudioError:
            return AddResult(False, (Feedback.NO_VOICE,), q.speech_s, q.level_dbfs, None,
                             self.progress())
        return self._add(emb, q.speech_s, source, q.level_dbfs)

    def add_embedding(self, embedding: Vector, speech_s: float, source: str = "") -> AddResult:
        """Count a ready embedding (computed elsewhere with the same model)."""
        self._check_open()
        emb = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(emb)) or float(np.linalg.norm(emb)) == 0.0:
            raise ProfileError("embedding has NaN/Inf or is all zeros")
        if speech_s < self.policy.min_utterance_speech_s:
            return AddResult(False, (Feedback.TOO_SHORT,), speech_s, None, None,
                             self.progress())
        return self._add(emb / np.linalg.norm(emb), speech_s, source, None)

    def _add(self, emb: Vector, speech_s: float, source: str, level: float | None) -> AddResult:
        bar = self.policy.consistency if self.policy.consistency is not None else self.threshold
        center = self._running_centroid()
        score = None if center is None else float(np.dot(center, emb))
        if score is not None and score < bar:
            return AddResult(False, (Feedback.INCONSISTENT,), speech_s, level, score,
                             self.progress())
        self.utterances.append(Utterance(emb.astype(np.float32), float(speech_s), source))
        return AddResult(True, (Feedback.OK,), speech_s, level, score, self.progress())

    # -- ending -------------------------------------------------------------------
    def finish(self, metadata: dict[str, str] | None = None) -> Profile:
        """Commit the profile in one transaction; refuses an incomplete enrollment."""
        self._check_open()
        prog = self.progress()
        if not prog.complete:
            raise ProfileError(
                f"enrollment of {self.name!r} is incomplete: {prog.utterances}/"
                f"{prog.required_utterances} utterances, {prog.collected_s:.1f}/"
                f"{prog.required_s:.0f} s of speech",
                hint="add more utterances (longer speech) before finishing",
            )
        if self.replace and self.name in self.store:
            profile = self.store.replace_utterances(
                self.name, self.utterances, fingerprint=self.fingerprint,
                model_name=self.model_name,
            )
        else:
            profile = self.store.add(
                self.name, self.fingerprint, self.model_name, self.utterances, metadata
            )
        self.closed = True
        return profile

    def cancel(self) -> None:
        """Discard everything collected; nothing was written."""
        self.utterances.clear()
        self.closed = True
