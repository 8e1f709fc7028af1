"""A front-end worker process (``websocket.workers`` > 0): one core's share of the streams.

A worker accepts WebSocket connections on its own listening socket on the port that all
workers share (``SO_REUSEPORT``) and runs everything per stream that the daemon process
runs for its own streams: PCM decoding, voice gate, Kaldi fbank, hop scheduling,
scoring, decisions, events to the stream's client. Only the model runs elsewhere: the
hub's :class:`~voiceid.runtime.embclient.RemoteEngine` sends the queued windows to the
daemon process (``runtime/workers.py``), which batches the windows of all workers into
one model call.

Two pipes to the daemon process:

- ``emb``: requests of windows out, embeddings back (``runtime/wire.py``,
  ``runtime/embclient.py``: all window lengths in one request, ``inflight`` requests out);
- ``ctl``: pickled tuples, both ways (event loop thread sends, a reader thread receives):
  out ``ready``/``failed``, ``events``, ``claim``/``closed`` (stream names are unique
  across workers), ``want`` (a local ``/events`` subscriber needs the other workers'
  events), ``stats``; in ``scorer``, ``enabled``, ``events``, ``claimed``,
  ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from numpy.typing import NDArray

from voiceid.config import Settings
from voiceid.errors import ProtocolError
from voiceid.models.card import ModelCard
from voiceid.models.embedder import Embedder
from voiceid.runtime.bus import DEFAULT_QUEUE, EventBus, Subscription
from voiceid.runtime.embclient import DEFAULT_INFLIGHT, EmbedClient, RemoteEngine
from voiceid.runtime.hub import EngineConfig, Hub, LiveStream, TooManyStreams
from voiceid.stream.engine import BatchEngine
from voiceid.stream.events import Event
from voiceid.stream.pipeline import Scorer, StreamConfig

log = logging.getLogger(__name__)

CLAIM_TIMEOUT_S = 10.0  # the daemon process answers a stream-name claim within this
STATS_INTERVAL_S = 0.5  # counters and hop latencies go to the daemon process this often


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs besides its pipes."""

    wid: int
    settings: Settings
    port: int  # the shared WebSocket port (bound by the daemon process)
    card: ModelCard
    fingerprint: str
    engine: EngineConfig  # the worker's own batching, before the daemon's
    ports: dict[str, int]  # the daemon's bound ports (origin checks)
    inflight: int = DEFAULT_INFLIGHT  # embedding requests out at a time
    switch_interval_s: float | None = None  # sys.setswitchinterval (None: Python's 5 ms)


class RemoteEmbedder(Embedder):
    """The model of the daemon process: ``embed_features`` is a round trip over a pipe."""

    def __init__(self, card: ModelCard, fingerprint: str, client: EmbedClient) -> None:
        # no local model (the hub's GPU checks see none): only the card and the pipe
        self.card = card
        self.fingerprint = fingerprint
        self.client = client

    def embed_features(self, feats: NDArray[np.float32]) -> NDArray[np.float32]:
        """[B, T, F] -> [B, D]; a failure in the daemon process raises ``WireError``."""
        return self.client.embed(feats)


class Link:
    """The worker's end of the control pipe (sends on the event loop thread only)."""

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.loop = loop
        self.outbox: list[Event] = []
        self.broken = False

    def send(self, *message: Any) -> None:
        if self.broken:
            return
        try:
            self.conn.send(message)
        except (OSError, ValueError):  # the daemon process is gone: the reader stops us
            self.broken = True

    def queue(self, events: Sequence[Event]) -> None:
        """Events for the daemon process, sent once per loop iteration."""
        if not self.outbox:
            self.loop.call_soon(self.flush)
        self.outbox.extend(events)

    def flush(self) -> None:
        if self.outbox:
            events, self.outbox = self.outbox, []
            self.send("events", events)


