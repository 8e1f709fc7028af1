"""The Wyoming mic source and ASR proxy against real Wyoming peers on loopback.

The peers are written with the ``wyoming`` package itself (``AsyncTcpServer`` +
``AsyncEventHandler``; ``AsyncTcpClient`` for Home Assistant's side): a mic program that
streams real LibriSpeech speech, and an ASR that answers a fixed transcript. The hub runs
the real GE2E model; nothing of voiceid is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event as WyEvent
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.server import AsyncEventHandler, AsyncTcpServer

from voiceid.audio.io import load_audio
from voiceid.errors import ConfigError, ProtocolError
from voiceid.models.embedder import Embedder
from voiceid.profiles.index import ProfileIndex
from voiceid.profiles.model import centroid
from voiceid.runtime.bus import Subscription
from voiceid.runtime.hub import EngineConfig, Hub
from voiceid.sources.wyoming_asr import (
    FALLBACK_MODEL,
    WyomingAsrConfig,
    WyomingAsrProxy,
    WyomingAsrStats,
)
from voiceid.sources.wyoming_mic import (
    WidthConverter,
    WyomingMicConfig,
    WyomingMicStats,
    parse_tcp_uri,
    read_event_bounded,
    run_wyoming_mic,
)
from voiceid.stream.decide import DecisionConfig
from voiceid.stream.events import Event
from voiceid.stream.pipeline import StreamConfig
from voiceid.stream.scheduler import SchedulerConfig

RATE = 16000
TEXT = "turn on the lights"
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 50.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pcm(x: np.ndarray, width: int = 2) -> bytes:
    """float samples (any shape [frames] or [frames, ch]) → little-endian integer PCM."""
    y = np.clip(x, -1.0, 1.0)
    if width == 2:
        return bytes((y * 32767.0).astype("<i2").tobytes())
    assert width == 4
    return bytes((y * 2147483000.0).astype("<i4").tobytes())


@dataclass
class Voices:
    embedder: Embedder
    index: ProfileIndex
    names: list[str]  # enrolled
    audio: dict[str, np.ndarray]  # enrolled name -> speech not used for enrollment
    unknown: str  # a speaker who is not enrolled and scores well below the threshold
    unknown_audio: np.ndarray
    threshold: float


@pytest.fixture(scope="module")
def voices(speakers: dict[str, list[Path]], ge2e_embedder: Embedder) -> Voices:
    names = sorted(speakers)[:2]
    cents, audio = [], {}
    for name in names:
        files = speakers[name]
        cents.append(centroid([ge2e_embedder.embed(load_audio(f)) for f in files[:3]]))
        audio[name] = np.concatenate([load_audio(f) for f in files[3:6]])
    index = ProfileIndex.from_matrix(ge2e_embedder.fingerprint, names, names, np.stack(cents))
    threshold = ge2e_embedder.card.threshold
    for other in sorted(set(speakers) - set(names)):
        clip = load_audio(speakers[other][3])
        best = max(s for _, s in index.top_k(ge2e_embedder.embed(clip), 2))
        if best < threshold - 0.1:
            return Voices(ge2e_embedder, index, names, audio, other, clip, threshold)
    raise AssertionError("no clearly unknown speaker in the shared audio")


def make_hub(voices: Voices) -> Hub:
    config = StreamConfig(
        scheduler=SchedulerConfig(),
        decision=DecisionConfig(enter=voices.embedder.card.threshold),
    )
    return Hub(voices.embedder, voices.index, config, EngineConfig(max_batch=4))


@contextlib.asynccontextmanager
async def started_hub(voices: Voices) -> AsyncIterator[Hub]:
    hub = make_hub(voices)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.close()


async def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


async def cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel ``task``; it must end within 5 s (a swallowed cancellation would hang
    the daemon's shutdown)."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done, f"{task} ignored its cancellation"


class Collector:
    """Every event of a bus subscription, read in the background."""

    def __init__(self, sub: Subscription) -> None:
        self.events: list[Event] = []
        self.task = asyncio.create_task(self._read(sub))

    async def _read(self, sub: Subscription) -> None:
        async for event in sub:
            self.events.append(event)

    def of_type(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.type == kind]


# -- unit parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "a Wyoming URI is required"),
        ("http://host:10300", "unsupported Wyoming URI 'http://host:10300' (scheme 'http')"),
        ("unix:///run/mic.sock", "scheme 'unix'"),
        ("host:10300", "unsupported Wyoming URI"),
        ("tcp://host", "has no port"),
        ("tcp://:10300", "has no host"),
        ("tcp://host:99999", "invalid Wyoming URI"),
        ("tcp://host:port", "invalid Wyoming URI"),
        ("tcp://host:10300/path", "may hold only a host and a port"),
    ],
)
def test_bad_uris_are_config_errors(uri: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^wyoming\.mics") as err:
        WyomingMicConfig(uri=uri)
    assert message in str(err.value) and "tcp://HOST:PORT" in str(err.value)
    with pytest.raises(ConfigError, match=r"^wyoming\.asr\.upstream: ") as err:
        WyomingAsrConfig(upstream=uri)
    assert message in str(err.value)
    with pytest.raises(ConfigError, match=r"^wyoming\.asr\.uri: "):
        WyomingAsrConfig(uri=uri)


def test_good_uris_and_other_config_errors() -> None:
    assert parse_tcp_uri("tcp://127.0.0.1:10300", "x") == ("127.0.0.1", 10300)
    assert parse_tcp_uri("tcp://[::1]:10300", "x") == ("::1", 10300)
    assert parse_tcp_uri(" tcp://mic.lan:10600/ ", "x") == ("mic.lan", 10600)
    assert WyomingAsrConfig(uri="tcp://0.0.0.0:0").port == 0
    with pytest.raises(ConfigError, match="prefix_format"):
        WyomingAsrConfig(prefix_format="[{nam}] ")
    with pytest.raises(ConfigError, match="threshold is a cosine"):
        WyomingAsrConfig(threshold=2.0)
    with pytest.raises(ConfigError, match="invalid stream name"):
        WyomingMicConfig(uri="tcp://h:1", name="kitchen mic")
    with pytest.raises(ConfigError, match="reconnect_max_s"):
        WyomingMicConfig(uri="tcp://h:1", reconnect_min_s=5, reconnect_max_s=1)


def test_width_conversion() -> None:
    """8-bit (unsigned), 24- and 32-bit PCM become float32, split anywhere."""
    values = np.array([-1.0, -0.5, 0.0, 0.25, 0.5 - 2**-9], dtype=np.float64)
    cases = {
        1: np.round(values * 128 + 128).astype(np.uint8).tobytes(),
        3: b"".join(round(v * 2**23).to_bytes(3, "little", signed=True) for v in values),
        4: np.round(values * 2**31).astype("<i4").tobytes(),
    }
    for width, raw in cases.items():
        conv = WidthConverter(width)
        out = b"".join(conv.convert(raw[i : i + 2]) for i in range(0, len(raw), 2))
        got = np.frombuffer(out, dtype="<f4")
        np.testing.assert_allclose(got, values, atol=1.0 / 128, err_msg=f"width {width}")
    data = np.arange(-4, 4, dtype="<i2").tobytes()
    assert WidthConverter(2).convert(data) == data  # s16 goes to the decoder unchanged
    with pytest.raises(ProtocolError):
        WidthConverter(5)


def test_oversized_and_malformed_events_are_refused() -> None:
    async def read(raw: bytes, limit: int = 4096) -> WyEvent | None:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await read_event_bounded(reader, limit)

    async def main() -> None:
        big = b'{"type": "audio-chunk", "payload_length": 5000}\n' + b"\x00" * 5000
        with pytest.raises(ProtocolError, match="5000 bytes"):
            await read(big)
        with pytest.raises(ProtocolError, match="not JSON"):
            await read(b"hello\n")
        ok = b'{"type": "audio-stop", "data": {"timestamp": 5}}\n'
        event = await read(ok)
        assert event is not None and event.type == "audio-stop" and event.data["timestamp"] == 5
        assert await read(b'{"type": "audio-chunk", "payload_length": 10}\nabc') is None

    run(main())


# -- a Wyoming mic program -------------------------------------------------------------------


class MicHandler(AsyncEventHandler):
    """Like wyoming-mic-external: audio-start, then chunks forever (looped speech)."""

    def __init__(self, audio: bytes, fmt: tuple[int, int, int], speed: float, *a: Any) -> None:
        super().__init__(*a)
        self.audio, self.fmt, self.speed = audio, fmt, speed
        self.streamer = asyncio.create_task(self._stream())

    async def handle_event(self, event: WyEvent) -> bool:
        return True  # output only

    async def _stream(self) -> None:
        rate, width, channels = self.fmt
        samples = 1024
        step = samples * width * channels
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
            while True:
                for i in range(0, len(self.audio) - step + 1, step):
                    chunk = AudioChunk(rate, width, channels, self.audio[i : i + step])
                    await self.write_event(chunk.event())
                    await asyncio.sleep(samples / rate / self.speed)

    async def disconnect(self) -> None:
        self.streamer.cancel()


class StallingMicHandler(AsyncEventHandler):
    """A mic that sends a short stream, stops it, starts another, then goes quiet."""

    async def handle_event(self, event: WyEvent) -> bool:
        return True

    async def run(self) -> None:
        chunk = AudioChunk(RATE, 2, 1, bytes(2048)).event()
        for _ in range(2):
            await self.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
            for _ in range(5):
                await self.write_event(chunk)
            await self.write_event(AudioStop().event())
        await self.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        await self.write_event(chunk)
        await super().run()  # reads until the client goes


def test_mic_audio_stop_and_a_stalled_mic(voices: Voices) -> None:
    port = free_port()
    cfg = WyomingMicConfig(
        uri=f"tcp://127.0.0.1:{port}",
        idle_timeout_s=0.3,
        reconnect_min_s=0.05,
        reconnect_max_s=0.1,
    )

    async def main() -> None:
        async with started_hub(voices) as hub:
            server = AsyncTcpServer("127.0.0.1", port)
            await server.start(StallingMicHandler)
            stats = WyomingMicStats()
            source = asyncio.create_task(run_wyoming_mic(hub, cfg, stats=stats))
            try:
                await wait_until(lambda: stats.connects >= 2, what="reconnect after a stall")
                assert stats.streams >= 3 and stats.errors >= 1
                assert stats.last_error == "no audio for 0.3 s"
                assert not source.done()
            finally:
                await cancelled(source)
                await server.stop()
            assert "wyoming_mic" not in hub.streams

    run(main())


async def start_mic(port: int, audio: bytes, fmt: tuple[int, int, int]) -> AsyncTcpServer:
    server = AsyncTcpServer("127.0.0.1", port)
    await server.start(lambda r, w: MicHandler(audio, fmt, 8.0, r, w))
    return server


def test_mic_source_names_the_speaker_and_reconnects_after_a_restart(voices: Voices) -> None:
    first, second = voices.names
    port = free_port()
    cfg = WyomingMicConfig(
        uri=f"tcp://127.0.0.1:{port}",
        name="kitchen",
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
        idle_timeout_s=5.0,
    )
    import soxr

    x44 = soxr.resample(voices.audio[second], RATE, 44100)
    stereo32 = pcm(np.stack([x44, x44 * 0.8], axis=1), width=4)

    async def main() -> None:
        async with started_hub(voices) as hub:
            events = Collector(hub.bus.subscribe("kitchen", maxsize=10_000))
            stats = WyomingMicStats()
            mic = await start_mic(port, pcm(voices.audio[first]), (RATE, 2, 1))
            source = asyncio.create_task(run_wyoming_mic(hub, cfg, stats=stats))
            try:
                await wait_until(lambda: bool(events.of_type("speaker_started")), what="speaker")
                started = events.of_type("speaker_started")[0]
                assert getattr(started, "name", None) == first, started
                assert "kitchen" in hub.streams and stats.connected

                await mic.stop()  # the mic program goes away: the stream ends
                await wait_until(lambda: "kitchen" not in hub.streams, what="stream closed")
                await wait_until(lambda: stats.disconnects == 1, what="disconnect")
                ended = events.of_type("speaker_ended")
                assert ended and getattr(ended[-1], "reason", None) == "closed", ended
                await asyncio.sleep(0.5)  # refused connects meanwhile: backoff, no crash
                assert stats.connect_failures >= 1 and not source.done()

                # back, with 44.1 kHz 32-bit stereo and the other speaker
                n_before = len(events.of_type("speaker_started"))
                mic = await start_mic(port, stereo32, (44100, 4, 2))
                await wait_until(lambda: stats.connects == 2, what="reconnect")
                await wait_until(
                    lambda: len(events.of_type("speaker_started")) > n_before, what="2nd speaker"
                )
                again = events.of_type("speaker_started")[n_before]
                assert getattr(again, "name", None) == second, again
                assert stats.formats == ["16000 Hz, 16-bit, 1 ch", "44100 Hz, 32-bit, 2 ch"]
                assert stats.streams == 2 and stats.errors == 0
            finally:
                await cancelled(source)
                await mic.stop()
            assert "kitchen" not in hub.streams  # cancelling closed the stream

    run(main())


# -- a Wyoming ASR -------------------------------------------------------------------------


@dataclass
class AsrLog:
    """What the fake ASR received, per request."""

    transcribes: list[dict[str, Any]] = field(default_factory=list)
    starts: list[dict[str, Any]] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)
    describes: int = 0
    mode: str = "normal"  # "silent": never answers; "error": an error event; "streaming"


FAKE_INFO = Info(
    asr=[
        AsrProgram(
            name="fake-whisper",
            attribution=Attribution(name="Test Lab", url="https://example.org/fake"),
            installed=True,
            description="Fake Whisper",
            version="1.2.3",
            models=[
                AsrModel(
                    name="tiny-int8",
                    attribution=Attribution(name="OpenAI", url="https://example.org/whisper"),
                    installed=True,
                    description="tiny",
                    version="1",
                    languages=["en", "de"],
                )
            ],
        )
    ]
)


class AsrHandler(AsyncEventHandler):
    """Like wyoming-faster-whisper: collects audio, answers one transcript, closes."""

    def __init__(self, log: AsrLog, *a: Any) -> None:
        super().__init__(*a)
        self.log = log
        self.audio = bytearray()

    async def handle_event(self, event: WyEvent) -> bool:
        if Describe.is_type(event.type):
            self.log.describes += 1
            await self.write_event(FAKE_INFO.event())
        elif Transcribe.is_type(event.type):
            self.log.transcribes.append(dict(event.data))
        elif AudioStart.is_type(event.type):
            self.log.starts.append(dict(event.data))
        elif AudioChunk.is_type(event.type):
            self.audio += event.payload or b""
        elif AudioStop.is_type(event.type):
            self.log.audio.append(bytes(self.audio))
            mode = self.log.mode
            if mode == "silent":
                return True
            if mode == "error":
                await self.write_event(Error(text="model exploded", code="boom").event())
                return False
            if mode == "streaming":  # the events of a streaming ASR (wyoming >= 1.7)
                await self.write_event(TranscriptStart(language="en").event())
                for word in TEXT.split():
                    await self.write_event(TranscriptChunk(text=word + " ").event())
            await self.write_event(Transcript(text=TEXT, language="en", context={"asr": 1}).event())
            if mode == "streaming":
                await self.write_event(TranscriptStop().event())
            return False
        return True


@contextlib.asynccontextmanager
async def fake_asr() -> AsyncIterator[tuple[int, AsrLog]]:
    port, log = free_port(), AsrLog()
    server = AsyncTcpServer("127.0.0.1", port)
    await server.start(lambda r, w: AsrHandler(log, r, w))
    try:
        yield port, log
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def proxy(
    hub: Hub, upstream_port: int, **cfg: Any
) -> AsyncIterator[tuple[int, WyomingAsrStats]]:
    config = WyomingAsrConfig(
        uri="tcp://127.0.0.1:0",
        upstream=f"tcp://127.0.0.1:{upstream_port}",
        connect_timeout_s=2.0,
        **cfg,
    )
    stats = WyomingAsrStats()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    p = WyomingAsrProxy(hub, config, threshold=hub.embedder.card.threshold, stats=stats)
    task = asyncio.create_task(p.serve(started))
    try:
        yield await asyncio.wait_for(started, 10), stats
    finally:
        await cancelled(task)


async def ha_transcribe(
    port: int, audio: bytes, fmt: tuple[int, int, int] = (RATE, 2, 1), language: str = "en"
) -> WyEvent:
    """What Home Assistant's Wyoming STT does: transcribe, audio, stop, read the transcript."""
    rate, width, channels = fmt
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language=language).event())
        await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
        step = 1024 * width * channels
        for i in range(0, len(audio), step):
            await client.write_event(AudioChunk(rate, width, channels, audio[i : i + step]).event())
        await client.write_event(AudioStop().event())
        while True:
            event = await client.read_event()
            assert event is not None, "the proxy closed without a transcript"
            if Transcript.is_type(event.type):
                return event


