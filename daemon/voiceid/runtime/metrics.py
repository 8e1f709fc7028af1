"""Prometheus metrics of the daemon (prometheus-client), served at ``/metrics``.

One registry per process (:data:`REGISTRY`); :func:`render` gives the exposition text.
Nothing else in voiceid knows about Prometheus: the daemon feeds this module from
outside the modules it measures.

* Histograms are observed as things happen: ``voiceid_inference_batch_seconds`` and
  ``voiceid_batch_size`` by :class:`MeteredEmbedder` (the embedder handed to the hub's
  engine: one observation per model call, the batch as the model runs it, i.e. padded
  to its bucket when ``engine.batch_buckets``), ``voiceid_hop_latency_seconds`` by the
  hub's latency log (:func:`attach` swaps in a deque that also observes).
* ``voiceid_identifications_total{result}`` counts identity events from the bus
  (:func:`count_identifications`).
* Everything the sources, the engine and the MQTT sink already count (skipped hops,
  failed windows, audio overflows, dropped MQTT events, rejected clients, streams,
  clients, broker connection, profiles) is read from their stats objects at scrape time
  by a collector, so values are never stale and no polling task is needed.

No person names as labels (names are personal data): identifications are counted by
result only. Labels are fixed sets (result, source stream type, rejection reason).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from voiceid.models.embedder import Embedder
from voiceid.security import HTTP_REJECTED

if TYPE_CHECKING:
    from voiceid.runtime.hub import Hub
    from voiceid.stream.events import Event

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

HOP_LATENCY = Histogram(
    "voiceid_hop_latency_seconds",
    "From the last sample of a hop being received to its decision",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "voiceid_inference_batch_seconds",
    "Wall time of one batched inference call",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "voiceid_batch_size",
    "Windows per inference call (as run: padded to a power-of-two bucket when enabled)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=REGISTRY,
)
IDENTIFICATIONS = Counter(
    "voiceid_identifications_total",
    "Identity events by result (identified, changed, unknown, ended)",
    ["result"],
    registry=REGISTRY,
)
VERIFY_LOCKOUTS = Counter(
    "voiceid_verify_lockouts_total",
    "Verifications delayed by the failed-attempt lockout",
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "voiceid_build_info",
    "Version and inference provider",
    ["version", "provider"],
    registry=REGISTRY,
)

RESULTS = {
    "speaker_started": "identified",
    "speaker_changed": "changed",
    "unknown_speaker": "unknown",
    "speaker_ended": "ended",
}
"""Event type -> ``result`` label (``scores`` events are not identifications)."""


# -- what the scrape-time collector reads (duck-typed: no imports of the sources) --------
class WebSocketStatsLike(Protocol):
    active: int
    rejected: dict[str, int]


class MqttStatsLike(Protocol):
    connected: bool
    events_dropped: int


class OverflowCounter(Protocol):
    overflows: int


@dataclass
class Sources:
    """The stats objects of one running daemon."""

    hub: Hub
    websocket: WebSocketStatsLike | None = None
    mqtt: MqttStatsLike | None = None
    mics: Mapping[str, OverflowCounter] = field(default_factory=dict)  # stream -> queue


class _LiveCollector(Collector):
    """Counters and gauges read from the running daemon's stats objects at scrape time."""

    def __init__(self) -> None:
        self.sources: Sources | None = None

    def collect(self) -> Iterable[Metric]:
        src = self.sources  # one read: attach/detach swap it atomically
        hub = src.hub if src else None
        yield _counter(
            "voiceid_skipped_hops",
            "Hops skipped because the engine was saturated",
            hub.skipped_hops if hub else 0,
        )
        yield _counter(
            "voiceid_failed_windows",
            "Windows whose inference failed",
            hub.failed_windows if hub else 0,
        )
        overflows = CounterMetricFamily(
            "voiceid_audio_overflows", "Audio blocks dropped by a source queue", labels=["source"]
        )
        if src is not None:
            total = sum(q.overflows for q in list(src.mics.values()))
            if src.mics:
                overflows.add_metric(["microphone"], total)
        yield overflows
        yield _counter(
            "voiceid_mqtt_dropped_events",
            "Events dropped while the broker was unreachable",
            src.mqtt.events_dropped if src and src.mqtt else 0,
        )
        rejected = CounterMetricFamily(
            "voiceid_rejected_clients",
            "Clients refused or closed for a protocol error",
            labels=["reason"],
        )
        counts = dict(src.websocket.rejected) if src is not None and src.websocket else {}
        for reason, n in list(HTTP_REJECTED.rejected.items()):  # REST: auth, origin, limits
            counts[reason] = counts.get(reason, 0) + n
        for reason, n in sorted(counts.items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield _gauge("voiceid_streams", "Live audio streams", len(hub.stream_names()) if hub else 0)
        yield _gauge(
            "voiceid_websocket_clients",
            "Connected WebSocket clients",
            src.websocket.active if src and src.websocket else 0,
        )
        yield _gauge(
            "voiceid_mqtt_connected",
            "1 when connected to the broker",
            1 if src and src.mqtt and src.mqtt.connected else 0,
        )
        yield _gauge(
            "voiceid_profiles",
            "Enrolled profiles usable with the loaded model",
            len(hub.scorer.names) if hub else 0,
        )
        yield _gauge(
            "voiceid_engine_pending_windows",
            "Windows queued for inference",
            hub.engine.stats().pending if hub else 0,
        )


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


LIVE = _LiveCollector()
REGISTRY.register(LIVE)


# -- feeding ----------------------------------------------------------------------------
class MeteredEmbedder(Embedder):
    """The embedder given to the hub: each ``embed_features`` call (one engine batch) is
    timed. Observes only while ``active`` (the daemon turns it on after warm-up)."""

    def __init__(self, inner: Embedder) -> None:
        super().__init__(inner.model, inner.fingerprint)
        self.active = False

    def embed_features(self, feats: NDArray[np.float32]) -> NDArray[np.float32]:
        if not self.active:
            return super().embed_features(feats)
        t0 = time.perf_counter()
        try:
            return super().embed_features(feats)
        finally:
            BATCH_SECONDS.observe(time.perf_counter() - t0)
            BATCH_SIZE.observe(len(feats))


class _ObservedLatencies(deque[float]):
    """The hub's hop latency log (milliseconds) that also feeds the histogram (seconds)."""

    def append(self, value: float) -> None:
        super().append(value)
        HOP_LATENCY.observe(value / 1000.0)

    def extend(self, values: Iterable[float]) -> None:
        values = list(values)
        super().extend(values)
        for v in values:
            HOP_LATENCY.observe(v / 1000.0)


@dataclass
class Attachment:
    """What :func:`attach` changed; :meth:`detach` when the daemon stops."""

    sources: Sources

    def detach(self) -> None:
        if LIVE.sources is self.sources:
            LIVE.sources = None


def attach(
    hub: Hub,
    *,
    websocket: WebSocketStatsLike | None = None,
    mqtt: MqttStatsLike | None = None,
    mics: Mapping[str, OverflowCounter] | None = None,
    version: str = "",
    provider: str = "",
) -> Attachment:
    """Export ``hub`` (and the given stats objects) through :data:`REGISTRY`."""
    if not isinstance(hub.hop_latency_ms, _ObservedLatencies):
        hub.hop_latency_ms = _ObservedLatencies(hub.hop_latency_ms, hub.hop_latency_ms.maxlen)
    sources = Sources(hub, websocket, mqtt, dict(mics or {}))
    LIVE.sources = sources
    BUILD_INFO.clear()
    BUILD_INFO.labels(version=version, provider=provider).set(1)
    return Attachment(sources)


def count_event(event: Event) -> None:
    result = RESULTS.get(event.type)
    if result is not None:
        IDENTIFICATIONS.labels(result=result).inc()


async def count_identifications(events: AsyncIterable[Event]) -> int:
    """Count identity events from a bus subscription until it ends; returns the count."""
    n = 0
    async for event in events:
        count_event(event)
        n += 1
    return n


def render() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def sample(name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """One sample's current value (tests, ``voiceid doctor``)."""
    return REGISTRY.get_sample_value(name, dict(labels or {}))


def samples() -> Iterator[tuple[str, dict[str, str], float]]:
    for metric in REGISTRY.collect():
        for s in metric.samples:
            yield s.name, dict(s.labels), float(s.value)