class ForwardingBus(EventBus):
    """The worker's bus: local events also go to the daemon process; events of other
    workers come back only while a local subscriber wants them."""

    def __init__(self, link: Link, hub: WorkerHub) -> None:
        super().__init__()
        self.link = link
        self.hub = hub
        self.want = False

    def publish(self, events: Sequence[Event]) -> None:
        super().publish(events)
        self.link.queue(events)

    def publish_remote(self, events: Sequence[Event]) -> None:
        super().publish(events)

    def subscribe(self, stream: str | None = None, maxsize: int = DEFAULT_QUEUE) -> Subscription:
        sub = super().subscribe(stream, maxsize)
        self.update_want()
        return sub

    def update_want(self) -> None:
        """Ask for the other workers' events iff a subscriber follows all streams or one
        that is not open here."""
        want = any(s.stream is None or s.stream not in self.hub.streams for s in self._subs)
        if want != self.want:
            self.want = want
            self.link.send("want", want)


class WorkerHub(Hub):
    """A hub whose stream names are claimed from the daemon process, events forwarded."""

    def __init__(
        self,
        link: Link,
        embedder: RemoteEmbedder,
        scorer: Scorer,
        stream_config: StreamConfig,
        engine_config: EngineConfig,
        *,
        max_streams: int,
    ) -> None:
        super().__init__(embedder, scorer, stream_config, engine_config, max_streams=max_streams)
        self.link = link
        self.bus: ForwardingBus = ForwardingBus(link, self)
        self._claims: dict[int, asyncio.Future[str]] = {}
        self._ids = itertools.count()
        self.closed_windows = self.closed_scored = 0  # of streams already closed
        self._sent_skipped = self._sent_failed = 0

    def _make_engine(self) -> BatchEngine:
        embedder = self.embedder
        assert isinstance(embedder, RemoteEmbedder)
        ec = self.engine_config
        return RemoteEngine(
            embedder.client,
            self._deliver_from_thread,
            max_batch=ec.max_batch,
            max_pending=ec.max_pending,
        )

    async def reserve(self, name: str) -> None:
        self._check_free(name)
        req = next(self._ids)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._claims[req] = fut
        self.link.send("claim", req, name)
        try:
            answer = await asyncio.wait_for(fut, CLAIM_TIMEOUT_S)
        except TimeoutError:
            raise ProtocolError(
                f"stream {name!r}: the daemon process did not answer",
                hint="retry; see the daemon's log",
            ) from None
        finally:
            self._claims.pop(req, None)
        if answer == "taken":
            raise ProtocolError(
                f"stream {name!r} is already open",
                hint="use another stream name or close the other one",
            )
        if answer == "full":
            raise TooManyStreams(self.max_streams)

    def claimed(self, req: int, answer: str) -> None:
        fut = self._claims.get(req)
        if fut is not None and not fut.done():
            fut.set_result(answer)

    def open_stream(self, name: str, **kwargs: Any) -> LiveStream:
        try:
            return super().open_stream(name, **kwargs)
        except ProtocolError:
            self.link.send("closed", name)  # give the claim back
            raise

    def _forget(self, stream: LiveStream) -> None:
        if self.streams.get(stream.name) is stream:
            self.closed_windows += stream.core.stats.windows
            self.closed_scored += stream.core.stats.scored
            self.link.send("closed", stream.name)
        super()._forget(stream)

    def stats(self, websocket: Any) -> dict[str, Any]:
        """Counters since the last call (latencies, skipped, failed) and totals."""
        latencies = list(self.hop_latency_ms)
        self.hop_latency_ms.clear()
        stages = {name: list(q) for name, q in self.stage_ms.items()}
        for q in self.stage_ms.values():
            q.clear()
        skipped = self.skipped_hops - self._sent_skipped
        failed = self.failed_windows - self._sent_failed
        self._sent_skipped, self._sent_failed = self.skipped_hops, self.failed_windows
        live = list(self.streams.values())
        return {
            "latency_ms": latencies,
            "stage_ms": stages,
            "skipped_hops": skipped,
            "failed_windows": failed,
            "streams": len(live),
            "windows": self.closed_windows + sum(s.core.stats.windows for s in live),
            "scored": self.closed_scored + sum(s.core.stats.scored for s in live),
            "websocket": asdict(websocket),
            "engine": asdict(self.engine.stats()),
            "cpu_s": time.process_time(),  # this worker's CPU seconds so far
        }


