from __future__ import annotations

import dataclasses
import json

import pytest

from voiceid.errors import ProtocolError
from voiceid.stream.events import (
    EVENT_TYPES,
    Event,
    Scores,
    SpeakerChanged,
    SpeakerEnded,
    SpeakerStarted,
    Stamp,
    UnknownSpeaker,
    event_from_dict,
)

STAMP = Stamp(id="s:1", stream="s", stream_time_s=2.5, wall_time=1.7e9, latency_ms=12.5)

EVENTS: list[Event] = [
    SpeakerStarted(**STAMP, name="alice", score=0.81),
    SpeakerChanged(**STAMP, name="bob", previous="alice", score=0.7),
    SpeakerEnded(**STAMP, name="bob", duration_s=3.5, reason="silence"),
    UnknownSpeaker(**STAMP, score=0.2, best="alice"),
    UnknownSpeaker(**STAMP, score=None, best=None),
    Scores(**STAMP, top=(("alice", 0.8), ("bob", 0.1))),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.type)
def test_json_round_trip(event: Event) -> None:
    d = event.to_dict()
    assert next(iter(d)) == "type" and d["type"] == event.type
    assert {"id", "stream", "stream_time_s", "wall_time", "latency_ms"} <= set(d)
    assert event_from_dict(json.loads(json.dumps(d))) == event


def test_scores_json_shape() -> None:
    d = EVENTS[-1].to_dict()
    assert d["top"] == [{"name": "alice", "score": 0.8}, {"name": "bob", "score": 0.1}]


def test_events_are_frozen_and_typed() -> None:
    e = EVENTS[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.name = "eve"  # type: ignore[misc]
    assert set(EVENT_TYPES) == {type(e).__dataclass_fields__["type"].default for e in EVENTS}


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "nope"},
        {},
        {**EVENTS[0].to_dict(), "extra": 1},
        {k: v for k, v in EVENTS[0].to_dict().items() if k != "score"},
        {**EVENTS[-1].to_dict(), "top": [{"name": "a"}]},
    ],
)
def test_bad_dicts(bad: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        event_from_dict(bad)