def test_asr_proxy_prefixes_the_enrolled_speaker_and_publishes_the_identity(
    voices: Voices,
) -> None:
    name = voices.names[0]
    utterance = pcm(voices.audio[name][: 4 * RATE])

    async def main() -> None:
        async with started_hub(voices) as hub, fake_asr() as (up, asr_log):
            events = Collector(hub.bus.subscribe("wyoming_asr"))
            async with proxy(hub, up) as (port, stats):
                reply = await ha_transcribe(port, utterance)
                assert reply.data["text"] == f"[{name}] {TEXT}"
                assert reply.data["language"] == "en"
                context = reply.data["context"]
                assert context["asr"] == 1 and context["voiceid"]["speaker"] == name
                assert context["voiceid"]["known"] and context["voiceid"]["score"] >= 0.75
                # the upstream got the request unchanged
                assert asr_log.transcribes == [{"language": "en"}]
                assert asr_log.starts[0]["rate"] == RATE and asr_log.starts[0]["width"] == 2
                assert asr_log.audio == [utterance]

                # another format (48 kHz stereo), the other speaker
                other = voices.names[1]
                import soxr

                x48 = soxr.resample(voices.audio[other][: 4 * RATE], RATE, 48000)
                stereo = pcm(np.stack([x48, x48], axis=1))
                reply = await ha_transcribe(port, stereo, (48000, 2, 2))
                assert reply.data["text"] == f"[{other}] {TEXT}"
                assert asr_log.audio[1] == stereo
                assert stats.utterances == 2 and stats.identified == 2
                assert stats.upstream_failures == 0
                await wait_until(lambda: stats.active == 0, what="connections closed")
            await wait_until(lambda: len(events.of_type("speaker_ended")) == 2, what="events")
            kinds = [e.type for e in events.events]
            assert kinds == ["speaker_started", "scores", "speaker_ended"] * 2, kinds
            first, _, end = events.events[:3]
            assert getattr(first, "name", None) == name and getattr(first, "score", 0) >= 0.75
            assert getattr(end, "reason", None) == "closed"
            assert abs(getattr(end, "duration_s", 0) - 4.0) < 0.01
            assert len({e.id for e in events.events}) == 6
            assert all(e.stream == "wyoming_asr" for e in events.events)

    run(main())


