"""Wyoming ASR proxy: speech-to-text for Home Assistant that also says *who* spoke.

voiceid listens as a Wyoming ``asr`` service (``wyoming.asr.uri``). For each utterance a
client (Home Assistant's Wyoming integration, a satellite) sends::

    transcribe → audio-start → audio-chunk ... → audio-stop        ← transcript

the proxy forwards every event unchanged to the real ASR (``wyoming.asr.upstream``, e.g.
``wyoming-faster-whisper``) while it keeps up to ``max_utterance_s`` of the audio (as
16 kHz float32). At ``audio-stop`` it embeds the whole utterance with the hub's
embedder (in a worker thread, one at a time) and identifies it against the profiles
the hub scores with now (``identify`` with the cosine threshold of the app: the stored
per-model threshold or the model card's, or ``wyoming.asr.threshold``). The identity is
published on the hub's bus as events of the stream ``wyoming.asr.stream`` (default
``wyoming_asr``), so the MQTT sink (Home Assistant entities) and WebSocket ``/events``
carry it like any stream's:

* an enrolled speaker: ``speaker_started`` (name, cosine), ``scores`` (top-k),
  ``speaker_ended`` (``reason: closed``, ``duration_s``: the utterance's length);
* anyone else: ``unknown_speaker`` (closest name and its cosine; both null when nobody
  is enrolled) and ``scores``;
* an utterance without speech (too short, silence, hum): no event.

The transcript the client gets back:

* enrolled speaker: ``prefix_format`` (default ``"[{name}] "``) + the upstream text, e.g.
  ``[alice] turn on the lights`` (``prefix_format: ""``: the text unchanged);
* not identified (unknown, no speech, nobody enrolled): the upstream text unchanged, or
  ``""`` with ``reject_unknown: true`` (Home Assistant then does nothing);
* identification paused (the stream's MQTT switch is OFF): the upstream text unchanged;
* the upstream ASR unreachable, failing or slower than ``transcribe_timeout_s``: ``""``
  (logged; the proxy keeps serving).

The transcript's ``context`` carries ``{"voiceid": {"speaker": NAME|null, "score": COS|null,
"known": BOOL}}`` next to the upstream's context. ``describe`` is answered with an
``info`` holding one ASR program ``voiceid`` whose models (names, languages, attribution)
are the upstream's: asked at start and at every ``describe`` within
``describe_timeout_s`` (Home Assistant waits 1 s for an info); the last answer is kept for
when the upstream is down or slow; before any answer, one model with
``fallback_languages``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray
from wyoming.asr import Transcribe, Transcript, TranscriptChunk
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event as WyEvent
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncTcpServer

from voiceid import __version__
from voiceid.audio.convert import PcmDecoder
from voiceid.errors import AudioError, ConfigError, ProfileError, ProtocolError
from voiceid.profiles.index import ProfileIndex
from voiceid.profiles.scoring import Match, identify
from voiceid.runtime.hub import Hub
from voiceid.sources.wyoming_mic import (
    MAX_EVENT_BYTES,
    AudioFormat,
    BoundedTcpClient,
    WidthConverter,
    audio_format,
    check_stream_name,
    parse_tcp_uri,
    read_event_bounded,
)
from voiceid.stream.events import Event, Scores, SpeakerEnded, SpeakerStarted, UnknownSpeaker

log = logging.getLogger(__name__)

PROGRAM_NAME: Final = "voiceid"
FALLBACK_MODEL: Final = "voiceid-proxy"
SAMPLE_RATE: Final = 16000  # what the embedder takes
WRITE_TIMEOUT_S: Final = 10.0  # an upstream that takes no audio for this long has failed
SHUTDOWN_TIMEOUT_S: Final = 3.0
Outcome = Literal["identified", "unknown", "no_profiles", "no_speech", "paused", "error"]


# -- configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class WyomingAsrConfig:
    """The ``wyoming.asr`` section (same fields); ``ConfigError`` for bad values."""

    enabled: bool = True
    uri: str = "tcp://127.0.0.1:10310"  # where voiceid listens (0.0.0.0: every interface)
    upstream: str = "tcp://127.0.0.1:10300"  # the real Wyoming ASR
    stream: str = "wyoming_asr"  # stream name of the identity events
    prefix_format: str = "[{name}] "  # "" keeps an enrolled speaker's transcript unchanged
    reject_unknown: bool = False  # True: speakers not identified get an empty transcript
    threshold: float | None = None  # cosine; None: the app's (stored per model, or the card's)
    top_k: int = 3  # names in the scores event
    connect_timeout_s: float = 5.0  # connecting to the upstream ASR
    transcribe_timeout_s: float = 30.0  # audio-stop → the upstream's transcript
    describe_timeout_s: float = 0.8  # describe → upstream info (Home Assistant waits 1 s)
    max_utterance_s: float = 30.0  # audio kept for identification (the rest is only forwarded)
    max_connections: int = 16  # concurrent clients; more are refused with an error event
    max_event_bytes: int = MAX_EVENT_BYTES  # one Wyoming event (data + payload)
    fallback_languages: Sequence[str] = ("en",)  # advertised before the upstream answered

    def __post_init__(self) -> None:
        parse_tcp_uri(self.uri, "wyoming.asr.uri")
        parse_tcp_uri(self.upstream, "wyoming.asr.upstream")
        check_stream_name("wyoming.asr.stream", self.stream)
        object.__setattr__(self, "fallback_languages", tuple(self.fallback_languages))
        try:
            self.prefix_format.format(name="alice")
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ConfigError(
                f"wyoming.asr.prefix_format {self.prefix_format!r} is not a valid format: {exc}",
                hint='the only placeholder is {name}, e.g. "[{name}] "; double literal braces',
            ) from None
        t = self.threshold
        if t is not None and (not math.isfinite(t) or not -1.0 <= t <= 1.0):
            raise ConfigError(f"wyoming.asr.threshold is a cosine in [-1, 1], got {t}")
        for key in (
            "connect_timeout_s",
            "transcribe_timeout_s",
            "describe_timeout_s",
            "max_utterance_s",
        ):
            value = getattr(self, key)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"wyoming.asr.{key} must be positive seconds, got {value!r}")
        if not 1 <= self.top_k <= 100:
            raise ConfigError(f"wyoming.asr.top_k must be in 1..100, got {self.top_k}")
        if self.max_connections < 1:
            raise ConfigError("wyoming.asr.max_connections must be >= 1")
        if self.max_event_bytes < 4096:
            raise ConfigError("wyoming.asr.max_event_bytes must be >= 4096")

    @property
    def host(self) -> str:
        return parse_tcp_uri(self.uri, "wyoming.asr.uri")[0]

    @property
    def port(self) -> int:
        return parse_tcp_uri(self.uri, "wyoming.asr.uri")[1]

    @property
    def upstream_address(self) -> tuple[str, int]:
        return parse_tcp_uri(self.upstream, "wyoming.asr.upstream")


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UtteranceIdentity:
    """Who spoke one utterance."""

    outcome: Outcome
    name: str | None = None  # the enrolled speaker (outcome "identified")
    matches: tuple[Match, ...] = ()  # best first
    threshold: float | None = None
    detail: str = ""  # why not identified (no speech, error text)

    @property
    def best(self) -> Match | None:
        return self.matches[0] if self.matches else None

    def context(self) -> dict[str, Any]:
        best = self.best
        return {
            "speaker": self.name,
            "score": None if best is None else round(best.score, 6),
            "known": self.name is not None,
        }


def final_text(text: str | None, identity: UtteranceIdentity, cfg: WyomingAsrConfig) -> str:
    """The transcript the client gets: see the module docstring."""
    if text is None:  # the upstream failed
        return ""
    if identity.outcome == "paused":
        return text
    if identity.name is not None:
        if not cfg.prefix_format or not text.strip():
            return text
        return cfg.prefix_format.format(name=identity.name) + text.lstrip()
    return "" if cfg.reject_unknown else text


@dataclass
class WyomingAsrStats:
    """Counters of the proxy (for metrics and tests)."""

    connections: int = 0  # accepted
    active: int = 0
    refused: int = 0  # over max_connections
    describes: int = 0
    utterances: int = 0  # audio-stop answered with a transcript
    identified: int = 0
    unknown: int = 0  # unknown, no profiles, no speech or error
    rejected: int = 0  # transcripts emptied by reject_unknown
    upstream_failures: int = 0
    protocol_errors: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def _project_url() -> str:
    """voiceid's URL from its package metadata ("" when the metadata has none)."""
    from importlib import metadata

    try:
        meta = metadata.metadata("voiceid")
    except metadata.PackageNotFoundError:
        return ""
    for entry in meta.get_all("Project-URL") or []:
        url = str(entry).partition(",")[2].strip()
        if url:
            return url
    home = meta.get_all("Home-page") or []
    return str(home[0]) if home else ""