def worker_main(spec: WorkerSpec, ctl: Connection, emb: Connection) -> None:
    """Process entry point (``multiprocessing`` spawn)."""
    # the daemon process stops its workers through the pipe: Ctrl-C or systemd's SIGTERM
    # to the whole group must not kill them before their streams' last events are out
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _logging(spec)
    if spec.switch_interval_s is not None:
        sys.setswitchinterval(spec.switch_interval_s)
    try:
        import uvloop

        uvloop.run(_serve(spec, ctl, emb))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(_serve(spec, ctl, emb))


def _logging(spec: WorkerSpec) -> None:
    from voiceid.runtime.logs import use_json_logs, use_text_logs

    logging.basicConfig(level=spec.settings.log.level, stream=sys.stderr)
    if spec.settings.log.json_format:
        use_json_logs()
    else:
        use_text_logs()
    wid = spec.wid

    def tag(record: logging.LogRecord) -> bool:
        record.worker = wid  # every line says which worker wrote it ([worker=N], JSON key)
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)


async def _serve(spec: WorkerSpec, ctl: Connection, emb: Connection) -> None:
    from voiceid.runtime.workers import listen_shared
    from voiceid.security import Security
    from voiceid.sources.websocket import WebSocketStats, serve_websocket

    loop = asyncio.get_running_loop()
    link = Link(ctl, loop)
    kind, scorer, stream_config, disabled = await loop.run_in_executor(None, ctl.recv)
    assert kind == "scorer"
    ws_cfg = spec.settings.websocket
    hub = WorkerHub(
        link,
        RemoteEmbedder(spec.card, spec.fingerprint, EmbedClient(emb, max_inflight=spec.inflight)),
        scorer,
        stream_config,
        spec.engine,
        max_streams=ws_cfg.max_streams,
    )
    hub.disabled = set(disabled)
    stopping = asyncio.Event()

    def handle(message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "scorer":
            hub.set_scorer(message[1], message[2])
        elif kind == "enabled":
            hub.set_enabled(message[1], message[2])
        elif kind == "events":
            hub.bus.publish_remote(message[1])
        elif kind == "claimed":
            hub.claimed(message[1], message[2])
        elif kind == "stop":
            stopping.set()

    def read() -> None:
        while True:
            try:
                message = ctl.recv()
            except (EOFError, OSError):  # the daemon process is gone
                loop.call_soon_threadsafe(stopping.set)
                return
            loop.call_soon_threadsafe(handle, message)

    threading.Thread(target=read, name="voiceid-ctl", daemon=True).start()
    await hub.start()
    stats = WebSocketStats()
    started: asyncio.Future[int] = loop.create_future()
    try:
        security = Security.from_settings(spec.settings, ports=spec.ports)
        sock = listen_shared(ws_cfg.host, spec.port)
    except Exception as exc:
        link.send("failed", str(exc))
        return
    server = asyncio.create_task(
        serve_websocket(hub, ws_cfg, started=started, stats=stats, security=security, sock=sock)
    )
    try:
        port = await started
    except Exception as exc:
        link.send("failed", str(exc))
        return
    link.send("ready", port)

    async def tick() -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            hub.bus.update_want()
            link.send("stats", hub.stats(stats))

    ticker = asyncio.create_task(tick())
    stop_wait = asyncio.create_task(stopping.wait())
    await asyncio.wait([stop_wait, server], return_when=asyncio.FIRST_COMPLETED)
    server.cancel()  # every stream ends: its last events go to its client and upstream
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await server
    ticker.cancel()
    await hub.close()
    link.flush()
    link.send("stats", hub.stats(stats))
