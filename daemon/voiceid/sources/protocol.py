"""The streaming protocol of the WebSocket source, without any I/O (see docs/protocol.md).

Modelled on python-websockets' own sans-I/O split: this module turns the messages a client
sends into typed commands (or a :class:`~voiceid.errors.ProtocolError` naming the field
and what was expected) and builds every message and close frame the server sends. The
asyncio adapter (:mod:`voiceid.sources.websocket`) only moves bytes.

Client → server on ``/stream``:

1. one text frame ``{"type": "start", "stream": NAME, "sample_rate": HZ,
   "encoding": "pcm_s16le" | "f32le", "channels": N}`` (``encoding`` and ``channels``
   are optional: ``pcm_s16le``, 1);
2. binary frames of raw interleaved little-endian PCM in that format (any length: a
   frame may end inside a sample, the rest is kept for the next frame);
3. optionally a text frame ``{"type": "stop"}``: end the stream gracefully (the audio
   already sent is decided, the last events are sent, then close 1000).

Server → client: ``ready`` once the stream is open, then every event of the stream as
JSON (``Event.to_dict()``), an ``error`` message before a close for a protocol error.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any, Final, Literal, get_args
from urllib.parse import parse_qsl

from voiceid.audio.convert import MAX_CHANNELS, MAX_RATE, MIN_RATE
from voiceid.errors import ProtocolError
from voiceid.stream.events import Event

Encoding = Literal["pcm_s16le", "f32le"]
ENCODINGS: Final[tuple[str, ...]] = get_args(Encoding)

STREAM_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
STREAM_NAME_RULE: Final = "1-64 characters from A-Z a-z 0-9 _ . -"
START_FIELDS: Final = ("type", "stream", "sample_rate", "encoding", "channels")
MAX_CLOSE_REASON_BYTES: Final = 123  # RFC 6455: control frame payload 125 - 2 code bytes
_START_EXAMPLE = '{"type": "start", "stream": "room1", "sample_rate": 16000}'


class CloseCode(IntEnum):
    """WebSocket close codes the server uses (RFC 6455 §7.4)."""

    NORMAL = 1000  # the client sent stop (or closed first)
    GOING_AWAY = 1001  # the daemon is shutting down
    POLICY_VIOLATION = 1008  # protocol error, bad audio, client too slow
    MESSAGE_TOO_BIG = 1009  # a frame over websocket.max_message_bytes
    INTERNAL_ERROR = 1011  # a bug in the daemon
    TRY_AGAIN_LATER = 1013  # websocket.max_streams reached


class Reason:
    """Fixed close reasons (each well under 123 bytes)."""

    STOPPED = "stream stopped"
    SHUTDOWN = "server shutting down"
    TOO_SLOW = "too slow: event queue full"
    INTERNAL = "internal error"


@dataclass(frozen=True, slots=True)
class StartMessage:
    """A validated ``start``: the stream's name and the format of its binary frames."""

    stream: str
    sample_rate: int
    encoding: Encoding = "pcm_s16le"
    channels: int = 1

    def to_json(self) -> str:
        """The start message a client sends (``parse_start(m.to_json()) == m``)."""
        return json.dumps(
            {
                "type": "start",
                "stream": self.stream,
                "sample_rate": self.sample_rate,
                "encoding": self.encoding,
                "channels": self.channels,
            }
        )