def test_asr_proxy_unknown_speaker_plain_or_rejected(voices: Voices) -> None:
    unknown = pcm(voices.unknown_audio[: 5 * RATE])
    silence = pcm(np.zeros(RATE, dtype=np.float32))

    async def main() -> None:
        async with started_hub(voices) as hub, fake_asr() as (up, _):
            events = Collector(hub.bus.subscribe("wyoming_asr"))
            async with proxy(hub, up) as (port, stats):
                reply = await ha_transcribe(port, unknown)
                assert reply.data["text"] == TEXT  # passed through unchanged
                assert reply.data["context"]["voiceid"]["known"] is False
                assert (await ha_transcribe(port, silence)).data["text"] == TEXT
                assert stats.outcomes == {"unknown": 1, "no_speech": 1}
            async with proxy(hub, up, reject_unknown=True) as (port, stats):
                assert (await ha_transcribe(port, unknown)).data["text"] == ""
                assert (await ha_transcribe(port, silence)).data["text"] == ""
                assert stats.rejected == 2
                enrolled = pcm(voices.audio[voices.names[1]][: 4 * RATE])
                reply = await ha_transcribe(port, enrolled)
                assert reply.data["text"] == f"[{voices.names[1]}] {TEXT}"
                # identification paused (Home Assistant's switch): the text passes
                hub.set_enabled("wyoming_asr", False)
                assert (await ha_transcribe(port, unknown)).data["text"] == TEXT
                hub.set_enabled("wyoming_asr", True)
            async with proxy(hub, up, prefix_format="") as (port, _):
                enrolled = pcm(voices.audio[voices.names[0]][: 4 * RATE])
                assert (await ha_transcribe(port, enrolled)).data["text"] == TEXT
            await wait_until(lambda: len(events.of_type("unknown_speaker")) == 2, what="events")
            unknown_event = events.of_type("unknown_speaker")[0]
            assert getattr(unknown_event, "best", None) in voices.names
            assert getattr(unknown_event, "score", 1.0) < voices.threshold

    run(main())


