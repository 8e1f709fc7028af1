"""Enrollment sessions: collect utterances one by one with quality feedback, then commit.

The API every front door uses (CLI, WebSocket, REST): ``start`` -> ``add_audio`` /
``add_embedding`` (each returns feedback + progress) -> ``finish`` (one atomic
commit) or ``cancel``. Rejected utterances never count; nothing is written before
``finish``. The policy defaults are justified with measurements in
``docs/enrollment.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from voiceid.audio.vad import frame_dbfs, voice_flags
from voiceid.errors import AudioError, ConfigError, ProfileError
from voiceid.models.embedder import Embedder
from voiceid.profiles.model import Profile, Utterance, centroid, check_metadata, check_name
from voiceid.profiles.store import ProfileStore

Vector = NDArray[np.float32]

SAMPLE_RATE = 16000
FRAME = 480  # samples per 30 ms analysis frame (the VAD's window)
FRAME_S = FRAME / SAMPLE_RATE
CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped (full scale)
SILENCE_DBFS = -100.0  # loudest frame below this: digital silence, nothing to look for
#: Quiet-speech probe: gain that brings the 95th-percentile frame level to this (dBFS).
PROBE_DBFS = -26.0
#: The spread of 30 ms frame levels (95th - 10th percentile, dB) below which a clip is
#: stationary sound (hum, hiss, rumble: 0-4.3 dB measured), not speech, which comes and
#: goes syllable by syllable (>= 8.7 dB even in 1 s of continuous speech, >= 17 dB in
#: whole utterances; see docs/enrollment.md). webrtcvad alone calls loud hum or hiss speech.
MIN_DYNAMIC_DB = 6.0


class Feedback(StrEnum):
    """Why an utterance was (not) counted. Stable strings: clients switch on them."""

    OK = "ok"
    NO_VOICE = "no_voice"  # (almost) no speech at all: silence, noise
    TOO_QUIET = "too_quiet"  # speech, but its level is below min_level_dbfs
    CLIPPING = "clipping"  # too many samples at full scale
    TOO_SHORT = "too_short"  # less speech than min_utterance_speech_s
    INCONSISTENT = "inconsistent"  # far from the utterances so far: another speaker?
    DUPLICATE = "duplicate"  # the same recording as an accepted utterance


#: One line of advice per feedback code (what the user should do).
ADVICE: dict[Feedback, str] = {
    Feedback.OK: "accepted",
    Feedback.NO_VOICE: "no speech found: check the microphone or file",
    Feedback.TOO_QUIET: "speech is too quiet: speak louder, move closer or raise the input gain",
    Feedback.CLIPPING: "the recording clips: lower the input gain or move back",
    Feedback.TOO_SHORT: "too little speech: say a longer sentence",
    Feedback.INCONSISTENT: (
        "does not sound like the utterances so far: only the enrolling person should speak"
    ),
    Feedback.DUPLICATE: "this recording was already counted: record a new sentence",
}


@dataclass(frozen=True)
class EnrollmentPolicy:
    """When an enrollment is good enough (defaults justified in docs/enrollment.md)."""

    min_utterances: int = 3
    min_total_speech_s: float = 10.0  # seconds of VAD speech over accepted utterances
    min_utterance_speech_s: float = 1.0  # seconds; below: too_short
    no_voice_s: float = 0.3  # seconds; below: no_voice (the embedder's own minimum)
    max_clipped_fraction: float = 0.002  # of samples with |x| >= 0.999
    min_level_dbfs: float = -45.0  # median level of voiced 30 ms frames
    consistency: float | None = None  # cosine to running centroid; None: the model threshold
    duplicate_cosine: float = 0.995  # at or above this to an accepted utterance: duplicate

    def __post_init__(self) -> None:
        def bad(what: str) -> ConfigError:
            return ConfigError(f"enrollment policy: {what}")

        if self.min_utterances < 1:
            raise bad(f"min_utterances must be >= 1, got {self.min_utterances}")
        for key in ("min_total_speech_s", "min_utterance_speech_s", "no_voice_s"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0:
                raise bad(f"{key} must be >= 0 seconds, got {value}")
        if not 0.0 <= self.max_clipped_fraction <= 1.0:
            raise bad(f"max_clipped_fraction must be in [0, 1], got {self.max_clipped_fraction}")
        if not math.isfinite(self.min_level_dbfs):
            raise bad(f"min_level_dbfs must be finite, got {self.min_level_dbfs}")
        if self.consistency is not None and not -1.0 <= self.consistency <= 1.0:
            raise bad(f"consistency must be a cosine in [-1, 1], got {self.consistency}")
        if not -1.0 <= self.duplicate_cosine <= 1.0:
            raise bad(f"duplicate_cosine must be a cosine in [-1, 1], got {self.duplicate_cosine}")


@dataclass(frozen=True)
class Progress:
    collected_s: float  # speech seconds accepted so far
    required_s: float
    utterances: int  # accepted utterances
    required_utterances: int
    percent: int  # 0..100, the lesser of the two requirements
    complete: bool

    def missing(self) -> str:
        """What is still needed, in words ("" when complete)."""
        parts = []
        if self.utterances < self.required_utterances:
            n = self.required_utterances - self.utterances
            parts.append(f"{n} more accepted utterance{'s' if n != 1 else ''}")
        if self.collected_s < self.required_s:
            parts.append(f"{self.required_s - self.collected_s:.1f} s more speech")
        return " and ".join(parts)


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
        d["speech_s"] = round(self.speech_s, 2)
        d["level_dbfs"] = None if self.level_dbfs is None else round(self.level_dbfs, 1)
        d["consistency"] = None if self.consistency is None else round(self.consistency, 4)
        return d


@dataclass(frozen=True)
class AudioQuality:
    """What an utterance sounds like, before any embedding."""

    speech_s: float  # seconds of VAD speech (voiceid.audio.vad, 30 ms frames)
    level_dbfs: float | None  # median level of the speech frames; None: no speech found
    clipped_fraction: float  # of samples at full scale
    quiet_speech: bool = False  # no speech at normal levels, but speech far below them
    dynamic_db: float | None = None  # 95th - 10th percentile of the 30 ms frame levels


def assess(samples: Vector) -> AudioQuality:
    """VAD speech seconds, speech level and clipping of a 16 kHz float32 clip.

    Speech that the VAD cannot hear because it is far too quiet (its floor is at
    least -65 dBFS) is still recognised: the clip is amplified so its loud frames
    sit at a normal level and the VAD runs again; when it finds speech there and
    the frame levels vary like speech, the result has ``quiet_speech`` and the level
    of that speech. A clip whose frame levels hardly vary (``MIN_DYNAMIC_DB``) is
    stationary sound, never speech, whatever the VAD says.
    """
    x = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    clipped = float(np.mean(np.abs(x) >= CLIP_LEVEL)) if x.size else 0.0
    if x.size < FRAME or not bool(np.isfinite(x).all()):
        return AudioQuality(0.0, None, clipped)
    levels = frame_dbfs(x, FRAME)
    loud = float(np.percentile(levels, 95))
    dynamic = loud - float(np.percentile(levels, 10))
    if loud < SILENCE_DBFS or dynamic < MIN_DYNAMIC_DB:
        return AudioQuality(0.0, None, clipped, dynamic_db=dynamic)
    flags = voice_flags(x)
    n = min(len(flags), len(levels))
    flags, levels = flags[:n], levels[:n]
    if flags.any():
        level = float(np.median(levels[flags]))
        return AudioQuality(float(flags.sum()) * FRAME_S, level, clipped, dynamic_db=dynamic)
    probe = (x * np.float32(10.0 ** ((PROBE_DBFS - loud) / 20.0))).astype(np.float32)
    quiet = voice_flags(probe)[:n]
    if not quiet.any():
        return AudioQuality(0.0, None, clipped, dynamic_db=dynamic)
    level = float(np.median(levels[: len(quiet)][quiet]))
    return AudioQuality(0.0, level, clipped, quiet_speech=True, dynamic_db=dynamic)


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
        """Begin enrolling ``name``; refuses an existing name unless ``replace``."""
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
    @property
    def consistency_bar(self) -> float:
        """Cosine a new utterance needs to the running centroid."""
        bar = self.policy.consistency
        return self.threshold if bar is None else bar

    def progress(self) -> Progress:
        p = self.policy
        got_s = float(sum(u.speech_s for u in self.utterances))
        n = len(self.utterances)
        frac = min(
            got_s / p.min_total_speech_s if p.min_total_speech_s else 1.0,
            n / p.min_utterances,
            1.0,
        )
        complete = got_s >= p.min_total_speech_s and n >= p.min_utterances
        return Progress(
            collected_s=round(got_s, 2),
            required_s=p.min_total_speech_s,
            utterances=n,
            required_utterances=p.min_utterances,
            percent=100 if complete else min(99, int(frac * 100 + 1e-9)),
            complete=complete,
        )

    def _check_open(self) -> None:
        if self.closed:
            raise ProfileError(f"enrollment of {self.name!r} is already finished or cancelled")

    def _reject(
        self,
        feedback: tuple[Feedback, ...],
        speech_s: float,
        level: float | None,
        score: float | None = None,
    ) -> AddResult:
        return AddResult(False, feedback, speech_s, level, score, self.progress())

    # -- adding utterances --------------------------------------------------------
    def add_audio(self, samples: Vector, source: str = "") -> AddResult:
        """Judge a clip (16 kHz float32 mono), embed it if it is good, and count it."""
        self._check_open()
        if self.embedder is None:
            raise ProfileError("this enrollment session takes embeddings only")
        x = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        q = assess(x)
        p = self.policy
        problems: list[Feedback] = []
        quiet = q.level_dbfs is not None and q.level_dbfs < p.min_level_dbfs
        if quiet:
            problems.append(Feedback.TOO_QUIET)  # the cause; shortness follows from it
        elif q.speech_s < p.no_voice_s:
            problems.append(Feedback.NO_VOICE)
        elif q.speech_s < p.min_utterance_speech_s:
            problems.append(Feedback.TOO_SHORT)
        if q.clipped_fraction > p.max_clipped_fraction:
            problems.append(Feedback.CLIPPING)
        if problems:
            return self._reject(tuple(problems), q.speech_s, q.level_dbfs)
        try:
            emb = self.embedder.embed(x, where=source or "utterance")
        except AudioError:
            return self._reject((Feedback.NO_VOICE,), q.speech_s, q.level_dbfs)
        return self._add(emb, q.speech_s, source, q.level_dbfs)

    def add_embedding(self, embedding: Vector, speech_s: float, source: str = "") -> AddResult:
        """Count a ready embedding (computed elsewhere with the same model)."""
        self._check_open()
        emb = np.asarray(embedding, dtype=np.float64).reshape(-1)
        norm = float(np.linalg.norm(emb)) if emb.size else 0.0
        if not bool(np.isfinite(emb).all()) or not norm > 0.0:
            raise ProfileError("embedding has NaN/Inf or is all zeros")
        if self.utterances and emb.size != self.utterances[0].dim:
            raise ProfileError(
                f"embedding has dimension {emb.size}, the utterances so far "
                f"{self.utterances[0].dim}"
            )
        speech_s = float(speech_s)
        if not math.isfinite(speech_s) or speech_s < 0:
            raise ProfileError(f"speech_s must be >= 0 seconds, got {speech_s}")
        if speech_s < self.policy.no_voice_s:
            return self._reject((Feedback.NO_VOICE,), speech_s, None)
        if speech_s < self.policy.min_utterance_speech_s:
            return self._reject((Feedback.TOO_SHORT,), speech_s, None)
        return self._add((emb / norm).astype(np.float32), speech_s, source, None)

    def _add(self, emb: Vector, speech_s: float, source: str, level: float | None) -> AddResult:
        emb = np.asarray(emb, dtype=np.float32)
        score: float | None = None
        if self.utterances:
            stack = np.stack([u.embedding for u in self.utterances]).astype(np.float64)
            stack /= np.linalg.norm(stack, axis=1, keepdims=True)
            if float(np.max(stack @ emb.astype(np.float64))) >= self.policy.duplicate_cosine:
                return self._reject((Feedback.DUPLICATE,), speech_s, level)
            score = float(np.dot(centroid([u.embedding for u in self.utterances]), emb))
            if score < self.consistency_bar:
                return self._reject((Feedback.INCONSISTENT,), speech_s, level, score)
        self.utterances.append(Utterance(emb, float(speech_s), source))
        return AddResult(True, (Feedback.OK,), speech_s, level, score, self.progress())

    # -- ending -------------------------------------------------------------------
    def finish(self, metadata: dict[str, str] | None = None) -> Profile:
        """Commit the profile in one transaction; refuses an incomplete enrollment.

        On re-enrollment (``replace``) the profile keeps its id, name and creation
        time; its metadata is replaced only when ``metadata`` is given.
        """
        self._check_open()
        prog = self.progress()
        if not prog.complete:
            raise ProfileError(
                f"enrollment of {self.name!r} is incomplete: {prog.utterances}/"
                f"{prog.required_utterances} utterances, {prog.collected_s:.1f}/"
                f"{prog.required_s:.1f} s of speech; nothing was written",
                hint=f"add {prog.missing()} before finishing",
            )
        meta = check_metadata(metadata) if metadata is not None else None
        if self.replace and self.name in self.store:
            profile = self.store.replace_utterances(
                self.name,
                self.utterances,
                fingerprint=self.fingerprint,
                model_name=self.model_name,
            )
            if meta is not None:
                profile = self.store.update(profile.id, metadata=meta)
        else:
            profile = self.store.add(
                self.name, self.fingerprint, self.model_name, self.utterances, meta
            )
        self.closed = True
        return profile

    def cancel(self) -> None:
        """Discard everything collected; nothing was written."""
        self.utterances.clear()
        self.closed = True
