"""Wyoming microphone source: a client of a Wyoming ``mic`` program → a live stream.

A Wyoming mic program (``wyoming-mic-external``, a satellite's mic service, ...) listens on
``tcp://HOST:PORT`` and, once a client connects, sends ``audio-start`` and then
``audio-chunk`` events (raw PCM: ``rate``, ``width`` bytes per sample, ``channels``);
``audio-stop`` ends a stream. This module connects to it, opens one live stream on the hub
per ``audio-start`` (or per first chunk of a new format) and feeds every chunk into it:
16-bit audio as ``pcm_s16le``, 8/24/32-bit integer audio converted to ``f32le``; the
hub's :class:`~voiceid.audio.convert.PcmDecoder` resamples and downmixes.

The connection is kept forever: a refused, dropped or stalled connection (no audio for
``idle_timeout_s`` while a stream is open) is retried with capped, jittered exponential
backoff (``reconnect_min_s`` .. ``reconnect_max_s``, see :func:`voiceid.sinks.mqtt.backoff`);
the open stream is closed first, so its last events (``speaker_ended``) are published.
Nothing is queued here: the socket is read only as fast as the hub takes the audio, so a
fast or misbehaving mic meets TCP back-pressure, and one event is at most
``max_event_bytes`` (larger ones are a protocol error: reconnect).

The helpers shared with :mod:`voiceid.sources.wyoming_asr` live here too:
:func:`parse_tcp_uri`, :func:`read_event_bounded`, :class:`BoundedTcpClient`,
:class:`WidthConverter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import numpy as np
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event as WyEvent

from voiceid.errors import ConfigError, ProtocolError
from voiceid.runtime.hub import Hub, LiveStream

log = logging.getLogger(__name__)

Encoding = Literal["pcm_s16le", "f32le"]
STREAM_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_EVENT_BYTES: Final = 1 << 20  # data + payload of one Wyoming event
SUPPORTED_WIDTHS: Final = (1, 2, 3, 4)


# -- configuration -----------------------------------------------------------------------


def parse_tcp_uri(uri: str, where: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` → (host, port); anything else is a ``ConfigError`` naming
    ``where`` (the config key) and the bad value. IPv6 hosts go in brackets."""
    example = "tcp://127.0.0.1:10300"
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(
            f"{where}: a Wyoming URI is required", hint=f"use tcp://HOST:PORT, e.g. {example}"
        )
    try:
        parts = urlsplit(uri.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(
            f"{where}: invalid Wyoming URI {uri!r}: {exc}",
            hint=f"use tcp://HOST:PORT, e.g. {example}",
        ) from None
    if parts.scheme != "tcp":
        got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise ConfigError(
            f"{where}: unsupported Wyoming URI {uri!r} ({got})",
            hint=f"use tcp://HOST:PORT, e.g. {example}",
        )
    if not parts.hostname:
        raise ConfigError(
            f"{where}: Wyoming URI {uri!r} has no host", hint=f"use tcp://HOST:PORT, e.g. {example}"
        )
    if port is None:
        raise ConfigError(
            f"{where}: Wyoming URI {uri!r} has no port", hint=f"use tcp://HOST:PORT, e.g. {example}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ConfigError(
            f"{where}: Wyoming URI {uri!r} may hold only a host and a port",
            hint=f"use tcp://HOST:PORT, e.g. {example}",
        )
    return parts.hostname, port


def _positive(where: str, value: float) -> None:
    if isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where} must be a positive number of seconds, got {value!r}")


def check_stream_name(where: str, name: str) -> None:
    if not isinstance(name, str) or not STREAM_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{where}: invalid stream name {name!r}",
            hint="1-64 characters from A-Z a-z 0-9 _ . - (use _ rather than - for nicer "
            "Home Assistant entity ids)",
        )


