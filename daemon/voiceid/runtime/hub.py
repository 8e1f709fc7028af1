"""The hub: live streams, one shared batching engine, scoring, and the event bus.

Everything here runs on the event loop thread except the engine's worker, whose
results come back through ``loop.call_soon_threadsafe`` (one call per batch).
Sources (WebSocket, microphone) only call :meth:`Hub.open_stream` and feed bytes or
samples; sinks subscribe to :attr:`Hub.bus`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from voiceid.audio.convert import PcmDecoder
from voiceid.errors import ProtocolError
from voiceid.frontend import make_frontend
from voiceid.models.embedder import Embedder
from voiceid.models.gpu import CUDA
from voiceid.runtime.bus import EventBus
from voiceid.stream.engine import BatchEngine, EmbedResult, batch_buckets
from voiceid.stream.events import Event
from voiceid.stream.pipeline import Scorer, StreamConfig, StreamCore
from voiceid.stream.scheduler import SilentHop

log = logging.getLogger(__name__)

Encoding = Literal["pcm_s16le", "f32le"]


STAGES = ("queued", "embed", "decide")
"""A hop's latency in stages (``Hub.stage_ms``): fed -> sent to the model -> back -> decided."""


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 64  # windows per inference call
    max_wait_ms: float = 5.0  # wait for more windows after the first
    max_pending: int = 256  # queued windows; more are skipped (counted)
    batch_buckets: bool = True  # pad batches to powers of two (on a GPU only, see Hub)


class TooManyStreams(ProtocolError):
    """All ``max_streams`` streams are open (WebSocket close 1013: try again later)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"too many streams ({limit} open)", hint="retry later, or raise websocket.max_streams"
        )
        self.limit = limit


@dataclass(frozen=True, slots=True)
class RemoteStream:
    """A stream open in a front-end worker process (see ``runtime/workers.py``)."""

    worker: int
    opened_at: float  # unix seconds


class Follower(Protocol):
    """Something that mirrors the hub's shared state (the worker pool)."""

    def scorer_changed(self, scorer: Scorer, stream_config: StreamConfig) -> None: ...

    def enabled_changed(self, name: str, enabled: bool) -> None: ...


def on_gpu(embedder: Embedder) -> bool:
    """Does the embedder's model run on the CUDA provider?"""
    model = getattr(embedder, "model", None)  # (test doubles may have none)
    return bool(getattr(model, "provider", None) == CUDA)


class LiveStream:
    """One live audio stream: bytes or samples in, events out through the hub's bus."""

    def __init__(
        self,
        hub: Hub,
        name: str,
        core: StreamCore,
        decoder: PcmDecoder | None,
    ) -> None:
        self.hub = hub
        self.name = name
        self.core = core
        self.decoder = decoder
        self.token = secrets.token_hex(3)  # makes event ids unique across reconnects
        self.closed = False
        self.opened_at = time.time()

    def feed_bytes(self, data: bytes) -> None:
        """Raw PCM in the format given at open; raises ``ProtocolError`` on bad audio."""
        if self.decoder is None:
            raise ProtocolError(f"stream {self.name!r} takes samples, not bytes")
        self.feed_samples(self.decoder.decode(data))

    def feed_samples(self, samples: NDArray[np.float32]) -> None:
        """float32 mono samples at 16 kHz; ignored while the stream is disabled."""
        if self.closed or len(samples) == 0 or self.name in self.hub.disabled:
            return
        hub = self.hub
        for hop in self.core.feed(samples):
            if isinstance(hop, SilentHop):
                self.publish(self.core.on_silent(hop))
            elif hub.engine.submit(hop):
                hub._inflight[id(hop)] = self
            else:
                hub.skipped_hops += 1
                self.publish(self.core.on_skipped(hop))

    def publish(self, events: Sequence[Event]) -> None:
        if events:
            self.hub.bus.publish([replace(e, id=f"{self.token}-{e.id}") for e in events])

    def close(self) -> None:
        """End the stream: flush the resampler, end the current speaker, publish the rest."""
        if self.closed:
            return
        if self.decoder is not None:
            tail = self.decoder.flush()
            if len(tail):
                self.feed_samples(tail)
        self.closed = True
        self.publish(self.core.close())
        self.hub._forget(self)