def proxy_info(upstream: Info | None, cfg: WyomingAsrConfig) -> Info:
    """Our ``info``: one ASR program ``voiceid`` with the upstream's installed models
    (names, languages, attribution) or, without them, one model for ``fallback_languages``."""
    programs = [p for p in (upstream.asr if upstream else []) if p.installed] or (
        upstream.asr if upstream else []
    )
    models = [
        AsrModel(
            name=m.name,
            attribution=m.attribution,
            installed=m.installed,
            description=m.description,
            version=m.version,
            languages=list(m.languages),
        )
        for p in programs
        for m in p.models
    ]
    ours = Attribution(name="voiceid", url=_project_url())
    if not models:
        models = [
            AsrModel(
                name=FALLBACK_MODEL,
                attribution=ours,
                installed=True,
                description="the upstream ASR (not reachable yet)",
                version=None,
                languages=list(cfg.fallback_languages),
            )
        ]
    first = programs[0] if programs else None
    upstream_name = (first.description or first.name) if first else cfg.upstream
    extra: dict[str, Any] = {}
    if first is not None:  # e.g. requires_external_vad, prefers_* (newer wyoming versions)
        explicit = {"name", "attribution", "installed", "description", "version", "models"}
        explicit.add("supports_transcript_streaming")
        for f in dataclasses.fields(AsrProgram):
            if f.name not in explicit and hasattr(first, f.name):
                extra[f.name] = getattr(first, f.name)
    program = AsrProgram(
        name=PROGRAM_NAME,
        attribution=ours,
        installed=True,
        description=f"{upstream_name} with speaker identification (voiceid)",
        version=__version__,
        models=models,
        supports_transcript_streaming=False,  # one transcript, once the speaker is known
        **extra,
    )
    return Info(asr=[program])