def test_asr_describe_and_an_unreachable_upstream(voices: Voices) -> None:
    async def describe(port: int) -> Info:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Describe().event())
            while (event := await client.read_event()) is not None:
                if Info.is_type(event.type):
                    return Info.from_event(event)
        raise AssertionError("no info")

    async def main() -> None:
        async with started_hub(voices) as hub:
            async with fake_asr() as (up, asr_log), proxy(hub, up) as (port, _):
                info = await describe(port)
                assert asr_log.describes >= 1  # asked at start and for this describe
            (program,) = info.asr
            assert program.name == "voiceid" and program.installed
            assert program.attribution.name == "voiceid"
            assert program.description == "Fake Whisper with speaker identification (voiceid)"
            assert not program.supports_transcript_streaming
            (model,) = program.models
            assert (model.name, model.languages, model.installed) == (
                "tiny-int8",
                ["en", "de"],
                True,
            )
            assert model.attribution.name == "OpenAI"

            dead = free_port()  # nothing listens there
            cfg = {"fallback_languages": ["de", "fr"]}
            async with proxy(hub, dead, **cfg) as (port, stats):
                info = await describe(port)
                assert [m.name for m in info.asr[0].models] == [FALLBACK_MODEL]
                assert info.asr[0].models[0].languages == ["de", "fr"]
                name = voices.names[0]
                events = Collector(hub.bus.subscribe("wyoming_asr"))
                reply = await ha_transcribe(port, pcm(voices.audio[name][: 3 * RATE]))
                assert reply.data["text"] == ""  # no ASR, no command
                assert reply.data["context"]["voiceid"]["speaker"] == name  # still identified
                assert stats.upstream_failures == 1
                # and it keeps serving
                assert (await ha_transcribe(port, pcm(voices.unknown_audio))).data["text"] == ""
                await wait_until(lambda: bool(events.of_type("speaker_started")), what="event")

    run(main())