@dataclass(frozen=True)
class WyomingMicConfig:
    """One ``wyoming.mics[]`` entry (same fields as the config section).

    Raises ``ConfigError`` for a bad URI, stream name or timing.
    """

    uri: str  # tcp://HOST:PORT of the Wyoming mic program
    name: str = "wyoming_mic"  # stream name in events (and MQTT / Home Assistant entities)
    connect_timeout_s: float = 5.0
    idle_timeout_s: float = 30.0  # no event for this long while a stream is open: reconnect
    reconnect_min_s: float = 1.0  # backoff: min * 2^n, jittered into its upper half
    reconnect_max_s: float = 30.0  # ... capped here
    max_event_bytes: int = MAX_EVENT_BYTES  # a larger event is a protocol error

    def __post_init__(self) -> None:
        check_stream_name("wyoming.mics.name", self.name)
        parse_tcp_uri(self.uri, f"wyoming.mics ({self.name}).uri")
        for key in ("connect_timeout_s", "idle_timeout_s", "reconnect_min_s", "reconnect_max_s"):
            _positive(f"wyoming.mics ({self.name}).{key}", getattr(self, key))
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ConfigError(
                f"wyoming.mics ({self.name}): reconnect_max_s {self.reconnect_max_s} is below "
                f"reconnect_min_s {self.reconnect_min_s}"
            )
        if self.max_event_bytes < 4096:
            raise ConfigError(f"wyoming.mics ({self.name}).max_event_bytes must be >= 4096")

    @property
    def address(self) -> tuple[str, int]:
        return parse_tcp_uri(self.uri, f"wyoming.mics ({self.name}).uri")


# -- wire helpers --------------------------------------------------------------------------


def _length(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"Wyoming event header: bad {key} {value!r}")
    return value


async def read_event_bounded(
    reader: asyncio.StreamReader, max_bytes: int = MAX_EVENT_BYTES
) -> WyEvent | None:
    """The next Wyoming event (JSON header line, optional data, optional payload), or
    None at the end of the stream. Unlike ``wyoming.event.async_read_event`` it refuses
    (``ProtocolError``) an event whose data + payload exceed ``max_bytes`` before reading
    it, and malformed JSON instead of ignoring it."""
    try:
        line = await reader.readline()
    except ValueError:  # LimitOverrunError: a header line over the reader's limit (64 KiB)
        raise ProtocolError("Wyoming event header line too long") from None
    if not line or not line.endswith(b"\n"):
        return None  # closed (possibly mid-line)
    try:
        header = json.loads(line)
    except ValueError:
        raise ProtocolError(f"Wyoming event header is not JSON: {line[:80]!r}") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError(f"Wyoming event header without a type: {line[:80]!r}")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise ProtocolError(f"Wyoming event {header['type']!r}: data is not an object")
    data_length = _length(header, "data_length")
    payload_length = _length(header, "payload_length")
    if data_length + payload_length > max_bytes:
        raise ProtocolError(
            f"Wyoming event {header['type']!r} of {data_length + payload_length} bytes "
            f"(limit {max_bytes})"
        )
    payload: bytes | None = None
    try:
        if data_length:
            more = json.loads(await reader.readexactly(data_length))
            if not isinstance(more, dict):
                raise ProtocolError(f"Wyoming event {header['type']!r}: data is not an object")
            data = {**data, **more}
        if payload_length:
            payload = await reader.readexactly(payload_length)
    except asyncio.IncompleteReadError:
        return None
    except ValueError:
        raise ProtocolError(f"Wyoming event {header['type']!r}: data is not JSON") from None
    return WyEvent(type=header["type"], data=data, payload=payload)


class BoundedTcpClient(AsyncTcpClient):
    """``wyoming.client.AsyncTcpClient`` whose :meth:`read_event` is
    :func:`read_event_bounded` (one event is at most ``max_event_bytes``), with its own
    connect/read timeouts (wyoming < 1.10 has none)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_event_bytes: int = MAX_EVENT_BYTES,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> None:
        super().__init__(host, port)
        self.max_event_bytes = max_event_bytes
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    async def connect(self) -> None:
        async with asyncio.timeout(self.connect_timeout):
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def read_event(self) -> WyEvent | None:
        reader = self._reader
        if reader is None:
            raise ConnectionError("not connected")
        async with asyncio.timeout(self.read_timeout):
            return await read_event_bounded(reader, self.max_event_bytes)


@dataclass(frozen=True)
class AudioFormat:
    rate: int
    width: int  # bytes per sample
    channels: int

    @property
    def encoding(self) -> Encoding:
        """What the hub's decoder is given: s16 as is, other widths as float32."""
        return "pcm_s16le" if self.width == 2 else "f32le"

    def __str__(self) -> str:
        return f"{self.rate} Hz, {8 * self.width}-bit, {self.channels} ch"


