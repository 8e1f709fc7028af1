"""The WebSocket server over real loopback sockets, with real ``websockets`` clients, the
real GE2E model and real speech: good streams, bad clients, /events, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voiceid.audio.io import load_audio
from voiceid.config import WebSocketSection
from voiceid.models.embedder import Embedder
from voiceid.profiles.index import ProfileIndex
from voiceid.profiles.model import centroid
from voiceid.runtime.hub import EngineConfig, Hub
from voiceid.sources.protocol import STOP_MESSAGE
from voiceid.sources.websocket import WebSocketStats, serve_websocket
from voiceid.stream.decide import DecisionConfig
from voiceid.stream.pipeline import Scorer, StreamConfig
from voiceid.stream.scheduler import SchedulerConfig

RATE = 16000
FRAME_BYTES = 3200  # 100 ms of pcm_s16le mono
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run one test's coroutine in a fresh event loop (no pytest asyncio plugin)."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def pcm16(x: np.ndarray) -> bytes:
    return bytes((np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())


@dataclass
class Voices:
    embedder: Embedder
    index: ProfileIndex  # two enrolled speakers
    names: list[str]
    pcm: dict[str, bytes]  # enrolled name -> s16le speech not used for enrollment
    audio: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def voices(speakers: dict[str, list[Path]], ge2e_embedder: Embedder) -> Voices:
    names = sorted(speakers)[:2]
    cents, audio = [], {}
    for name in names:
        files = speakers[name]
        cents.append(centroid([ge2e_embedder.embed(load_audio(f)) for f in files[:3]]))
        audio[name] = np.concatenate([load_audio(f) for f in files[3:6]])
    index = ProfileIndex.from_matrix(ge2e_embedder.fingerprint, names, names, np.stack(cents))
    pcm = {n: pcm16(a) for n, a in audio.items()}
    return Voices(ge2e_embedder, index, names, pcm, audio)


def stream_config(embedder: Embedder, **decision: Any) -> StreamConfig:
    return StreamConfig(
        scheduler=SchedulerConfig(),
        decision=DecisionConfig(enter=embedder.card.threshold, **decision),
    )


@dataclass
class Daemon:
    hub: Hub
    port: int
    stats: WebSocketStats
    task: asyncio.Task[None]

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def daemon(
    voices: Voices,
    scorer: Scorer | None = None,
    config: StreamConfig | None = None,
    **ws: Any,
) -> AsyncIterator[Daemon]:
    """A hub (real GE2E) and the WebSocket server on an ephemeral loopback port."""
    hub = Hub(
        voices.embedder,
        scorer if scorer is not None else voices.index,
        config or stream_config(voices.embedder),
        EngineConfig(max_batch=8),
    )
    await hub.start()
    cfg = WebSocketSection(host="127.0.0.1", port=0, **ws)
    stats = WebSocketStats()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_websocket(hub, cfg, started=started, stats=stats))
    try:
        port = await asyncio.wait_for(started, 10)
        yield Daemon(hub, port, stats, task)
    finally:
        await Daemon(hub, 0, stats, task).stop()
        await hub.close()


async def wait_until(check: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.01)


class Client:
    """A /stream or /events client that reads every message in the background."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())
        self.feeder: asyncio.Task[None] | None = None

    @classmethod
    async def stream(cls, d: Daemon, name: str, **start: Any) -> Client:
        ws = await connect(d.url("/stream"), compression=None)
        msg = {"type": "start", "stream": name, "sample_rate": RATE, **start}
        await ws.send(json.dumps(msg))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready" and ready["stream"] == name, ready
        return cls(ws)

    @classmethod
    async def events(cls, d: Daemon, query: str = "") -> Client:
        ws = await connect(d.url("/events" + query), compression=None)
        hello = json.loads(await ws.recv())
        assert hello["type"] == "subscribed", hello
        return cls(ws)

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                self.messages.append(json.loads(raw))

    @property
    def events_seen(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] not in ("error", "ready", "subscribed")]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def feed_forever(self, pcm: bytes, *, speed: float = 10.0) -> None:
        """Send ``pcm`` over and over in 100 ms frames at ``speed`` x real time."""

        async def feed() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    for i in range(0, len(pcm), FRAME_BYTES):
                        await self.ws.send(pcm[i : i + FRAME_BYTES])
                        await asyncio.sleep(0.1 / speed)

        self.feeder = asyncio.create_task(feed())

    async def more_events(self, n: int = 2, timeout: float = 15.0) -> None:
        """Wait until ``n`` more events than now have arrived."""
        have = len(self.events_seen)
        await wait_until(lambda: len(self.events_seen) >= have + n, timeout, "more events")

    async def stop(self) -> None:
        if self.feeder is not None:
            self.feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.feeder
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(STOP_MESSAGE)
        await asyncio.wait_for(self.reader, 15)

    async def closed(self, timeout: float = 15.0) -> tuple[int | None, str | None]:
        await asyncio.wait_for(asyncio.shield(self.reader), timeout)
        return self.ws.close_code, self.ws.close_reason


