"""Prometheus metrics of the daemon (prometheus-client), served at ``/metrics``.

One registry per process. No person names as labels unless ``person_labels`` is opted in
(names are personal data): identifications are counted by result only.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

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
    "Windows per inference call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=REGISTRY,
)
IDENTIFICATIONS = Counter(
    "voiceid_identifications_total",
    "Identity events by result (identified, changed, unknown, ended)",
    ["result"],
    registry=REGISTRY,
)
SKIPPED_HOPS = Counter(
    "voiceid_skipped_hops_total",
    "Hops skipped because the engine was saturated",
    registry=REGISTRY,
)
FAILED_WINDOWS = Counter(
    "voiceid_failed_windows_total", "Windows whose inference failed", registry=REGISTRY
)
AUDIO_OVERFLOWS = Counter(
    "voiceid_audio_overflows_total",
    "Audio blocks dropped by a source queue",
    ["source"],
    registry=REGISTRY,
)
MQTT_DROPPED = Counter(
    "voiceid_mqtt_dropped_events_total",
    "Events dropped while the broker was unreachable",
    registry=REGISTRY,
)
REJECTED_CLIENTS = Counter(
    "voiceid_rejected_clients_total",
    "Clients refused or closed for a protocol error",
    ["reason"],
    registry=REGISTRY,
)
VERIFY_LOCKOUTS = Counter(
    "voiceid_verify_lockouts_total",
    "Verifications delayed by the failed-attempt lockout",
    registry=REGISTRY,
)
STREAMS = Gauge("voiceid_streams", "Live audio streams", registry=REGISTRY)
WS_CLIENTS = Gauge("voiceid_websocket_clients", "Connected WebSocket clients", registry=REGISTRY)
MQTT_CONNECTED = Gauge(
    "voiceid_mqtt_connected", "1 when connected to the broker", registry=REGISTRY
)
PROFILES = Gauge(
    "voiceid_profiles", "Enrolled profiles usable with the loaded model", registry=REGISTRY
)
BUILD_INFO = Gauge(
    "voiceid_build_info",
    "Version and inference provider",
    ["version", "provider"],
    registry=REGISTRY,
)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
