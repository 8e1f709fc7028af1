"""Typed stream events: what a client hears about a stream.

Every event shares an envelope (:class:`Stamp`):

* ``id`` - unique within the process run of one stream: ``"<stream>:<n>"``, n = 1, 2, ...
* ``stream`` - the stream's name.
* ``stream_time_s`` - seconds of audio since the stream started, at the end of the hop
  whose audio caused the event.
* ``wall_time`` - unix time (seconds) when the event was created (injected clock).
* ``latency_ms`` - milliseconds from the moment the hop's last sample was fed to the core
  to the moment the event was created (same injected clock).

Scores are cosine similarities in [-1, 1], smoothed over hops (see ``decide.py``).
``to_dict`` gives a JSON-ready dict with ``type`` first; :func:`event_from_dict` inverts it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from voiceid.errors import ProtocolError


class Stamp(TypedDict):
    """The envelope fields every event carries (unpack with ``**stamp``)."""

    id: str
    stream: str
    stream_time_s: float
    wall_time: float
    latency_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class _Event:
    id: str
    stream: str
    stream_time_s: float  # s of audio since stream start, end of the hop
    wall_time: float  # unix s at creation
    latency_ms: float  # ms from the hop's last sample fed to creation

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``type`` first, then the envelope, then the event's own fields."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out: dict[str, Any] = {"type": values.pop("type")}
        out.update(values)
        if "top" in out:
            out["top"] = [{"name": n, "score": s} for n, s in out["top"]]
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeakerStarted(_Event):
    """An enrolled speaker was recognised (nobody was current before)."""

    type: Literal["speaker_started"] = field(default="speaker_started", init=False)
    name: str
    score: float  # smoothed cosine of ``name``


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeakerChanged(_Event):
    """Another enrolled speaker took over from ``previous`` (no separate ``SpeakerEnded``)."""

    type: Literal["speaker_changed"] = field(default="speaker_changed", init=False)
    name: str
    previous: str
    score: float  # smoothed cosine of ``name``


EndReason = Literal["silence", "low_score", "closed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeakerEnded(_Event):
    """The current speaker is no longer heard.

    ``duration_s``: seconds of stream time from the event that named the speaker to the
    last hop attributed to them. ``reason``: ``silence`` (``end_silence_s`` without voice),
    ``low_score`` (score below the exit threshold for the dwell), ``closed`` (stream end).
    """

    type: Literal["speaker_ended"] = field(default="speaker_ended", init=False)
    name: str
    duration_s: float
    reason: EndReason


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownSpeaker(_Event):
    """Voice is present but matches nobody enrolled (once per unknown segment).

    ``best``/``score``: the closest enrolled name and its smoothed cosine (below the exit
    threshold); both ``None`` when nobody is enrolled.
    """

    type: Literal["unknown_speaker"] = field(default="unknown_speaker", init=False)
    score: float | None
    best: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Scores(_Event):
    """The top-k smoothed cosines, best first (rate-limited, voiced hops only)."""

    type: Literal["scores"] = field(default="scores", init=False)
    top: tuple[tuple[str, float], ...]


Event = SpeakerStarted | SpeakerChanged | SpeakerEnded | UnknownSpeaker | Scores
EventType = Literal[
    "speaker_started", "speaker_changed", "speaker_ended", "unknown_speaker", "scores"
]

EVENT_TYPES: dict[str, type[Event]] = {
    "speaker_started": SpeakerStarted,
    "speaker_changed": SpeakerChanged,
    "speaker_ended": SpeakerEnded,
    "unknown_speaker": UnknownSpeaker,
    "scores": Scores,
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from :meth:`to_dict` output (e.g. parsed JSON).

    Raises :class:`ProtocolError` for an unknown ``type`` or missing/unexpected fields.
    """
    kind = data.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(
            f"unknown event type {kind!r}", hint=f"expected one of {sorted(EVENT_TYPES)}"
        )
    wanted = {f.name for f in dataclasses.fields(cls) if f.init}
    given = set(data) - {"type"}
    if given != wanted:
        missing, extra = sorted(wanted - given), sorted(given - wanted)
        raise ProtocolError(
            f"bad {kind} event: missing {missing}, unexpected {extra}",
            hint="the event dict must come from Event.to_dict()",
        )
    kwargs = {k: data[k] for k in wanted}
    if "top" in kwargs:
        try:
            kwargs["top"] = tuple(_pair(item) for item in kwargs["top"])
        except (TypeError, KeyError, ValueError) as exc:
            raise ProtocolError(
                f"bad scores event: top {kwargs['top']!r}",
                hint='top is a list of {"name": str, "score": float}',
            ) from exc
    return cls(**kwargs)


def _pair(item: Any) -> tuple[str, float]:
    if isinstance(item, dict):
        return str(item["name"]), float(item["score"])
    name, score = item
    return str(name), float(score)
