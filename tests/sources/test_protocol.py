"""The sans-I/O protocol: start/stop parsing, the session state machine, server messages."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voiceid.errors import ProtocolError
from voiceid.sources.protocol import (
    MAX_CLOSE_REASON_BYTES,
    STOP_MESSAGE,
    Audio,
    CloseCode,
    Failure,
    Phase,
    StartMessage,
    Stop,
    StreamSession,
    close_reason,
    error_message,
    event_message,
    parse_control,
    parse_events_query,
    parse_start,
    ready_message,
    subscribed_message,
)
from voiceid.stream.events import (
    Event,
    Scores,
    SpeakerEnded,
    SpeakerStarted,
    Stamp,
    event_from_dict,
)

STAMP = Stamp(
    id="ab12cd-room:1", stream="room", stream_time_s=3.0, wall_time=1.7e9, latency_ms=12.5
)


def start(**fields: object) -> str:
    msg: dict[str, object] = {"type": "start", "stream": "room1", "sample_rate": 16000}
    msg.update(fields)
    return json.dumps({k: v for k, v in msg.items() if v is not ...})


def error_of(text: str | bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_start(text)
    return str(info.value)


# -- parse_start: valid ----------------------------------------------------------------


def test_minimal_start_gets_defaults() -> None:
    assert parse_start(start()) == StartMessage("room1", 16000, "pcm_s16le", 1)


def test_full_start_and_bytes_input() -> None:
    text = start(stream="Mic-2.left_x", sample_rate=48000, encoding="f32le", channels=2)
    expected = StartMessage("Mic-2.left_x", 48000, "f32le", 2)
    assert parse_start(text) == expected
    assert parse_start(text.encode()) == expected


# -- parse_start: each violation names the field and what was expected ---------------------


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("{not json", ["not valid JSON", "line 1 column 2"]),
        ("", ["not valid JSON"]),
        ("[1, 2]", ["must be a JSON object", "an array"]),
        ('"start"', ["must be a JSON object", "a string"]),
        ('{"stream": "a", "sample_rate": 16000}', ["expected a start message", "no type"]),
        ('{"type": "stop"}', ["expected a start message", 'type "stop"']),
        (start(rate=16000), ["unknown field(s)", '"rate"', "allowed fields"]),
        (start(zzz=1, aaa=2), ['"aaa", "zzz"']),
        (start(stream=...), ["missing field 'stream'"]),
        (start(stream=""), ["invalid stream name", "1-64 characters"]),
        (start(stream="a" * 65), ["invalid stream name"]),
        (start(stream="a b"), ["invalid stream name", '"a b"']),
        (start(stream="é"), ["invalid stream name"]),
        (start(stream=7), ["invalid stream name a number"]),
        (start(sample_rate=...), ["missing field 'sample_rate'"]),
        (start(sample_rate=4000), ["unsupported sample_rate 4000", "8000 to 192000"]),
        (start(sample_rate=16000.0), ["unsupported sample_rate 16000.0", "integer"]),
        (start(sample_rate="16000"), ['unsupported sample_rate "16000"']),
        (start(sample_rate=True), ["unsupported sample_rate true"]),
        (start(encoding="mulaw"), ['unsupported encoding "mulaw"', "pcm_s16le, f32le"]),
        (start(encoding=None), ["unsupported encoding null"]),
        (start(channels=0), ["unsupported channels 0", "1 to 8"]),
        (start(channels=9), ["unsupported channels 9"]),
        (start(channels=1.5), ["unsupported channels 1.5"]),
    ],
)
def test_start_errors_are_precise(text: str, needles: list[str]) -> None:
    message = error_of(text)
    for needle in needles:
        assert needle in message, message


def test_invalid_utf8_and_deep_nesting_and_huge_numbers() -> None:
    assert "not valid UTF-8" in error_of(b"\xff\xfe{")
    assert "nested too deeply" in error_of("[" * 100_000)
    assert "not valid JSON" in error_of('{"sample_rate": ' + "9" * 5000 + "}")


# -- property tests ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
start_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["start", "stop", "Start"]) | json_values,
        "stream": st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True) | json_values,
        "sample_rate": st.sampled_from([8000, 16000, 44100, 7999, 192001]) | json_values,
        "encoding": st.sampled_from(["pcm_s16le", "f32le", "s16"]) | json_values,
        "channels": st.integers(-1, 10) | json_values,
        "extra": json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(st.text() | st.binary() | start_like.map(json.dumps) | json_values.map(json.dumps))
def test_parse_start_raises_only_protocol_error(data: str | bytes) -> None:
    try:
        msg = parse_start(data)
    except ProtocolError as exc:
        assert exc.message
    else:
        assert isinstance(msg, StartMessage)


@settings(max_examples=200, deadline=None)
@given(st.text() | st.binary())
def test_parse_control_raises_only_protocol_error(data: str | bytes) -> None:
    try:
        result = parse_control(data)
    except ProtocolError:
        return
    assert result == Stop()


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        StartMessage,
        stream=st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
        sample_rate=st.integers(8000, 192000),
        encoding=st.sampled_from(["pcm_s16le", "f32le"]),
        channels=st.integers(1, 8),
    )
)
def test_valid_start_round_trips(msg: StartMessage) -> None:
    assert parse_start(msg.to_json()) == msg
    assert parse_start(msg.to_json().encode()) == msg
    assert StreamSession().receive(msg.to_json()) == msg


# -- control messages and the session ---------------------------------------------------


def test_stop_and_other_text_after_start() -> None:
    assert parse_control(STOP_MESSAGE) == Stop()
    assert parse_control(b'{"type":"stop"}') == Stop()
    with pytest.raises(ProtocolError, match="unknown field"):
        parse_control('{"type": "stop", "now": true}')
    with pytest.raises(ProtocolError, match="already started"):
        parse_control(start())
    with pytest.raises(ProtocolError, match=r"unexpected text message \(type \"hello\"\)"):
        parse_control('{"type": "hello"}')


def test_session_phases() -> None:
    s = StreamSession()
    with pytest.raises(ProtocolError, match=r"start message .*first, got a binary frame of 4"):
        s.receive(b"\x00\x01\x02\x03")
    phases = [s.phase]
    assert s.receive(start()) == StartMessage("room1", 16000)
    phases.append(s.phase)
    assert s.receive(b"\x01\x02\x03") == Audio(b"\x01\x02\x03")
    assert s.receive(bytearray(b"\x04")) == Audio(b"\x04")
    assert (s.frames, s.bytes) == (2, 4)
    with pytest.raises(ProtocolError, match="already started"):
        s.receive(start())
    assert s.receive(STOP_MESSAGE) == Stop()
    phases.append(s.phase)
    assert phases == [Phase.AWAIT_START, Phase.STREAMING, Phase.STOPPED]
    with pytest.raises(ProtocolError, match="after stop"):
        s.receive(b"\x00\x00")


def test_events_query() -> None:
    assert parse_events_query("") is None
    assert parse_events_query("stream=room-1") == "room-1"
    for bad, needle in [
        ("stream=a%20b", "invalid stream name"),
        ("stream=", "invalid stream name"),
        ("name=x", "unknown query parameter"),
        ("stream=a&stream=b", "at most once"),
        ("stream", "malformed query"),
    ]:
        with pytest.raises(ProtocolError, match=needle):
            parse_events_query(bad)


# -- server messages --------------------------------------------------------------------


def test_event_message_is_to_dict_json() -> None:
    events: list[Event] = [
        SpeakerStarted(**STAMP, name="alice", score=0.81),
        SpeakerEnded(**STAMP, name="alice", duration_s=4.5, reason="silence"),
        Scores(**STAMP, top=(("alice", 0.8), ("bob", 0.5))),
    ]
    for event in events:
        data = json.loads(event_message(event))
        assert data == json.loads(json.dumps(event.to_dict()))
        assert next(iter(data)) == "type"
        assert event_from_dict(data) == event


def test_event_message_never_emits_nan() -> None:
    event = Scores(**STAMP, top=(("alice", math.nan), ("bob", math.inf)))
    data = json.loads(event_message(event))  # strict JSON: NaN would not parse back as null
    assert data["top"] == [{"name": "alice", "score": None}, {"name": "bob", "score": None}]


def test_ready_subscribed_error_messages() -> None:
    ready = json.loads(ready_message(StartMessage("r", 44100), hop_s=0.5, window_s=2.0))
    assert ready == {
        "type": "ready",
        "stream": "r",
        "sample_rate_in": 44100,
        "hop_s": 0.5,
        "window_s": 2.0,
    }
    assert json.loads(subscribed_message(None)) == {"type": "subscribed", "stream": None}
    err = json.loads(error_message(1008, "bad", "fix it"))
    assert err == {"type": "error", "code": 1008, "message": "bad", "hint": "fix it"}
    assert "hint" not in json.loads(error_message(1011, "oops"))


def test_close_reason_truncates_to_123_bytes() -> None:
    assert close_reason("short") == "short"
    exact = "x" * MAX_CLOSE_REASON_BYTES
    assert close_reason(exact) == exact
    long = close_reason("é" * 200)  # 2 bytes each: must not split a character
    assert len(long.encode()) <= MAX_CLOSE_REASON_BYTES
    assert long.endswith("...") and long.startswith("é")


def test_failure_from_protocol_error() -> None:
    exc = ProtocolError("NaN/Inf in f32le audio at byte offset 8 " + "z" * 200, hint="finite")
    failure = Failure.of(exc)
    assert failure.code is CloseCode.POLICY_VIOLATION and int(failure.code) == 1008
    assert len(failure.reason.encode()) <= 123
    assert failure.reason.startswith("NaN/Inf in f32le audio at byte offset 8")
    assert json.loads(failure.to_json())["message"] == exc.message
    assert [int(c) for c in CloseCode] == [1000, 1001, 1008, 1009, 1011, 1013]