@dataclass(frozen=True, slots=True)
class Audio:
    """A binary frame of raw PCM (in the stream's start format)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Stop:
    """The client ends its stream (``{"type": "stop"}``)."""


Command = StartMessage | Audio | Stop

STOP_MESSAGE: Final = json.dumps({"type": "stop"})
EVENTS_QUERY_FIELDS: Final = ("stream",)


# -- parsing -----------------------------------------------------------------------------


def _load_object(text: str | bytes, what: str) -> dict[str, Any]:
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(
                f"{what} is not valid UTF-8 (byte {exc.start})",
                hint="send the message as a JSON text frame",
            ) from None
    if not isinstance(text, str):
        raise ProtocolError(f"{what} must be JSON text, got {type(text).__name__}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            hint=f"send e.g. {_START_EXAMPLE}",
        ) from None
    except (ValueError, RecursionError) as exc:  # huge integers, deep nesting
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ProtocolError(
            f"{what} is not valid JSON: {detail}", hint=f"send e.g. {_START_EXAMPLE}"
        ) from None
    if not isinstance(data, dict):
        raise ProtocolError(
            f"{what} must be a JSON object, got {_json_type(data)}",
            hint=f"send e.g. {_START_EXAMPLE}",
        )
    return data


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _show(value: object, limit: int = 40) -> str:
    """A short JSON rendering of a client value for an error message."""
    try:
        shown = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def parse_start(text: str | bytes) -> StartMessage:
    """Validate the first message of a ``/stream`` connection.

    Every violation is a :class:`ProtocolError` that names the field and what was
    expected: invalid UTF-8/JSON, not an object, ``type`` not ``"start"``, unknown
    fields, a missing or malformed ``stream``, an unsupported ``sample_rate`` (integer
    Hz in [8000, 192000]), ``encoding`` or ``channels`` (1-8).
    """
    data = _load_object(text, "start message")
    kind = data.get("type")
    if kind != "start":
        got = "no type" if "type" not in data else f"type {_show(kind)}"
        raise ProtocolError(
            f'expected a start message ({{"type": "start", ...}}) first, got {got}',
            hint=f"send e.g. {_START_EXAMPLE} before any audio",
        )
    unknown = sorted(k for k in data if k not in START_FIELDS)
    if unknown:
        raise ProtocolError(
            f"unknown field(s) in start message: {', '.join(_show(k) for k in unknown)}",
            hint=f"allowed fields: {', '.join(START_FIELDS)}",
        )

    if "stream" not in data:
        raise ProtocolError(
            "start message: missing field 'stream'", hint=f"a stream name: {STREAM_NAME_RULE}"
        )
    stream = data["stream"]
    if not isinstance(stream, str) or not STREAM_NAME_RE.fullmatch(stream):
        what = _show(stream) if isinstance(stream, str) else _json_type(stream)
        raise ProtocolError(
            f"start message: invalid stream name {what}",
            hint=f"'stream' must be a string of {STREAM_NAME_RULE}",
        )

    if "sample_rate" not in data:
        raise ProtocolError(
            "start message: missing field 'sample_rate'",
            hint="the rate of the audio you send, in Hz, e.g. 16000",
        )
    rate = data["sample_rate"]
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(
            f"start message: unsupported sample_rate {_show(rate)}",
            hint=f"an integer number of Hz from {MIN_RATE} to {MAX_RATE}, e.g. 16000",
        )

    encoding = data.get("encoding", "pcm_s16le")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise ProtocolError(
            f"start message: unsupported encoding {_show(encoding)}",
            hint=f"one of: {', '.join(ENCODINGS)}",
        )

    channels = data.get("channels", 1)
    if (
        isinstance(channels, bool)
        or not isinstance(channels, int)
        or not 1 <= channels <= MAX_CHANNELS
    ):
        raise ProtocolError(
            f"start message: unsupported channels {_show(channels)}",
            hint=f"an integer from 1 to {MAX_CHANNELS} (interleaved channels are averaged)",
        )
    enc: Encoding = "f32le" if encoding == "f32le" else "pcm_s16le"
    return StartMessage(stream=stream, sample_rate=rate, encoding=enc, channels=channels)


def parse_control(text: str | bytes) -> Stop:
    """A text frame after ``start``: only ``{"type": "stop"}`` is allowed."""
    data = _load_object(text, "control message")
    kind = data.get("type")
    if kind == "stop":
        extra = sorted(k for k in data if k != "type")
        if extra:
            raise ProtocolError(
                f"unknown field(s) in stop message: {', '.join(_show(k) for k in extra)}",
                hint='send exactly {"type": "stop"}',
            )
        return Stop()
    if kind == "start":
        raise ProtocolError(
            "the stream is already started", hint="open a new connection for another stream"
        )
    got = "no type" if "type" not in data else f"type {_show(kind)}"
    raise ProtocolError(
        f"unexpected text message ({got}) after start",
        hint='send audio as binary frames; the only text message allowed is {"type": "stop"}',
    )


def parse_events_query(query: str) -> str | None:
    """The query of an ``/events`` URL: empty (all streams) or ``stream=NAME``."""
    if not query:
        return None
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ProtocolError(
            f"malformed query {_show(query)}", hint="use /events or /events?stream=NAME"
        ) from None
    unknown = sorted({k for k, _ in pairs if k not in EVENTS_QUERY_FIELDS})
    if unknown:
        raise ProtocolError(
            f"unknown query parameter(s): {', '.join(_show(k) for k in unknown)}",
            hint="the only parameter is stream=NAME",
        )
    if len(pairs) != 1:
        raise ProtocolError("give stream= at most once", hint="one stream per subscription")
    name = pairs[0][1]
    if not STREAM_NAME_RE.fullmatch(name):
        raise ProtocolError(
            f"invalid stream name {_show(name)}", hint=f"a stream name is {STREAM_NAME_RULE}"
        )
    return name


class Phase(Enum):
    """Where a ``/stream`` conversation is."""

    AWAIT_START = "await_start"
    STREAMING = "streaming"
    STOPPED = "stopped"


class StreamSession:
    """The client side of one ``/stream`` connection, as a state machine (no I/O).

    Feed it each received message (``str`` for text frames, ``bytes`` for binary ones);
    it returns what to do or raises :class:`ProtocolError`::

        AWAIT_START --text start--> STREAMING --binary--> Audio
                                    STREAMING --text stop--> STOPPED
    """

    def __init__(self) -> None:
        self.phase = Phase.AWAIT_START
        self.start: StartMessage | None = None
        self.frames = 0  # binary frames received
        self.bytes = 0  # audio bytes received

    def receive(self, message: str | bytes | bytearray | memoryview) -> Command:
        if not isinstance(message, str | bytes | bytearray | memoryview):
            raise ProtocolError(
                f"a message must be a text or binary frame, got {type(message).__name__}"
            )
        if self.phase is Phase.AWAIT_START:
            if not isinstance(message, str):
                raise ProtocolError(
                    f"expected a start message (JSON text frame) first, "
                    f"got a binary frame of {len(message)} bytes",
                    hint=f"send e.g. {_START_EXAMPLE} before any audio",
                )
            self.start = parse_start(message)
            self.phase = Phase.STREAMING
            return self.start
        if self.phase is Phase.STOPPED:
            raise ProtocolError(
                "message after stop", hint="the stream is over; open a new connection"
            )
        if isinstance(message, str):
            cmd = parse_control(message)
            self.phase = Phase.STOPPED
            return cmd
        data = bytes(message)
        self.frames += 1
        self.bytes += len(data)
        return Audio(data)


# -- server messages -----------------------------------------------------------------------


def _dumps(obj: dict[str, Any]) -> str:
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a NaN/inf slipped in: JSON has no such number, send null
        return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def event_message(event: Event) -> str:
    """One event as a JSON text frame (``event.to_dict()``; non-finite numbers → null)."""
    return _dumps(event.to_dict())


def ready_message(start: StartMessage, *, hop_s: float, window_s: float) -> str:
    """Sent once the stream is open: from now on binary audio frames are accepted."""
    return _dumps(
        {
            "type": "ready",
            "stream": start.stream,
            "sample_rate_in": start.sample_rate,
            "hop_s": hop_s,
            "window_s": window_s,
        }
    )


def subscribed_message(stream: str | None) -> str:
    """Sent once an ``/events`` subscription is active (``stream`` None: all streams)."""
    return _dumps({"type": "subscribed", "stream": stream})


def error_message(code: int, message: str, hint: str | None = None) -> str:
    """Sent just before the server closes the connection because of ``message``."""
    out: dict[str, Any] = {"type": "error", "code": int(code), "message": message}
    if hint:
        out["hint"] = hint
    return _dumps(out)


def close_reason(text: str, limit: int = MAX_CLOSE_REASON_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character boundary, "..." added)."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    cut = raw[: max(0, limit - 3)].decode("utf-8", errors="ignore")
    return cut + "..."


@dataclass(frozen=True, slots=True)
class Failure:
    """Why the server ends a connection: close code, close reason, and the error text."""

    code: CloseCode
    message: str
    hint: str | None = None

    @property
    def reason(self) -> str:
        """The close frame's reason (≤ 123 bytes)."""
        return close_reason(self.message)

    def to_json(self) -> str:
        return error_message(self.code, self.message, self.hint)

    @classmethod
    def of(cls, exc: ProtocolError, code: CloseCode = CloseCode.POLICY_VIOLATION) -> Failure:
        return cls(code, exc.message, exc.hint)