# -- upstream ------------------------------------------------------------------------------


class _Upstream:
    """One request to the real ASR: forward events, collect its transcript."""

    def __init__(self, cfg: WyomingAsrConfig, stats: WyomingAsrStats) -> None:
        host, port = cfg.upstream_address
        self.where = f"{host}:{port}"
        self.cfg = cfg
        self.stats = stats
        self.client = BoundedTcpClient(
            host, port, max_event_bytes=cfg.max_event_bytes, connect_timeout=cfg.connect_timeout_s
        )
        self.error: str | None = None
        self.result: asyncio.Future[WyEvent | None] = asyncio.get_running_loop().create_future()
        self._reader: asyncio.Task[None] | None = None
        self._chunks: list[str] = []
        self._connected = False

    def fail(self, reason: str) -> None:
        if self.error is None and not self.result.done():
            self.error = reason
            self.stats.upstream_failures += 1
            log.warning("wyoming asr: upstream ASR %s: %s", self.where, reason)
            self.result.set_result(None)

    async def open(self, events: Sequence[WyEvent]) -> None:
        try:
            await self.client.connect()
        except TimeoutError:
            self.fail(f"cannot connect within {self.cfg.connect_timeout_s:g} s")
            return
        except OSError as exc:
            self.fail(f"cannot connect: {exc.strerror or exc}")
            return
        self._connected = True
        self._reader = asyncio.create_task(self._read())
        for event in events:
            await self.send(event)

    async def send(self, event: WyEvent) -> None:
        if self.error is not None or not self._connected:
            return
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await self.client.write_event(event)
        except TimeoutError:
            self.fail(f"takes no audio (write blocked for {WRITE_TIMEOUT_S:g} s)")
        except (OSError, RuntimeError, AssertionError) as exc:
            self.fail(f"connection lost: {exc or type(exc).__name__}")

    async def _read(self) -> None:
        try:
            while not self.result.done():
                event = await self.client.read_event()
                if event is None:
                    if self._chunks:  # streamed text, then closed without `transcript`
                        self._resolve(Transcript(text="".join(self._chunks)).event())
                    else:
                        self.fail("closed the connection without a transcript")
                    return
                if Transcript.is_type(event.type):
                    if not isinstance(event.data.get("text"), str):
                        self.fail("sent a transcript without text")
                    self._resolve(event)
                elif TranscriptChunk.is_type(event.type):
                    text = event.data.get("text")
                    if isinstance(text, str):
                        self._chunks.append(text)
                elif Error.is_type(event.type):
                    self.fail(f"error: {event.data.get('text')!r} ({event.data.get('code')})")
        except ProtocolError as exc:
            self.fail(f"protocol error: {exc}")
        except OSError as exc:
            self.fail(f"connection lost: {exc.strerror or exc}")

    def _resolve(self, event: WyEvent) -> None:
        if not self.result.done():
            self.result.set_result(event)

    async def transcript(self) -> WyEvent | None:
        """The upstream's ``transcript`` event, or None (failed, timed out)."""
        try:
            async with asyncio.timeout(self.cfg.transcribe_timeout_s):
                return await asyncio.shield(self.result)
        except TimeoutError:
            self.fail(f"no transcript within {self.cfg.transcribe_timeout_s:g} s")
            return None

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._connected:
            self._connected = False
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self.client.disconnect()