def audio_format(data: dict[str, Any], what: str) -> AudioFormat:
    """The ``rate``/``width``/``channels`` of an ``audio-start``/``audio-chunk``."""
    values = []
    for key in ("rate", "width", "channels"):
        v = data.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ProtocolError(f"Wyoming {what}: bad or missing {key} {v!r}")
        values.append(v)
    fmt = AudioFormat(*values)
    if fmt.width not in SUPPORTED_WIDTHS:
        raise ProtocolError(
            f"Wyoming {what}: unsupported sample width {fmt.width} bytes",
            hint="send 8, 16, 24 or 32-bit integer PCM",
        )
    return fmt


class WidthConverter:
    """Wyoming PCM (little-endian integers of ``width`` bytes; 8-bit is unsigned) → bytes
    the hub's :class:`~voiceid.audio.convert.PcmDecoder` takes: 16-bit unchanged
    (``pcm_s16le``), 8/24/32-bit as ``f32le`` in [-1, 1). A chunk may end inside a
    sample: the rest is kept for the next one."""

    def __init__(self, width: int) -> None:
        if width not in SUPPORTED_WIDTHS:
            raise ProtocolError(f"unsupported sample width {width} bytes")
        self.width = width
        self._rest = b""

    def convert(self, audio: bytes) -> bytes:
        if self.width == 2:
            return audio  # the decoder keeps partial samples itself
        buf = self._rest + audio
        usable = len(buf) - len(buf) % self.width
        self._rest = buf[usable:]
        raw = np.frombuffer(buf, dtype=np.uint8, count=usable)
        if self.width == 1:
            x = (raw.astype(np.float32) - 128.0) / 128.0
        elif self.width == 4:
            x = raw.view("<i4").astype(np.float32) / np.float32(2.0**31)
        else:  # 24-bit: sign-extend 3 bytes into an int32
            b = raw.reshape(-1, 3).astype(np.int32)
            v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            v = np.where(v >= 1 << 23, v - (1 << 24), v)
            x = v.astype(np.float32) / np.float32(2.0**23)
        return bytes(np.ascontiguousarray(x, dtype="<f4").tobytes())


# -- the source ----------------------------------------------------------------------------


@dataclass
class WyomingMicStats:
    """Counters of one Wyoming mic source (for metrics and tests)."""

    connected: bool = False
    connects: int = 0  # successful connections
    connect_failures: int = 0
    disconnects: int = 0  # connections that ended (by the mic, an error or a stall)
    streams: int = 0  # live streams opened
    chunks: int = 0
    bytes_in: int = 0  # PCM bytes received
    errors: int = 0  # protocol errors and stalls
    last_error: str | None = None
    formats: list[str] = field(default_factory=list)  # formats seen (newest last, max 8)


