"""One stream glued together: scheduler → (caller embeds) → scorer → decider → events.

:class:`StreamCore` is pure and synchronous; the caller moves windows to an embedding
engine and back::

    for hop in core.feed(samples):
        if isinstance(hop, SilentHop):
            send(core.on_silent(hop))
        elif not engine.submit(hop):
            send(core.on_skipped(hop))
    # later, for each EmbedResult delivered by the engine:
    send(core.on_embedding(res.request, res.embedding, scorer))  # or on_skipped(..., error=True)

Results may come back late or out of order (one engine serves many streams): the core
keeps hops in order and decides hop ``k`` only once hops ``< k`` are settled, so events
are always in stream-time order. At most ``max_unresolved`` hops wait; beyond that the
oldest is given up (counted in ``stats.dropped``) so a lost result cannot stall a stream.

:func:`run_file` runs all of it synchronously over a buffer (``voiceid stream FILE``).
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from voiceid.errors import ConfigError, ProtocolError
from voiceid.frontend.base import FrontEnd
from voiceid.stream.decide import Decider, DecisionConfig
from voiceid.stream.engine import BatchEngine, EmbedFn
from voiceid.stream.events import Event, Stamp
from voiceid.stream.scheduler import (
    Clock,
    Hop,
    HopScheduler,
    SchedulerConfig,
    SilentHop,
    WindowRequest,
)


class Scorer(Protocol):
    """Cosine scores of embeddings against the enrolled names (e.g. ``ProfileIndex``)."""

    @property
    def names(self) -> Sequence[str]:
        """Enrolled names, in score-column order."""
        ...

    def scores(self, emb: NDArray[np.float32]) -> NDArray[Any]:
        """[B, D] unit-norm embeddings → [B, N] cosines."""
        ...


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """Everything one stream needs; see each part for units and defaults."""

    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    max_unresolved: int = 32  # hops (16 s at hop_s 0.5) that may await a result

    def __post_init__(self) -> None:
        if self.max_unresolved < 1:
            raise ConfigError(f"max_unresolved must be ≥ 1, got {self.max_unresolved}")


@dataclass(slots=True)
class StreamStats:
    """Counters of one stream (hops are ``hop_s`` of audio each)."""

    hops: int = 0  # hop boundaries passed
    windows: int = 0  # WindowRequests made
    silent: int = 0  # SilentHops
    scored: int = 0  # windows whose scores reached the decider
    skipped: int = 0  # windows the engine refused (queue full)
    errors: int = 0  # windows whose embedding failed
    dropped: int = 0  # windows given up while waiting (max_unresolved, close)
    late: int = 0  # results for windows already given up (ignored)
    events: int = 0  # events produced


_Outcome = tuple[NDArray[np.float64], tuple[str, ...]] | Literal["silent", "lost"]


class StreamCore:
    """One stream's state: hop scheduler, decider, in-order result buffer, counters.

    Not thread-safe: call every method from one thread (the event loop); the engine's
    results must be handed back to that thread first.
    """

    def __init__(
        self,
        stream: str,
        frontend: FrontEnd,
        config: StreamConfig | None = None,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.stream = stream
        self.config = cfg = config or StreamConfig()
        self._clock = clock
        self.scheduler = HopScheduler(stream, frontend, cfg.scheduler, clock=clock)
        self.decider = Decider(cfg.decision)
        self.stats = StreamStats()
        self._order: deque[Hop] = deque()  # hops not yet decided, oldest first
        self._outcome: dict[int, _Outcome] = {}  # seq → outcome, for hops in _order
        self._waiting: set[int] = set()  # seqs of requests awaiting a result
        self._outbox: list[Event] = []  # events made inside feed(), returned next time
        self._events = 0
        self._last_fed: float | None = None
        self._closed = False

    @property
    def current_speaker(self) -> str | None:
        """The speaker being heard, if any."""
        return self.decider.current

    @property
    def unresolved(self) -> int:
        """Hops waiting to be decided (requests without results, and hops behind them)."""
        return len(self._order)

    def feed(self, samples: ArrayLike) -> list[Hop]:
        """Consume samples; return the hops completed: WindowRequests to embed, SilentHops.

        Pass each ``SilentHop`` to :meth:`on_silent` and each request's result to
        :meth:`on_embedding` / :meth:`on_scores` / :meth:`on_skipped`.
        """
        if self._closed:
            raise ProtocolError(f"stream {self.stream!r} is closed", hint="open a new stream")
        self._last_fed = self._clock()
        hops = self.scheduler.feed(samples)
        self.stats.hops = self.scheduler.samples_in // self.config.scheduler.hop_samples
        for hop in hops:
            self._order.append(hop)
            if isinstance(hop, SilentHop):
                self.stats.silent += 1
                self._outcome[hop.seq] = "silent"
            else:
                self.stats.windows += 1
                self._waiting.add(hop.seq)
        while len(self._order) > self.config.max_unresolved:
            head = self._order[0]
            if head.seq in self._waiting:
                self._give_up(head.seq)
            self._outbox.extend(self._drain())
        return hops

    def on_embedding(
        self, request: WindowRequest, embedding: ArrayLike, scorer: Scorer
    ) -> list[Event]:
        """The window's embedding [D] arrived: score it against ``scorer`` and decide."""
        emb = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        row = np.asarray(scorer.scores(emb))[0]
        return self.on_scores(request, row, scorer.names)

    def on_scores(
        self, request: WindowRequest, scores: ArrayLike, names: Sequence[str]
    ) -> list[Event]:
        """The window's cosine scores [N] against ``names`` arrived (batch-scored upstream)."""
        if request.seq not in self._waiting:
            self.stats.late += 1
            return self._drain()
        raw = np.asarray(scores, dtype=np.float64).reshape(-1)
        if raw.size != len(names):
            raise ValueError(f"{raw.size} scores for {len(names)} names")
        self._waiting.discard(request.seq)
        self._outcome[request.seq] = (raw, tuple(names))
        self.stats.scored += 1
        return self._drain()

    def on_silent(self, hop: SilentHop) -> list[Event]:
        """Return the events due once ``hop`` (a silent hop from :meth:`feed`) is decided."""
        del hop  # recorded by feed(); decided in order with the other hops
        return self._drain()

    def on_skipped(self, request: WindowRequest, *, error: bool = False) -> list[Event]:
        """The window will get no embedding (engine queue full, or ``error``: embed failed)."""
        if request.seq not in self._waiting:
            self.stats.late += 1
            return self._drain()
        if error:
            self.stats.errors += 1
        else:
            self.stats.skipped += 1
        self._waiting.discard(request.seq)
        self._outcome[request.seq] = "lost"
        return self._drain()

    def close(self) -> list[Event]:
        """End of stream: give up pending windows, decide the rest, end the current speaker."""
        if self._closed:
            return []
        self._closed = True
        for seq in sorted(self._waiting):
            self._give_up(seq)
        events = self._drain()
        now = self._clock()
        fed = self._last_fed if self._last_fed is not None else now
        t = self.scheduler.stream_time_s
        events += self._count(self.decider.close(t, functools.partial(self._stamp, t, fed)))
        return events

    def interrupt(self) -> list[Event]:
        """End the current speaker now (the stream was paused); the stream stays open."""
        fed = self._last_fed if self._last_fed is not None else self._clock()
        t = self.scheduler.stream_time_s
        return self._count(self.decider.close(t, functools.partial(self._stamp, t, fed)))

    # -- internals ---------------------------------------------------------------------

    def _give_up(self, seq: int) -> None:
        self._waiting.discard(seq)
        self._outcome[seq] = "lost"
        self.stats.dropped += 1

    def _drain(self) -> list[Event]:
        """Decide every hop at the head of the order whose outcome is known."""
        events, self._outbox = self._outbox, []
        while self._order and self._order[0].seq in self._outcome:
            hop = self._order.popleft()
            outcome = self._outcome.pop(hop.seq)
            t = hop.stream_time_s
            stamp = functools.partial(self._stamp, t, hop.fed_at)
            if outcome == "silent":
                events += self._count(self.decider.on_silence(t, stamp))
            elif outcome == "lost":
                self.decider.on_unscored(t)
            else:
                raw, names = outcome
                events += self._count(self.decider.on_scores(raw, names, t, stamp))
        return events

    def _count(self, events: list[Event]) -> list[Event]:
        self.stats.events += len(events)
        return events

    def _stamp(self, stream_time_s: float, fed_at: float) -> Stamp:
        now = self._clock()
        self._events += 1
        return Stamp(
            id=f"{self.stream}:{self._events}",
            stream=self.stream,
            stream_time_s=stream_time_s,
            wall_time=now,
            latency_ms=max(0.0, (now - fed_at) * 1000.0),
        )