# -- one utterance -------------------------------------------------------------------------


class _Utterance:
    """The audio of one request: forwarded upstream, the first ``max_utterance_s`` kept."""

    def __init__(self, fmt: AudioFormat, upstream: _Upstream, max_s: float) -> None:
        self.upstream = upstream
        self.max_samples = int(max_s * SAMPLE_RATE)
        self.kept = 0
        self.parts: list[NDArray[np.float32]] = []
        self.seconds = 0.0  # audio received (all of it)
        self.undecodable: str | None = None
        self.fmt = fmt
        self.converter: WidthConverter | None = None
        self.decoder: PcmDecoder | None = None
        self._start_decoder(fmt)

    def _start_decoder(self, fmt: AudioFormat) -> None:
        self._flush()
        self.fmt = fmt
        try:
            self.decoder = PcmDecoder(fmt.rate, fmt.encoding, fmt.channels, SAMPLE_RATE)
            self.converter = WidthConverter(fmt.width)
        except ProtocolError as exc:
            self.decoder = self.converter = None
            self.undecodable = str(exc)

    def add(self, fmt: AudioFormat, audio: bytes) -> None:
        self.seconds += len(audio) / (fmt.rate * fmt.width * fmt.channels)
        if fmt != self.fmt:
            self._start_decoder(fmt)
        if self.decoder is None or self.converter is None or self.kept >= self.max_samples:
            return
        try:
            self._keep(self.decoder.decode(self.converter.convert(audio)))
        except ProtocolError as exc:
            self.undecodable = str(exc)
            self.decoder = None

    def _keep(self, x: NDArray[np.float32]) -> None:
        room = self.max_samples - self.kept
        if room > 0 and len(x):
            part = x[:room]
            self.parts.append(part)
            self.kept += len(part)

    def _flush(self) -> None:
        if self.decoder is not None:
            self._keep(self.decoder.flush())
            self.decoder = None

    def samples(self) -> NDArray[np.float32]:
        self._flush()
        if not self.parts:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self.parts).astype(np.float32, copy=False)


# -- the proxy -----------------------------------------------------------------------------


Threshold = float | Callable[[], float]