class _MicSession:
    """One connection's audio → live streams (opened per format, closed on stop)."""

    def __init__(self, hub: Hub, cfg: WyomingMicConfig, stats: WyomingMicStats) -> None:
        self.hub = hub
        self.cfg = cfg
        self.stats = stats
        self.live: LiveStream | None = None
        self.format: AudioFormat | None = None
        self.converter: WidthConverter | None = None
        self.got_audio = False

    def handle(self, event: WyEvent) -> None:
        if AudioChunk.is_type(event.type):
            fmt = audio_format(event.data, "audio-chunk")
            if self.live is None or self.live.closed or fmt != self.format:
                self._open(fmt)
            assert self.live is not None and self.converter is not None
            audio = event.payload or b""
            self.stats.chunks += 1
            self.stats.bytes_in += len(audio)
            self.got_audio = True
            self.live.feed_bytes(self.converter.convert(audio))
        elif AudioStart.is_type(event.type):
            self._open(audio_format(event.data, "audio-start"))
        elif AudioStop.is_type(event.type):
            self.close()
        # anything else (info, ping, ...) is not for us

    def _open(self, fmt: AudioFormat) -> None:
        self.close()
        self.live = self.hub.open_stream(
            self.cfg.name, sample_rate=fmt.rate, encoding=fmt.encoding, channels=fmt.channels
        )
        self.format = fmt
        self.converter = WidthConverter(fmt.width)
        self.stats.streams += 1
        self.stats.formats = [*self.stats.formats, str(fmt)][-8:]
        log.info("wyoming mic %s: audio %s", self.cfg.name, fmt, extra={"stream": self.cfg.name})

    def close(self) -> None:
        if self.live is not None:
            self.live.close()
            self.live = None

    @property
    def streaming(self) -> bool:
        return self.live is not None and not self.live.closed


async def _session(
    hub: Hub, cfg: WyomingMicConfig, client: BoundedTcpClient, stats: WyomingMicStats
) -> bool:
    """Read one connection until it ends; True when it delivered audio."""
    session = _MicSession(hub, cfg, stats)
    try:
        while True:
            timeout = cfg.idle_timeout_s if session.streaming else None
            try:
                async with asyncio.timeout(timeout):
                    event = await client.read_event()
            except TimeoutError:
                stats.errors += 1
                stats.last_error = f"no audio for {cfg.idle_timeout_s:g} s"
                log.warning(
                    "wyoming mic %s: no audio for %g s; reconnecting",
                    cfg.name,
                    cfg.idle_timeout_s,
                    extra={"stream": cfg.name},
                )
                return session.got_audio
            if event is None:
                log.info("wyoming mic %s: the mic closed the connection", cfg.name)
                return session.got_audio
            session.handle(event)
            await asyncio.sleep(0)  # let the engine results and other sources run
    finally:
        session.close()


async def run_wyoming_mic(
    hub: Hub,
    cfg: WyomingMicConfig,
    *,
    stats: WyomingMicStats | None = None,
    rng: Callable[[], float] = random.random,
) -> None:
    """Stream the Wyoming mic at ``cfg.uri`` into the live stream ``cfg.name`` until
    cancelled, reconnecting forever. A bad URI raises ``ConfigError`` at once; nothing
    else the mic does ends the task."""
    from voiceid.sinks.mqtt import backoff

    host, port = cfg.address
    stats = stats if stats is not None else WyomingMicStats()
    attempt = failures = 0  # backoff step; failed connects in a row (for the log)
    label = f"wyoming mic {cfg.name} ({host}:{port})"
    while True:
        client = BoundedTcpClient(
            host, port, max_event_bytes=cfg.max_event_bytes, connect_timeout=cfg.connect_timeout_s
        )
        got_audio = False
        try:
            await client.connect()
        except (OSError, TimeoutError) as exc:
            stats.connect_failures += 1
            failures += 1
            reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            stats.last_error = f"connect: {reason}"
            level = logging.WARNING if failures == 1 or failures % 100 == 0 else logging.DEBUG
            log.log(level, "%s: cannot connect (%s); retrying", label, reason)
        else:
            failures = 0
            stats.connects += 1
            stats.connected = True
            log.info("%s: connected", label, extra={"stream": cfg.name})
            try:
                got_audio = await _session(hub, cfg, client, stats)
            except ProtocolError as exc:
                stats.errors += 1
                stats.last_error = str(exc)
                log.warning("%s: %s; reconnecting", label, exc, extra={"stream": cfg.name})
            except (OSError, ConnectionError) as exc:
                stats.last_error = str(exc) or type(exc).__name__
                log.info("%s: connection lost (%s)", label, stats.last_error)
            finally:
                stats.connected = False
                stats.disconnects += 1
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await client.disconnect()
        if got_audio:
            attempt = 0
        delay = backoff(attempt, cfg.reconnect_min_s, cfg.reconnect_max_s, rng)
        attempt += 1
        await asyncio.sleep(delay)
