"""N simulated real-time streams through the daemon core (in-process), one shared engine.

Each stream gets real speech (a folder of recordings, looped, each stream starting at a
different offset) in ``chunk_ms`` pieces paced by the event loop clock. Reported: hop ->
decision latency (p50/p99/max, ms), skipped hops, how far the feeder fell behind real
time, batches and mean batch size, CPU time per wall second.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from voiceid.audio.io import load_audio
from voiceid.models.embedder import Embedder
from voiceid.profiles.index import ProfileIndex
from voiceid.runtime.hub import EngineConfig, Hub
from voiceid.stream.decide import DecisionConfig
from voiceid.stream.pipeline import StreamConfig
from voiceid.stream.scheduler import SchedulerConfig


@dataclass(frozen=True)
class StreamsResult:
    streams: int
    duration_s: float
    hop_s: float
    window_s: float
    provider: str
    windows: int
    skipped_hops: int
    batches: int
    mean_batch: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    max_lag_ms: float  # how late the feeder got behind the real-time schedule
    cpu_per_wall: float  # process CPU seconds per wall second (2.0 = both cores busy)
    realtime: bool  # no skipped hop, feeder never > 1 hop behind

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def speech_loop(folder: Path, seconds: float, rate: int = 16000) -> NDArray[np.float32]:
    """At least ``seconds`` of speech from the folder's files (concatenated, looped)."""
    files = sorted(folder.rglob("*.flac")) + sorted(folder.rglob("*.wav"))
    if not files:
        raise FileNotFoundError(f"no .flac/.wav under {folder}")
    parts: list[NDArray[np.float32]] = []
    total = 0
    for f in files:
        x = load_audio(f, rate)
        parts.append(x)
        total += len(x)
        if total >= seconds * rate:
            break
    out = np.concatenate(parts)
    reps = int(np.ceil(seconds * rate / len(out)))
    return np.tile(out, reps)


def random_index(fingerprint: str, dim: int, n: int = 10, seed: int = 0) -> ProfileIndex:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, dim)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return ProfileIndex.from_matrix(
        fingerprint, [f"p{i}" for i in range(n)], [f"{i:032x}" for i in range(n)], m
    )


async def run_streams(
    embedder: Embedder,
    audio: NDArray[np.float32],
    *,
    streams: int,
    duration_s: float,
    hop_s: float = 0.5,
    window_s: float = 2.0,
    chunk_ms: int = 20,
    engine: EngineConfig | None = None,
) -> StreamsResult:
    rate = embedder.sample_rate
    cfg = StreamConfig(
        scheduler=SchedulerConfig(hop_s=hop_s, window_s=window_s),
        decision=DecisionConfig(enter=embedder.card.threshold),
    )
    hub = Hub(
        embedder,
        random_index(embedder.fingerprint, embedder.card.dim),
        cfg,
        engine or EngineConfig(),
        max_streams=streams,
    )
    await hub.start()
    live = [hub.open_stream(f"bench-{i}", encoding=None) for i in range(streams)]
    chunk = rate * chunk_ms // 1000
    offsets = [(i * len(audio) // max(streams, 1)) % len(audio) for i in range(streams)]
    ticks = int(duration_s * 1000 / chunk_ms)
    loop = asyncio.get_running_loop()
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    t0 = loop.time()
    max_lag = 0.0
    for k in range(ticks):
        target = t0 + k * chunk_ms / 1000
        delay = target - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            max_lag = max(max_lag, -delay)
            await asyncio.sleep(0)
        for i, s in enumerate(live):
            start = (offsets[i] + k * chunk) % (len(audio) - chunk)
            s.feed_samples(audio[start : start + chunk])
    await asyncio.sleep(0.5)  # let the last batches come back
    wall = time.perf_counter() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    stats = hub.engine.stats()
    lat = sorted(hub.hop_latency_ms)
    for s in live:
        s.close()
    await hub.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else float("nan")

    return StreamsResult(
        streams=streams,
        duration_s=duration_s,
        hop_s=hop_s,
        window_s=window_s,
        provider=embedder.model.provider,
        windows=stats.windows,
        skipped_hops=hub.skipped_hops,
        batches=stats.batches,
        mean_batch=round(stats.windows / stats.batches, 2) if stats.batches else 0.0,
        p50_ms=round(statistics.median(lat), 1) if lat else float("nan"),
        p99_ms=pct(0.99),
        max_ms=round(lat[-1], 1) if lat else float("nan"),
        max_lag_ms=round(max_lag * 1000, 1),
        cpu_per_wall=round(cpu / wall, 2),
        realtime=hub.skipped_hops == 0 and max_lag < hop_s,
    )
