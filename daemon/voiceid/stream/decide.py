"""Per-stream decisions: scores per hop → who is speaking → events.

Input, one hop at a time and in order: a score vector [N] (cosine against each enrolled
name), a silent hop, or a voiced hop without scores (window skipped or failed).

* Smoothing over voiced hops: ``ema`` (``s = alpha * raw + (1 - alpha) * s``) or ``vote``
  (over the last ``vote_k`` hops the name that was best most often wins; scores are the
  mean over those hops).
* Enter: nobody current, the smoothed best is ≥ ``enter`` and the same name is best for
  ``min_dwell_hops`` hops in a row → :class:`SpeakerStarted`.
* Change: another name is best, ≥ ``enter`` and ``change_margin`` above the current
  speaker's score, for ``min_dwell_hops`` hops → :class:`SpeakerChanged`.
* Exit: the current speaker's score is < ``exit`` for ``min_dwell_hops`` hops →
  ``SpeakerEnded(reason="low_score")`` (unless another name is best and ≥ ``enter``: then
  the end waits for that name's dwell, which makes it a change); or ``end_silence_s`` of
  stream time pass with only silent hops → ``SpeakerEnded(reason="silence")`` (and the
  smoothing starts afresh).
* Unknown: nobody current and the best score is < ``exit`` for ``min_dwell_hops`` hops →
  :class:`UnknownSpeaker`, once per unknown segment (until someone is recognised or
  silence ends the segment).
* :class:`Scores`: top-``top_k`` smoothed scores on voiced hops, at most once every
  ``scores_interval_s`` of stream time.

Silent hops carry no scores, so silence can never produce an identity. The gap between
``enter`` and ``exit`` (hysteresis) plus the dwell keep scores that hover around the
threshold from flapping. All times are stream time (seconds of audio), never wall time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from voiceid.errors import ConfigError
from voiceid.stream.events import (
    EndReason,
    Event,
    Scores,
    SpeakerChanged,
    SpeakerEnded,
    SpeakerStarted,
    Stamp,
    UnknownSpeaker,
)

StampFn = Callable[[], Stamp]
"""Makes the envelope of the next event (new id, wall time, latency)."""

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class DecisionConfig:
    """Thresholds are cosines; times are seconds of stream time; counts are hops."""

    enter: float = 0.5  # pass the model's threshold (ModelCard.threshold, default 0.5)
    exit: float | None = None  # None → enter − 0.05
    smoothing: Literal["ema", "vote"] = "ema"
    alpha: float = 0.5  # ema: weight of the newest hop, in (0, 1]
    vote_k: int = 3  # vote: hops voted over
    min_dwell_hops: int = 2  # hops a condition must hold (2 hops = 1 s at hop_s 0.5)
    change_margin: float = 0.05  # a new speaker must beat the current one by this much
    # a smoothed score this far above ``enter`` starts a speaker after one hop, this far
    # below it (nobody close) calls an unknown speaker after one hop; changes between two
    # speakers always dwell. None: always dwell.
    confident_margin: float | None = 0.05
    end_silence_s: float = 1.0  # silence that ends the current speaker
    scores_interval_s: float = 1.0  # least stream time between Scores events (inf: never)
    top_k: int = 3  # names in a Scores event (0: no Scores events)

    def __post_init__(self) -> None:
        if not math.isfinite(self.enter):
            raise ConfigError(f"enter threshold must be finite, got {self.enter}")
        if self.exit_threshold > self.enter:
            raise ConfigError(f"exit ({self.exit}) must be ≤ enter ({self.enter})")
        if self.smoothing not in ("ema", "vote"):
            raise ConfigError(f"smoothing must be 'ema' or 'vote', got {self.smoothing!r}")
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.vote_k < 1 or self.min_dwell_hops < 1:
            raise ConfigError("vote_k and min_dwell_hops must be ≥ 1")
        if self.change_margin < 0 or self.end_silence_s <= 0 or self.scores_interval_s < 0:
            raise ConfigError("change_margin and scores_interval_s must be ≥ 0, end_silence_s > 0")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be ≥ 0, got {self.top_k}")

    @property
    def exit_threshold(self) -> float:
        """The exit threshold actually used."""
        return self.enter - 0.05 if self.exit is None else self.exit


class _Smoother:
    """Smoothed score vector over voiced hops, keyed by the current name list."""

    def __init__(self, config: DecisionConfig) -> None:
        self._cfg = config
        self.names: tuple[str, ...] = ()
        self._ema: NDArray[np.float64] | None = None
        self._history: deque[NDArray[np.float64]] = deque(maxlen=config.vote_k)

    def reset(self) -> None:
        self._ema = None
        self._history.clear()

    def update(
        self, raw: NDArray[np.float64], names: tuple[str, ...]
    ) -> tuple[NDArray[np.float64], int | None]:
        """Add one hop; return (smoothed [N], index of the best name or None if N = 0)."""
        if names != self.names:
            self._remap(names, raw)
        if self._cfg.smoothing == "ema":
            a = self._cfg.alpha
            self._ema = raw.copy() if self._ema is None else a * raw + (1 - a) * self._ema
            smooth = self._ema
            best = int(np.argmax(smooth)) if smooth.size else None
            return smooth, best
        self._history.append(raw)
        stack = np.stack(self._history)
        smooth = stack.mean(axis=0)
        if not smooth.size:
            return smooth, None
        votes = np.bincount(stack.argmax(axis=1), minlength=smooth.size)
        tied = np.flatnonzero(votes == votes.max())
        return smooth, int(tied[np.argmax(smooth[tied])])

    def _remap(self, names: tuple[str, ...], raw: NDArray[np.float64]) -> None:
        """The enrolled names changed: carry scores of names still there, start new ones."""
        if self._ema is not None:
            old = dict(zip(self.names, self._ema, strict=True))
            self._ema = np.array([old.get(n, raw[i]) for i, n in enumerate(names)])
        self._history.clear()
        self.names = names


class Decider:
    """Turns one stream's per-hop scores into speaker events (pure; no clock inside)."""

    def __init__(self, config: DecisionConfig | None = None) -> None:
        self.config = config or DecisionConfig()
        self._smooth = _Smoother(self.config)
        self._current: str | None = None
        self._since_s = 0.0  # stream time of the event that named the current speaker
        self._last_voice_s: float | None = None  # stream time of the last voiced hop
        self._last_scores_s: float | None = None
        self._cand: str | None = None  # name best and ≥ enter on the latest hops
        self._cand_hops = 0
        self._low_hops = 0  # current speaker < exit
        self._nobody_hops = 0  # best < exit
        self._unknown_said = False
        self._fresh = True  # smoothing reset by silence (nothing to forget)

    @property
    def current(self) -> str | None:
        """The speaker being heard, if any."""
        return self._current

    def on_scores(
        self, scores: ArrayLike, names: Sequence[str], stream_time_s: float, stamp: StampFn
    ) -> list[Event]:
        """A voiced hop with cosine ``scores`` [N] against ``names``; returns its events."""
        raw = np.asarray(scores, dtype=np.float64).reshape(-1)
        names_t = tuple(names)
        if raw.size != len(names_t):
            raise ValueError(f"{raw.size} scores for {len(names_t)} names")
        cfg = self.config
        self._last_voice_s = stream_time_s
        self._fresh = False
        smooth, best = self._smooth.update(raw, names_t)
        best_name = None if best is None else names_t[best]
        best_score = -math.inf if best is None else float(smooth[best])
        self._count(smooth, names_t, best_name, best_score)

        events: list[Event] = []
        cur = self._current
        if cur is None:
            if self._cand is not None and (
                self._cand_hops >= cfg.min_dwell_hops
                or self._confident(best_score >= cfg.enter + (cfg.confident_margin or 0.0))
            ):
                events.append(SpeakerStarted(**stamp(), name=self._cand, score=best_score))
                self._name(self._cand, stream_time_s)
        else:
            cur_score = _score_of(cur, smooth, names_t)
            if (
                self._cand not in (None, cur)
                and self._cand_hops >= cfg.min_dwell_hops
                and best_score - cur_score >= cfg.change_margin - _EPS
            ):
                assert self._cand is not None
                events.append(
                    SpeakerChanged(**stamp(), name=self._cand, previous=cur, score=best_score)
                )
                self._name(self._cand, stream_time_s)
            elif self._low_hops >= cfg.min_dwell_hops and (
                self._cand in (None, cur) or self._cand_hops >= cfg.min_dwell_hops
            ):
                # (while another name is still dwelling past ``enter``, wait: that is a
                # change coming; once it has dwelt without beating the margin, end)
                events.append(self._ended(stream_time_s, "low_score", stamp))
        if (
            self._current is None
            and not self._unknown_said
            and (
                self._nobody_hops >= cfg.min_dwell_hops
                or (
                    self._nobody_hops >= 1
                    and self._confident(best_score < cfg.enter - (cfg.confident_margin or 0.0))
                )
            )
        ):
            score = None if best is None else best_score
            events.append(UnknownSpeaker(**stamp(), score=score, best=best_name))
            self._unknown_said = True
        events.extend(self._scores(smooth, names_t, stream_time_s, stamp))
        return events

    def _confident(self, beyond: bool) -> bool:
        return self.config.confident_margin is not None and beyond

    def on_unscored(self, stream_time_s: float) -> None:
        """A voiced hop whose window was not embedded (skipped/failed): voice, no scores."""
        self._last_voice_s = stream_time_s

    def on_silence(self, stream_time_s: float, stamp: StampFn) -> list[Event]:
        """A silent hop; after ``end_silence_s`` without voice the speaker ends."""
        last = self._last_voice_s
        if self._fresh or last is None:
            return []  # nothing heard since the last reset: nothing to end
        if stream_time_s - last < self.config.end_silence_s - _EPS:
            return []
        events: list[Event] = []
        if self._current is not None:
            events.append(self._ended(last, "silence", stamp))
        self._forget()
        return events

    def close(self, stream_time_s: float, stamp: StampFn) -> list[Event]:
        """End of stream: end the current speaker (``reason="closed"``)."""
        events: list[Event] = []
        if self._current is not None:
            end = self._last_voice_s if self._last_voice_s is not None else stream_time_s
            events.append(self._ended(end, "closed", stamp))
        self._forget()
        return events

    # -- internals ---------------------------------------------------------------------

    def _count(
        self,
        smooth: NDArray[np.float64],
        names: tuple[str, ...],
        best_name: str | None,
        best_score: float,
    ) -> None:
        cfg = self.config
        cand = best_name if best_score >= cfg.enter - _EPS else None
        self._cand_hops = self._cand_hops + 1 if cand is not None and cand == self._cand else 1
        self._cand = cand
        if cand is None:
            self._cand_hops = 0
        low = best_score < cfg.exit_threshold - _EPS
        self._nobody_hops = self._nobody_hops + 1 if low else 0
        if self._current is not None:
            cur_low = _score_of(self._current, smooth, names) < cfg.exit_threshold - _EPS
            self._low_hops = self._low_hops + 1 if cur_low else 0

    def _name(self, name: str, stream_time_s: float) -> None:
        self._current = name
        self._since_s = stream_time_s
        self._low_hops = 0
        self._unknown_said = False

    def _ended(self, last_s: float, reason: EndReason, stamp: StampFn) -> Event:
        """End the current speaker; ``last_s``: stream time of their last hop."""
        assert self._current is not None
        name, self._current = self._current, None
        self._low_hops = 0
        return SpeakerEnded(
            **stamp(), name=name, duration_s=max(0.0, last_s - self._since_s), reason=reason
        )

    def _forget(self) -> None:
        """Silence ended the segment: smoothing, dwell counters and unknown flag restart."""
        self._smooth.reset()
        self._cand, self._cand_hops = None, 0
        self._low_hops = self._nobody_hops = 0
        self._unknown_said = False
        self._fresh = True

    def _scores(
        self,
        smooth: NDArray[np.float64],
        names: tuple[str, ...],
        stream_time_s: float,
        stamp: StampFn,
    ) -> list[Event]:
        cfg = self.config
        if cfg.top_k == 0 or not names:
            return []
        last = self._last_scores_s
        if last is not None and stream_time_s - last < cfg.scores_interval_s - _EPS:
            return []
        self._last_scores_s = stream_time_s
        k = min(cfg.top_k, len(names))
        order = np.argsort(-smooth, kind="stable")[:k]
        top = tuple((names[i], float(smooth[i])) for i in order)
        return [Scores(**stamp(), top=top)]


def _score_of(name: str, smooth: NDArray[np.float64], names: tuple[str, ...]) -> float:
    """Smoothed score of ``name``; −inf if it is no longer enrolled."""
    try:
        return float(smooth[names.index(name)])
    except ValueError:
        return -math.inf
