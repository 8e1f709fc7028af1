"""Prometheus metrics change as audio flows through a real Hub (GE2E, real speech):
histograms, identifications by result, skipped hops, gauges; no person names anywhere
in the exposition."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from voiceid.audio.io import load_audio
from voiceid.models.embedder import Embedder
from voiceid.profiles.index import ProfileIndex
from voiceid.profiles.model import centroid
from voiceid.runtime import metrics
from voiceid.runtime.hub import EngineConfig, Hub
from voiceid.stream.decide import DecisionConfig
from voiceid.stream.pipeline import StreamConfig
from voiceid.stream.scheduler import SchedulerConfig


def value(name: str, **labels: str) -> float:
    return metrics.sample(name, labels) or 0.0


def test_metrics_follow_a_hub(speakers: dict[str, list[Path]], ge2e_embedder: Embedder) -> None:
    name = sorted(speakers)[0]
    files = speakers[name]
    person = "Zebulon"  # must never show up in /metrics
    cent = centroid([ge2e_embedder.embed(load_audio(f)) for f in files[:3]])
    index = ProfileIndex.from_matrix(ge2e_embedder.fingerprint, [person], [person], cent[None, :])
    audio = np.concatenate([load_audio(f) for f in files[3:5]])
    config = StreamConfig(
        scheduler=SchedulerConfig(),
        decision=DecisionConfig(enter=ge2e_embedder.card.stream_threshold or 0.7),
    )
    before = {
        "hops": value("voiceid_hop_latency_seconds_count"),
        "batches": value("voiceid_inference_batch_seconds_count"),
        "sizes": value("voiceid_batch_size_count"),
        "identified": value("voiceid_identifications_total", result="identified"),
        "ended": value("voiceid_identifications_total", result="ended"),
    }

    async def main() -> None:
        embedder = metrics.MeteredEmbedder(ge2e_embedder)
        hub = Hub(embedder, index, config, EngineConfig(max_batch=4, max_pending=4))
        await hub.start()
        assert value("voiceid_inference_batch_seconds_count") == before["batches"]  # warm-up
        embedder.active = True
        ws = SimpleNamespace(active=2, rejected={"protocol": 3, "too_slow": 1})
        mqtt = SimpleNamespace(connected=True, events_dropped=5)
        mics = {"mic": SimpleNamespace(overflows=7)}
        attached = metrics.attach(
            hub, websocket=ws, mqtt=mqtt, mics=mics, version="9.9", provider="CPUExecutionProvider"
        )
        counter = asyncio.create_task(metrics.count_identifications(hub.bus.subscribe()))
        try:
            assert value("voiceid_profiles") == 1
            assert value("voiceid_websocket_clients") == 2
            assert value("voiceid_rejected_clients_total", reason="protocol") == 3
            assert value("voiceid_mqtt_connected") == 1
            assert value("voiceid_mqtt_dropped_events_total") == 5
            assert value("voiceid_audio_overflows_total", source="microphone") == 7
            assert value("voiceid_build_info", version="9.9", provider="CPUExecutionProvider") == 1

            stream = hub.open_stream("room", encoding=None)
            assert value("voiceid_streams") == 1
            for i in range(0, len(audio), 1600):  # 100 ms blocks, paced
                stream.feed_samples(audio[i : i + 1600])
                await asyncio.sleep(0.005)
            for _ in range(500):  # let the engine finish
                if hub.engine.stats().pending == 0 and not hub._inflight:
                    break
                await asyncio.sleep(0.01)
            stream.close()
            assert value("voiceid_streams") == 0

            # a burst far beyond max_pending: hops are skipped and counted
            burst = hub.open_stream("burst", encoding=None)
            burst.feed_samples(audio)
            assert hub.skipped_hops > 0
            assert value("voiceid_skipped_hops_total") == hub.skipped_hops
            burst.close()
        finally:
            await hub.close()
            await asyncio.wait_for(counter, 5)
            attached.detach()

    asyncio.run(asyncio.wait_for(main(), 60))
    hops = value("voiceid_hop_latency_seconds_count") - before["hops"]
    batches = value("voiceid_inference_batch_seconds_count") - before["batches"]
    assert hops >= 10
    assert batches >= 1
    assert value("voiceid_batch_size_count") - before["sizes"] == batches
    assert value("voiceid_hop_latency_seconds_sum") > 0
    assert value("voiceid_identifications_total", result="identified") > before["identified"]
    assert value("voiceid_identifications_total", result="ended") > before["ended"]
    assert value("voiceid_profiles") == 0  # detached: nothing live

    text, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    body = text.decode()
    assert person not in body and name not in body
    for metric in (
        "voiceid_hop_latency_seconds_bucket",
        "voiceid_inference_batch_seconds_bucket",
        "voiceid_batch_size_bucket",
        "voiceid_identifications_total",
        "voiceid_skipped_hops_total",
        "voiceid_streams",
        "voiceid_websocket_clients",
        "voiceid_mqtt_connected",
        "voiceid_build_info",
    ):
        assert metric in body, metric


def test_render_without_a_daemon() -> None:
    text, _ = metrics.render()
    assert b"voiceid_streams 0.0" in text


@pytest.mark.parametrize(
    ("kind", "result"),
    [
        ("speaker_started", "identified"),
        ("speaker_changed", "changed"),
        ("unknown_speaker", "unknown"),
        ("speaker_ended", "ended"),
        ("scores", None),
    ],
)
def test_event_results(kind: str, result: str | None) -> None:
    before = {r: value("voiceid_identifications_total", result=r) for r in metrics.RESULTS.values()}
    metrics.count_event(SimpleNamespace(type=kind))  # type: ignore[arg-type]
    after = {r: value("voiceid_identifications_total", result=r) for r in metrics.RESULTS.values()}
    changed = {r for r in after if after[r] != before[r]}
    assert changed == ({result} if result else set())