async def bad_client(d: Daemon, frames: list[str | bytes]) -> Client:
    """Connect to /stream, send ``frames``, and read everything until the server closes."""
    ws = await connect(d.url("/stream"), compression=None)
    client = Client(ws)
    with contextlib.suppress(ConnectionClosed):
        for frame in frames:
            await ws.send(frame)
    await client.closed()
    return client


def start(name: str = "bad", **fields: Any) -> str:
    return json.dumps({"type": "start", "stream": name, "sample_rate": RATE, **fields})


async def good_stream(d: Daemon, voices: Voices, name: str = "good") -> Client:
    good = await Client.stream(d, name)
    good.feed_forever(voices.pcm[voices.names[0]])
    await wait_until(lambda: bool(good.of_type("speaker_started")), what="good speaker_started")
    return good


async def check_good_survives(d: Daemon, good: Client, voices: Voices) -> None:
    await good.more_events(2)
    await good.stop()
    assert good.of_type("speaker_started")[0]["name"] == voices.names[0]
    assert good.ws.close_code == 1000 and good.ws.close_reason == "stream stopped"
    assert good.messages[-1]["type"] == "speaker_ended"
    assert good.messages[-1]["reason"] == "closed"


# -- bad clients: each gets a clear close code and reason; the good stream carries on ------