class WyomingAsrProxy:
    """The ``asr`` service; ``await serve()`` until cancelled.

    ``threshold``: the cosine an utterance needs (a number or a callable asked per
    utterance in the worker thread, e.g. ``app.threshold``); ``cfg.threshold`` wins when
    set; neither: the embedder's model card. ``index``: the profiles to identify against
    (default: the hub's current scorer, or the index under an AS-norm scorer).
    """

    def __init__(
        self,
        hub: Hub,
        cfg: WyomingAsrConfig,
        *,
        threshold: Threshold | None = None,
        index: Callable[[], ProfileIndex | None] | None = None,
        stats: WyomingAsrStats | None = None,
    ) -> None:
        self.hub = hub
        self.cfg = cfg
        self.stats = stats if stats is not None else WyomingAsrStats()
        self._threshold = threshold
        self._index = index or self._hub_index
        self._token = secrets.token_hex(3)
        self._seq = 0
        self._audio_s = 0.0  # stream time: audio seconds of every utterance so far
        self._identifying = asyncio.Semaphore(1)  # one embedding at a time (CPU)
        self._info: Info | None = None  # the upstream's last answer
        self._connections: set[_AsrConnection] = set()
        self._server: AsyncTcpServer | None = None
        self._prefetch: asyncio.Task[Info] | None = None
        self.port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def serve(self, started: asyncio.Future[int] | None = None) -> None:
        """Listen on ``cfg.uri`` until cancelled; ``started`` gets the bound port."""
        host, port = self.cfg.host, self.cfg.port
        server = AsyncTcpServer(host, port)
        try:
            # start(), not run(): run() installs its own SIGTERM handler in the loop
            await server.start(functools.partial(_AsrConnection, self))
        except BaseException as exc:
            if started is not None and not started.done():
                started.set_exception(exc)
            raise
        self._server = server
        listening = server._server  # the asyncio.Server (wyoming exposes no bound port)
        sockets = listening.sockets if isinstance(listening, asyncio.Server) else ()
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        up_host, up_port = self.cfg.upstream_address
        log.info(
            "Wyoming ASR proxy listening on %s:%d (upstream %s:%d, stream %s)",
            host,
            self.port,
            up_host,
            up_port,
            self.cfg.stream,
        )
        if started is not None and not started.done():
            started.set_result(self.port)
        # ask the upstream now: its info is ready for the first describe, and a wrong
        # upstream URI shows in the log at start
        self._prefetch = asyncio.create_task(self.info())
        try:
            await asyncio.Future()  # serve until cancelled
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        server = self._server
        if server is None:
            return
        self._server = None
        if self._prefetch is not None:
            self._prefetch.cancel()
        with contextlib.suppress(Exception):
            await server.stop()  # stops every handler (closes its socket) and the listener
        tasks = [c.task for c in self._connections if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_S)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        log.info("Wyoming ASR proxy closed (%d connections served)", self.stats.connections)

    # -- describe --------------------------------------------------------------------------
    async def upstream_info(self) -> Info | None:
        """Ask the upstream ASR for its ``info`` (None when it does not answer in time)."""
        host, port = self.cfg.upstream_address
        client = BoundedTcpClient(
            host,
            port,
            max_event_bytes=self.cfg.max_event_bytes,
            connect_timeout=self.cfg.connect_timeout_s,
        )

        async def ask() -> Info | None:
            await client.connect()
            try:
                await client.write_event(Describe().event())
                while (event := await client.read_event()) is not None:
                    if Info.is_type(event.type):
                        return Info.from_event(event)
                return None
            finally:
                with contextlib.suppress(Exception):
                    await client.disconnect()

        try:
            async with asyncio.timeout(self.cfg.describe_timeout_s):
                info = await ask()
        except TimeoutError:
            log.warning("wyoming asr: upstream %s:%d did not describe itself in time", host, port)
            return None
        except (OSError, ProtocolError, KeyError, TypeError, ValueError) as exc:
            log.warning("wyoming asr: cannot describe upstream %s:%d: %s", host, port, exc)
            return None
        if info is None:
            log.warning("wyoming asr: upstream %s:%d closed without an info", host, port)
        return info

    async def info(self) -> Info:
        """Our ``info`` (the upstream is asked each time; its last answer is kept)."""
        fresh = await self.upstream_info()
        if fresh is not None:
            self._info = fresh
        return proxy_info(self._info, self.cfg)

    # -- identification --------------------------------------------------------------------
    def _hub_index(self) -> ProfileIndex | None:
        scorer = self.hub.scorer
        if isinstance(scorer, ProfileIndex):
            return scorer
        inner = getattr(scorer, "index", None)  # ASNormScorer keeps its cosine index
        return inner if isinstance(inner, ProfileIndex) else None

    def threshold(self) -> float:
        """The cosine an utterance needs (blocking: may read the profile store)."""
        if self.cfg.threshold is not None:
            return self.cfg.threshold
        t = self._threshold
        if t is None:
            return float(self.hub.embedder.card.threshold)
        return float(t() if callable(t) else t)

    def _identify_blocking(
        self, samples: NDArray[np.float32], index: ProfileIndex
    ) -> UtteranceIdentity:
        threshold = self.threshold()
        embedding = self.hub.embedder.embed(samples, where="utterance")
        result = identify(index, embedding, threshold=threshold, top_k=self.cfg.top_k)
        if result.decision is not None:
            return UtteranceIdentity("identified", result.decision, result.matches, threshold)
        return UtteranceIdentity("unknown", None, result.matches, threshold)

    async def identify(self, samples: NDArray[np.float32]) -> UtteranceIdentity:
        """Who spoke ``samples`` (16 kHz float32); never raises."""
        if self.cfg.stream in self.hub.disabled:
            return UtteranceIdentity("paused")
        index = self._index()
        if index is None or len(index) == 0:
            return UtteranceIdentity("no_profiles", detail="no profiles enrolled")
        async with self._identifying:
            try:
                return await asyncio.to_thread(self._identify_blocking, samples, index)
            except AudioError as exc:
                return UtteranceIdentity("no_speech", detail=exc.message)
            except ProfileError as exc:
                return UtteranceIdentity("error", detail=str(exc))
            except Exception as exc:
                log.exception("wyoming asr: identification failed")
                return UtteranceIdentity("error", detail=str(exc) or type(exc).__name__)

    def publish(self, identity: UtteranceIdentity, seconds: float, stopped_at: float) -> None:
        """The identity as events of ``cfg.stream`` on the hub's bus."""
        self._audio_s += seconds
        if identity.outcome not in ("identified", "unknown", "no_profiles"):
            return
        stream = self.cfg.stream

        def stamp() -> dict[str, Any]:
            self._seq += 1
            return {
                "id": f"{self._token}-{stream}:{self._seq}",
                "stream": stream,
                "stream_time_s": round(self._audio_s, 3),
                "wall_time": time.time(),
                "latency_ms": round((time.monotonic() - stopped_at) * 1000.0, 3),
            }

        best = identity.best
        events: list[Event] = []
        if identity.name is not None and best is not None:
            events.append(SpeakerStarted(**stamp(), name=identity.name, score=best.score))
        else:
            events.append(
                UnknownSpeaker(
                    **stamp(),
                    score=None if best is None else best.score,
                    best=None if best is None else best.name,
                )
            )
        if identity.matches:
            events.append(Scores(**stamp(), top=tuple((m.name, m.score) for m in identity.matches)))
        if identity.name is not None:
            events.append(
                SpeakerEnded(
                    **stamp(), name=identity.name, duration_s=round(seconds, 3), reason="closed"
                )
            )
        self.hub.bus.publish(events)