def test_asr_upstream_failures_and_bad_clients_never_break_the_proxy(voices: Voices) -> None:
    name = voices.names[1]
    utterance = pcm(voices.audio[name][: 3 * RATE])

    async def main() -> None:
        async with (
            started_hub(voices) as hub,
            fake_asr() as (up, asr_log),
            proxy(hub, up, transcribe_timeout_s=0.5) as (port, stats),
        ):
            asr_log.mode = "silent"  # never answers: the timeout gives ""
            assert (await ha_transcribe(port, utterance)).data["text"] == ""
            asr_log.mode = "error"
            assert (await ha_transcribe(port, utterance)).data["text"] == ""
            assert stats.upstream_failures == 2
            asr_log.mode = "streaming"  # chunks first, then the transcript
            reply = await ha_transcribe(port, utterance)
            assert reply.data["text"] == f"[{name}] {TEXT}"

            # a client that speaks no Wyoming gets an error event and is closed
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            error = await asyncio.wait_for(read_event_bounded(reader), 5)
            assert error is not None and error.type == "error", error
            assert "not JSON" in error.data["text"]
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
            writer.close()
            # one that leaves mid-utterance costs nothing
            client = AsyncTcpClient("127.0.0.1", port)
            await client.connect()
            await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
            await client.write_event(AudioChunk(RATE, 2, 1, utterance[:32000]).event())
            await client.disconnect()
            # audio-stop without audio: an empty transcript, as faster-whisper does
            async with AsyncTcpClient("127.0.0.1", port) as c:
                await c.write_event(AudioStop().event())
                event = await c.read_event()
                assert event is not None and event.data["text"] == ""
            asr_log.mode = "normal"
            assert (await ha_transcribe(port, utterance)).data["text"] == f"[{name}] {TEXT}"
            assert stats.protocol_errors == 1
            await wait_until(lambda: stats.active == 0, what="connections closed")
            # a client mid-utterance when the daemon stops: closed, promptly
            lingering = AsyncTcpClient("127.0.0.1", port)
            await lingering.connect()
            await lingering.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
            await lingering.write_event(AudioChunk(RATE, 2, 1, utterance[:3200]).event())
            await wait_until(lambda: stats.active == 1, what="lingering client")
            stopping = time.monotonic()
        assert await asyncio.wait_for(lingering.read_event(), 5) is None
        assert time.monotonic() - stopping < 4.0
        await lingering.disconnect()

    run(main())