NAN_AT = 1600  # sample index of the NaN in the second f32le frame
BAD_CASES: dict[str, tuple[Callable[[], list[str | bytes]], int, str, str]] = {
    # case: (frames, close code, reason substring, stats counter)
    "binary_first": (lambda: [b"\x00" * 640], 1008, "expected a start message", "protocol"),
    "not_json": (lambda: ["{oops"], 1008, "not valid JSON", "protocol"),
    "unknown_field": (
        lambda: [start(rate=16000)],
        1008,
        'unknown field(s) in start message: "rate"',
        "protocol",
    ),
    "bad_rate": (
        lambda: [start(sample_rate=1000)],
        1008,
        "unsupported sample_rate 1000",
        "protocol",
    ),
    "bad_encoding": (
        lambda: [start(encoding="mulaw")],
        1008,
        'unsupported encoding "mulaw"',
        "protocol",
    ),
    "nan_f32le": (
        lambda: [
            start(encoding="f32le"),
            np.zeros(3200, "<f4").tobytes(),
            np.where(np.arange(3200) == NAN_AT, np.nan, 0.0).astype("<f4").tobytes(),
        ],
        1008,
        f"NaN/Inf in f32le audio at byte offset {(3200 + NAN_AT) * 4}",
        "bad_audio",
    ),
    "oversize": (lambda: [start(), b"\x00" * 70_000], 1009, "", "too_big"),
    "duplicate": (lambda: [start("good")], 1008, "stream 'good' is already open", "duplicate"),
    "start_timeout": (lambda: [], 1008, "no start message within 0.5 s", "start_timeout"),
    "text_after_start": (
        lambda: [start(), '{"type": "pause"}'],
        1008,
        'unexpected text message (type "pause") after start',
        "protocol",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_client_is_closed_clearly_and_good_stream_carries_on(voices: Voices, case: str) -> None:
    frames, code, reason, counter = BAD_CASES[case]

    async def main() -> None:
        async with daemon(voices, max_message_bytes=65_536, start_timeout_s=0.5) as d:
            good = await good_stream(d, voices)
            bad = await bad_client(d, frames())
            assert bad.ws.close_code == code, (bad.ws.close_code, bad.ws.close_reason)
            assert reason in (bad.ws.close_reason or ""), bad.ws.close_reason
            assert d.stats.rejected.get(counter) == 1, d.stats.rejected
            if code == 1008:  # an error message with the full text came before the close
                errors = bad.of_type("error")
                assert len(errors) == 1 and errors[0]["code"] == 1008
                assert reason in errors[0]["message"]
            assert set(d.hub.streams) == {"good"}  # the bad stream (if opened) is closed
            await check_good_survives(d, good, voices)

    run(main())


def test_odd_byte_counts_are_fine(voices: Voices) -> None:
    """Frames that end inside a sample: the decoder keeps the remainder."""
    name = voices.names[1]
    pcm = voices.pcm[name][: 8 * RATE * 2]
    sizes = [1, 999, 1001, 3, 4097, 333]

    async def main() -> None:
        async with daemon(voices) as d:
            client = await Client.stream(d, "odd")
            i = k = 0
            while i < len(pcm):
                n = sizes[k % len(sizes)]
                await client.ws.send(pcm[i : i + n])
                i, k = i + n, k + 1
                if k % 20 == 0:
                    await asyncio.sleep(0.001)
            await wait_until(lambda: bool(client.of_type("speaker_started")), what="start")
            await client.stop()
            assert client.ws.close_code == 1000
            assert client.of_type("speaker_started")[0]["name"] == name
            assert client.messages[-1]["type"] == "speaker_ended"
            assert d.stats.bytes_in == len(pcm) and not d.stats.rejected

    run(main())


def test_other_formats_stereo_f32le_44k(voices: Voices) -> None:
    """f32le, 2 channels, 44.1 kHz: resampled and mixed down, still recognised."""
    import soxr

    name = voices.names[0]
    mono = voices.audio[name][: 8 * RATE]
    x = soxr.resample(mono, RATE, 44100).astype(np.float32)
    stereo = np.stack([x, x * 0.5], axis=1).astype("<f4").tobytes()

    async def main() -> None:
        async with daemon(voices) as d:
            client = await Client.stream(d, "hifi", sample_rate=44100, encoding="f32le", channels=2)
            for i in range(0, len(stereo), 35_280):  # 100 ms frames
                await client.ws.send(stereo[i : i + 35_280])
                await asyncio.sleep(0)
            await wait_until(lambda: bool(client.of_type("speaker_started")), what="start")
            await client.stop()
            assert client.of_type("speaker_started")[0]["name"] == name

    run(main())


def test_max_streams_then_try_again_later(voices: Voices) -> None:
    async def main() -> None:
        async with daemon(voices, max_streams=2) as d:
            good = await good_stream(d, voices)
            second = await Client.stream(d, "second")
            third = await bad_client(d, [start("third")])
            assert third.ws.close_code == 1013
            assert third.ws.close_reason == "too many streams (2 open)"
            assert third.of_type("error")[0]["code"] == 1013
            assert d.stats.rejected == {"max_streams": 1}
            await second.stop()
            again = await Client.stream(d, "third")  # a slot is free again
            await again.stop()
            await check_good_survives(d, good, voices)

    run(main())


def test_client_that_never_reads_is_dropped(voices: Voices) -> None:
    """A fast-fed stream whose client never reads: its TCP window and the server's write
    buffer fill, the pump blocks, the bus drops its full queue, and the server closes it
    with 1008 "too slow"; another client keeps receiving all along."""
    # big events (top 1000 scores on every voiced hop) fill the socket buffers quickly
    rng = np.random.default_rng(0)
    extra = rng.standard_normal((998, voices.index.matrix.shape[1])).astype(np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    names = [*voices.names, *(f"x{i}" for i in range(998))]
    big = ProfileIndex.from_matrix(
        voices.embedder.fingerprint, names, names, np.vstack([voices.index.matrix, extra])
    )
    config = stream_config(voices.embedder, scores_interval_s=0.0, top_k=1000)

    async def main() -> None:
        async with daemon(voices, big, config, event_queue=8) as d:
            good = await good_stream(d, voices)
            # the slow client: tiny receive buffer, one message queued, then it stops reading
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", d.port))
            slow = await connect(d.url("/stream"), sock=sock, max_queue=1, compression=None)
            await slow.send(start("slow"))
            pcm = voices.pcm[voices.names[1]]
            good_before = len(good.events_seen)
            t0 = time.monotonic()
            with contextlib.suppress(ConnectionClosed):
                while not d.stats.rejected.get("too_slow"):
                    assert time.monotonic() - t0 < 30, "slow client never dropped"
                    for i in range(0, len(pcm), FRAME_BYTES):
                        await slow.send(pcm[i : i + FRAME_BYTES])
                        await asyncio.sleep(0.002)
                        if d.stats.rejected.get("too_slow"):
                            break
            good_during = len(good.events_seen) - good_before
            print(
                f"slow client dropped after {time.monotonic() - t0:.1f} s; meanwhile the "
                f"good client got {good_during} events"
            )
            assert good_during > 0  # the good client was served while the slow one backed up
            assert d.hub.bus.dropped_subscribers == 1
            await good.more_events(3)  # the other client is still served
            # the slow client finally reads: its backlog, then the close frame
            backlog = 0
            with contextlib.suppress(ConnectionClosed):
                async for _ in slow:
                    backlog += 1
            assert slow.close_code == 1008, (slow.close_code, slow.close_reason)
            assert slow.close_reason == "too slow: event queue full"
            assert backlog > 0
            await wait_until(lambda: "slow" not in d.hub.streams, what="slow stream closed")
            await check_good_survives(d, good, voices)

    run(main())


def test_unknown_path_is_404_and_bad_query_400(voices: Voices) -> None:
    async def main() -> None:
        async with daemon(voices) as d:
            for path, status in [
                ("/", 404),
                ("/streams", 404),
                ("/events?x=1", 400),
                ("/stream?a=b", 400),
            ]:
                with pytest.raises(InvalidStatus) as info:
                    await connect(d.url(path))
                assert info.value.response.status_code == status, path
            assert d.stats.rejected == {"not_found": 2, "bad_request": 2}
            assert d.stats.connections == 0

    run(main())


# -- /events, disconnects, shutdown -------------------------------------------------------


def test_events_subscriber_gets_two_streams(voices: Voices) -> None:
    a, b = voices.names

    async def main() -> None:
        async with daemon(voices) as d:
            everything = await Client.events(d)
            only_b = await Client.events(d, "?stream=sb")
            sa, sb = await Client.stream(d, "sa"), await Client.stream(d, "sb")
            sa.feed_forever(voices.pcm[a])
            sb.feed_forever(voices.pcm[b])

            def started(c: Client, stream: str) -> list[str]:
                return [m["name"] for m in c.of_type("speaker_started") if m["stream"] == stream]

            await wait_until(
                lambda: bool(started(everything, "sa") and started(everything, "sb")),
                what="both streams' speaker_started on /events",
            )
            await sa.stop()
            await sb.stop()
            await wait_until(lambda: len(everything.of_type("speaker_ended")) == 2, what="ends")
            assert started(everything, "sa")[0] == a and started(everything, "sb")[0] == b
            assert {m["stream"] for m in everything.events_seen} == {"sa", "sb"}
            assert {m["stream"] for m in only_b.events_seen} == {"sb"}
            # /events sees the same events the stream's own client saw
            ids_b = [m["id"] for m in sb.events_seen]
            assert [m["id"] for m in everything.events_seen if m["stream"] == "sb"] == ids_b
            await everything.ws.close()
            await only_b.ws.close()

    run(main())


def test_events_endpoint_takes_no_messages(voices: Voices) -> None:
    async def main() -> None:
        async with daemon(voices) as d:
            sub = await Client.events(d)
            await sub.ws.send("hello")
            assert await sub.closed() == (1008, "/events takes no messages (got a text frame)")

    run(main())


def test_disconnect_closes_the_stream(voices: Voices) -> None:
    """A client that vanishes (TCP reset, no close frame): its stream still ends."""

    async def main() -> None:
        async with daemon(voices) as d:
            sub = await Client.events(d)
            client = await good_stream(d, voices, "gone")
            assert client.feeder is not None
            client.feeder.cancel()
            client.ws.transport.abort()
            await wait_until(lambda: bool(sub.of_type("speaker_ended")), what="speaker_ended")
            ended = sub.of_type("speaker_ended")[0]
            assert ended["stream"] == "gone" and ended["reason"] == "closed"
            await wait_until(lambda: not d.hub.streams, what="stream forgotten")
            assert d.stats.closed_by_client >= 1 and d.stats.active_streams == 0

    run(main())


def test_shutdown_flushes_final_events_then_1001(voices: Voices) -> None:
    async def main() -> None:
        async with daemon(voices) as d:
            sub = await Client.events(d)
            client = await good_stream(d, voices, "live")
            await d.stop()  # cancel serve_websocket
            assert await client.closed() == (1001, "server shutting down")
            assert client.messages[-1]["type"] == "speaker_ended"
            assert client.messages[-1]["reason"] == "closed"
            assert await sub.closed() == (1001, "server shutting down")
            assert sub.of_type("speaker_ended")[-1]["stream"] == "live"
            assert not d.hub.streams
            with pytest.raises(OSError):
                await connect(d.url("/stream"), open_timeout=2)

    run(main())


def test_stats_count_connections(voices: Voices) -> None:
    async def main() -> None:
        async with daemon(voices) as d:
            c = await Client.stream(d, "s1")
            c.feed_forever(voices.pcm[voices.names[0]], speed=20.0)
            await wait_until(lambda: d.stats.frames_in >= 5, what="frames")
            await c.stop()
            e = await Client.events(d)
            await e.ws.close()
            await wait_until(lambda: d.stats.active == 0, what="all closed")
            s = d.stats
            assert (s.connections, s.streams_opened, s.subscribers) == (2, 1, 1)
            assert s.bytes_in == s.frames_in * FRAME_BYTES and s.rejections == 0
            assert s.events_out >= len(c.events_seen)

    run(main())


class SlowEmbedder:
    """The real embedder, ``delay_s`` slower per batch (a busy or small machine)."""

    def __init__(self, inner: Embedder, delay_s: float) -> None:
        self._inner, self._delay_s = inner, delay_s

    def embed_features(self, feats: np.ndarray) -> np.ndarray:
        time.sleep(self._delay_s)
        return self._inner.embed_features(feats)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_client_faster_than_the_model_is_slowed_not_dropped(voices: Voices) -> None:
    """A file sent at full speed: the server stops reading while 8 s of hops await their
    embeddings (TCP slows the client); every window is scored, none given up."""

    async def main() -> None:
        slow = cast(Embedder, SlowEmbedder(voices.embedder, 0.1))
        hub = Hub(slow, voices.index, stream_config(voices.embedder), EngineConfig(max_batch=4))
        await hub.start()
        stats = WebSocketStats()
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        cfg = WebSocketSection(host="127.0.0.1", port=0)
        task = asyncio.create_task(serve_websocket(hub, cfg, started=started, stats=stats))
        d = Daemon(hub, await asyncio.wait_for(started, 10), stats, task)
        try:
            client = await Client.stream(d, "file")
            live = hub.streams["file"]
            pcm = voices.pcm[voices.names[0]] * 2  # ~2 × 3 utterances, > 60 hops
            for i in range(0, len(pcm), FRAME_BYTES):
                await client.ws.send(pcm[i : i + FRAME_BYTES])  # no pause: full speed
            await client.stop()
            s = live.core.stats
            assert stats.throttled > 0
            assert s.windows > 40 and s.scored == s.windows, s
            assert (s.dropped, s.skipped, s.errors) == (0, 0, 0), s
            assert client.of_type("speaker_started")[0]["name"] == voices.names[0]
        finally:
            await d.stop()
            await hub.close()

    run(main(), timeout=120)