class _AsrConnection(AsyncEventHandler):
    """One client connection (``wyoming.server.AsyncEventHandler``)."""

    def __init__(
        self, proxy: WyomingAsrProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super().__init__(reader, writer)
        self.proxy = proxy
        self.task: asyncio.Task[Any] | None = None
        self.transcribe: WyEvent | None = None
        self.utterance: _Utterance | None = None
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"

    async def run(self) -> None:
        """Like ``AsyncEventHandler.run`` with bounded reads, and nothing escapes."""
        proxy, stats = self.proxy, self.proxy.stats
        self.task = asyncio.current_task()
        self._is_running = True
        proxy._connections.add(self)
        stats.connections += 1
        stats.active += 1
        try:
            if len(proxy._connections) > proxy.cfg.max_connections:
                stats.refused += 1
                log.warning("wyoming asr: refusing %s: too many connections", self.peer)
                await self.write_event(Error(text="too many connections", code="busy").event())
                return
            while self._is_running:
                try:
                    event = await read_event_bounded(self.reader, proxy.cfg.max_event_bytes)
                    if event is None or not await self.handle_event(event):
                        break
                except ProtocolError as exc:  # malformed or oversized event, bad audio format
                    stats.protocol_errors += 1
                    log.warning("wyoming asr: %s: %s; closing", self.peer, exc)
                    with contextlib.suppress(Exception):
                        await self.write_event(Error(text=str(exc), code="protocol").event())
                    break
        except (OSError, RuntimeError) as exc:  # the client went away mid-write
            log.info("wyoming asr: %s: connection lost (%s)", self.peer, exc)
        except Exception:
            log.exception("wyoming asr: %s: internal error", self.peer)
        finally:
            stats.active -= 1
            proxy._connections.discard(self)
            with contextlib.suppress(Exception):
                await self.disconnect()
            self.writer.close()

    async def disconnect(self) -> None:
        utterance, self.utterance = self.utterance, None
        if utterance is not None:
            await utterance.upstream.close()

    async def handle_event(self, event: WyEvent) -> bool:
        if AudioChunk.is_type(event.type):
            fmt = audio_format(event.data, "audio-chunk")
            if self.utterance is None:  # no audio-start: begin with the chunk's format
                start = AudioStart(rate=fmt.rate, width=fmt.width, channels=fmt.channels)
                await self._begin(fmt, start.event())
            assert self.utterance is not None
            self.utterance.add(fmt, event.payload or b"")
            await self.utterance.upstream.send(event)
            return True
        if AudioStart.is_type(event.type):
            await self._begin(audio_format(event.data, "audio-start"), event)
            return True
        if AudioStop.is_type(event.type):
            await self._finish(event)
            return True
        if Transcribe.is_type(event.type):
            self.transcribe = event
            return True
        if Describe.is_type(event.type):
            self.proxy.stats.describes += 1
            await self.write_event((await self.proxy.info()).event())
            return True
        if Ping.is_type(event.type):
            await self.write_event(Pong(text=event.data.get("text")).event())
            return True
        return True  # other events are not for an ASR: ignored

    async def _begin(self, fmt: AudioFormat, start: WyEvent) -> None:
        if self.utterance is not None:  # audio-start again without a stop: start over
            await self.utterance.upstream.close()
        upstream = _Upstream(self.proxy.cfg, self.proxy.stats)
        self.utterance = _Utterance(fmt, upstream, self.proxy.cfg.max_utterance_s)
        transcribe, self.transcribe = self.transcribe, None
        await upstream.open([transcribe or Transcribe().event(), start])

    async def _finish(self, stop: WyEvent) -> None:
        proxy, cfg, stats = self.proxy, self.proxy.cfg, self.proxy.stats
        stopped_at = time.monotonic()
        utterance, self.utterance = self.utterance, None
        if utterance is None:  # audio-stop without audio
            await self.write_event(Transcript(text="").event())
            return
        upstream = utterance.upstream
        samples = utterance.samples()

        async def identify_and_publish() -> UtteranceIdentity:
            identity = await proxy.identify(samples)
            proxy.publish(identity, utterance.seconds, stopped_at)
            return identity

        who = asyncio.create_task(identify_and_publish())
        try:
            await upstream.send(stop)
            answer = await upstream.transcript()
        finally:
            await upstream.close()
            identity = await who
        text = answer.data.get("text") if answer is not None else None
        text = text if isinstance(text, str) else None
        out = final_text(text, identity, cfg)
        stats.utterances += 1
        stats.count(identity.outcome)
        if identity.name is not None:
            stats.identified += 1
        elif identity.outcome != "paused":
            stats.unknown += 1
            if cfg.reject_unknown and text:
                stats.rejected += 1
        best = identity.best
        log.info(
            "wyoming asr: %.1f s from %s: %s%s%s",
            utterance.seconds,
            self.peer,
            identity.name or identity.outcome,
            f" ({best.name} {best.score:.3f})" if best is not None else "",
            f" [{identity.detail}]" if identity.detail else "",
            extra={"stream": cfg.stream},
        )
        log.debug("wyoming asr: transcript %r -> %r", text, out)
        reply = Transcript(text=out).event()
        if answer is not None:
            for key in ("language", "context"):
                if answer.data.get(key) is not None:
                    reply.data[key] = answer.data[key]
        context = reply.data.get("context")
        reply.data["context"] = {
            **(context if isinstance(context, dict) else {}),
            "voiceid": identity.context(),
        }
        await self.write_event(reply)


async def serve_wyoming_asr(
    hub: Hub,
    cfg: WyomingAsrConfig,
    *,
    threshold: Threshold | None = None,
    started: asyncio.Future[int] | None = None,
    stats: WyomingAsrStats | None = None,
) -> None:
    """Serve the ASR proxy until cancelled (see :class:`WyomingAsrProxy`).

    ``started`` gets the bound port (``tcp://HOST:0``: an ephemeral one) once listening;
    a bind failure is set on it and raised.
    """
    await WyomingAsrProxy(hub, cfg, threshold=threshold, stats=stats).serve(started)