class Hub:
    """Owns the engine and all live streams of the daemon."""

    def __init__(
        self,
        embedder: Embedder,
        scorer: Scorer,
        stream_config: StreamConfig,
        engine_config: EngineConfig | None = None,
        *,
        max_streams: int = 64,
    ) -> None:
        self.embedder = embedder
        self.scorer = scorer
        self.stream_config = stream_config
        self.engine_config = ec = engine_config or EngineConfig()
        self.max_streams = max_streams
        self.bus = EventBus()
        self.streams: dict[str, LiveStream] = {}
        self.remote: dict[str, RemoteStream] = {}  # streams open in worker processes
        self.followers: list[Follower] = []  # told of scorer and enabled changes
        self.disabled: set[str] = set()  # stream names whose audio is ignored (MQTT OFF)
        self.skipped_hops = 0
        self.failed_windows = 0
        self._inflight: dict[int, LiveStream] = {}  # id(WindowRequest) -> its stream
        # hop -> decision latency (ms): last sample of the hop fed -> its result decided
        self.hop_latency_ms: deque[float] = deque(maxlen=100_000)
        # the same hops split into stages (ms): fed -> sent to the model (front-end, engine
        # queue), sent -> embeddings back (the model, or the round trip to the daemon
        # process), back -> decided (the event loop, scoring)
        self.stage_ms: dict[str, deque[float]] = {name: deque(maxlen=100_000) for name in STAGES}
        self._loop: asyncio.AbstractEventLoop | None = None
        # padding makes the shapes repeat for the GPU's static sessions and CUDA graphs; on
        # the CPU any batch size runs at the same speed per window and padding 9 windows to
        # 16 would only waste 44 % of the work
        self.pad_batches = ec.batch_buckets and on_gpu(embedder)
        self.engine = self._make_engine()

    def _make_engine(self) -> BatchEngine:
        ec = self.engine_config
        return BatchEngine(
            self.embedder.embed_features,
            self._deliver_from_thread,
            max_batch=ec.max_batch,
            max_wait_ms=ec.max_wait_ms,
            max_pending=ec.max_pending,
            pad_batches=self.pad_batches,
        )

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Bind to the running loop and warm every batch bucket (readiness comes after)."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.warm_up)

    def warm_up(self) -> None:
        """Run each batch shape once so the provider plans (and CUDA allocates) up front."""
        spec = self.embedder.card.frontend
        ec = self.engine_config
        sizes = batch_buckets(ec.max_batch) if self.pad_batches else (1,)
        buckets = self.stream_config.scheduler.bucket_frames(spec)
        # GPU: one fixed-shape session + CUDA graph per bucket, built now, not mid-traffic
        prepare = getattr(getattr(self.embedder, "model", None), "prepare", None)
        if prepare is not None:  # (test doubles and plain embedders have none)
            prepare([(b, t) for t in buckets for b in sizes])
        for frames in buckets:
            for b in sizes:
                self.embedder.embed_features(np.zeros((b, frames, spec.num_bins), np.float32))

    async def close(self) -> None:
        """Close every stream (their last events are published), then stop the engine."""
        for stream in list(self.streams.values()):
            stream.close()
        await asyncio.to_thread(self.engine.close)
        self.bus.close()

    # -- streams --------------------------------------------------------------------
    def open_stream(
        self,
        name: str,
        *,
        sample_rate: int = 16000,
        encoding: Encoding | None = "pcm_s16le",
        channels: int = 1,
    ) -> LiveStream:
        """A new live stream; ``encoding=None`` means the caller feeds float32 samples."""
        self._check_free(name)
        if len(self.streams) >= self.max_streams:
            raise ProtocolError(
                f"too many streams ({self.max_streams} open)",
                hint="raise websocket.max_streams or close idle streams",
            )
        decoder = PcmDecoder(sample_rate, encoding, channels) if encoding else None
        core = StreamCore(name, make_frontend(self.embedder.card.frontend), self.stream_config)
        stream = LiveStream(self, name, core, decoder)
        self.streams[name] = stream
        log.info(
            "stream %s opened (%s Hz, %s, %d ch)",
            name,
            sample_rate,
            encoding,
            channels,
            extra={"stream": name},
        )
        return stream

    def stream_names(self) -> list[str]:
        """Every open stream: this process's and the worker processes'."""
        return [*self.streams, *self.remote]

    def opened_at(self) -> dict[str, float]:
        """Every open stream -> when it was opened (unix seconds)."""
        local = {n: s.opened_at for n, s in self.streams.items()}
        return local | {n: r.opened_at for n, r in self.remote.items()}

    async def reserve(self, name: str) -> None:
        """Claim ``name`` before :meth:`open_stream`; ``ProtocolError`` if it is taken.

        Here a local check; a worker process's hub asks the daemon process, which knows
        the streams of every worker.
        """
        self._check_free(name)

    def _check_free(self, name: str) -> None:
        if name in self.streams or name in self.remote:
            raise ProtocolError(
                f"stream {name!r} is already open",
                hint="use another stream name or close the other one",
            )

    def _forget(self, stream: LiveStream) -> None:
        if self.streams.get(stream.name) is stream:
            del self.streams[stream.name]
            log.info("stream %s closed", stream.name, extra={"stream": stream.name})

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Pause (``False``) or resume identification of stream ``name`` (open or future).

        Pausing ends the current speaker of an open stream.
        """
        for follower in self.followers:
            follower.enabled_changed(name, enabled)
        if enabled:
            self.disabled.discard(name)
            return
        self.disabled.add(name)
        stream = self.streams.get(name)
        if stream is not None:
            stream.publish(stream.core.interrupt())

    def set_scorer(self, scorer: Scorer, stream_config: StreamConfig | None = None) -> None:
        """Swap the enrolled profiles (reload); takes effect from the next result.

        ``stream_config``: for streams opened from now on (None: unchanged).
        """
        self.scorer = scorer
        if stream_config is not None:
            self.stream_config = stream_config
        for follower in self.followers:
            follower.scorer_changed(scorer, self.stream_config)

    # -- engine results ---------------------------------------------------------------
    def _deliver_from_thread(self, results: Sequence[EmbedResult]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closed while shutting down
            loop.call_soon_threadsafe(self._on_results, results)

    def _on_results(self, results: Sequence[EmbedResult]) -> None:
        live: list[tuple[EmbedResult, LiveStream]] = []
        for r in results:
            owner = self._inflight.pop(id(r.request), None)
            if owner is not None and not owner.closed:
                live.append((r, owner))
        good = [(r, s) for r, s in live if r.embedding is not None]
        for r, s in live:
            if r.embedding is None:
                self.failed_windows += 1
                s.publish(s.core.on_skipped(r.request, error=True))
        if not good:
            return
        scorer = self.scorer
        names = list(scorer.names)
        embs = np.stack([r.embedding for r, _ in good if r.embedding is not None])
        table = np.asarray(scorer.scores(embs)).reshape(len(good), len(names))
        for i, (r, s) in enumerate(good):
            s.publish(s.core.on_scores(r.request, table[i], names))
        now = time.time()
        self.hop_latency_ms.extend((now - r.request.fed_at) * 1000.0 for r, _ in good)
        if good[0][0].sent_at:
            stage = self.stage_ms
            stage["queued"].extend((r.sent_at - r.request.fed_at) * 1000.0 for r, _ in good)
            stage["embed"].extend((r.done_at - r.sent_at) * 1000.0 for r, _ in good)
            stage["decide"].extend((now - r.done_at) * 1000.0 for r, _ in good)