def run_file(
    samples: ArrayLike,
    frontend: FrontEnd,
    embed: EmbedFn,
    scorer: Scorer,
    config: StreamConfig | None = None,
    *,
    stream: str = "file",
    clock: Clock = time.time,
    batch: int = 16,
) -> list[Event]:
    """Run the whole core over a buffer (float32 mono at the front-end's rate), synchronously.

    Audio is fed in ``hop_s`` chunks; up to ``batch`` windows are embedded per ``embed``
    call and scored together. The events are those a live stream of the same audio would
    give (latencies aside), ending with the flush of :meth:`StreamCore.close`.
    """
    cfg = config or StreamConfig()
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    core = StreamCore(stream, frontend, cfg, clock=clock)
    engine = BatchEngine(embed, max_batch=max(1, batch))
    limit = max(1, min(batch, cfg.max_unresolved))
    pending: list[WindowRequest] = []
    events: list[Event] = []

    def flush() -> None:
        results = engine.run_now(pending)
        pending.clear()
        embs = [r.embedding for r in results if r.embedding is not None]
        rows = np.asarray(scorer.scores(np.stack(embs))) if embs else None
        names = scorer.names
        i = 0
        for res in results:
            if res.embedding is None:
                events.extend(core.on_skipped(res.request, error=True))
            else:
                assert rows is not None
                events.extend(core.on_scores(res.request, rows[i], names))
                i += 1

    hop = cfg.scheduler.hop_samples
    for start in range(0, x.size, hop):
        for h in core.feed(x[start : start + hop]):
            if isinstance(h, SilentHop):
                events.extend(core.on_silent(h))
            else:
                pending.append(h)
        if pending and core.unresolved >= limit:
            flush()
    if pending:
        flush()
    events.extend(core.close())
    return events
