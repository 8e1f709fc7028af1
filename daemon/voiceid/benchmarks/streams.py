"""N simulated real-time streams through the daemon core, one shared engine.

Two ways in:

* in-process (:func:`run_streams`): each stream gets real speech (a folder of recordings,
  looped, each stream starting at a different offset) in ``chunk_ms`` pieces, fed
  straight into :class:`~voiceid.runtime.hub.LiveStream` from the event loop, paced by
  its clock;
* over loopback WebSockets (:func:`run_ws_streams`): the real ``serve_websocket`` with
  the same hub, and N WebSocket clients in ``client_procs`` separate processes, each
  sending 16-bit PCM frames of ``chunk_ms`` in real time (frame k leaves once its audio
  has "happened": at t0 + (k + 1) x chunk) and reading its events.

Reported: hop -> decision latency (p50/p99/max, ms, from the moment the hop's last
sample is fed to the core to its decision), skipped hops, windows asked for / scored,
how far the feed fell behind real time (in-process: the feeder's lag; WebSockets: the
server's intake lag, arrival of a frame at the core vs the moment its audio ended), mean
batch, process CPU per wall second, GPU utilisation (NVML or ``nvidia-smi``, sampled).

A run *holds* when no hop was skipped, the feed never fell a hop behind, and p99 is at
most ``p99_ms``. :func:`find_max` finds the largest N that holds (doubling, then
bisection).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from voiceid.models.embedder import Embedder
from voiceid.profiles.index import ProfileIndex
from voiceid.runtime.hub import EngineConfig, Hub, LiveStream
from voiceid.stream.decide import DecisionConfig
from voiceid.stream.engine import batch_buckets
from voiceid.stream.pipeline import StreamConfig
from voiceid.stream.scheduler import SchedulerConfig

DEFAULT_P99_MS = 100.0


@dataclass(frozen=True)
class StreamsResult:
    streams: int
    duration_s: float
    hop_s: float
    window_s: float
    provider: str
    windows: int  # windows embedded by the engine
    requested: int  # windows the streams asked for
    scored: int  # windows whose scores reached the deciders
    skipped_hops: int
    batches: int
    mean_batch: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    max_lag_ms: float  # how far the feed got behind the real-time schedule
    p99_lag_ms: float
    cpu_per_wall: float  # process CPU seconds per wall second (2.0 = two cores busy)
    gpu_util: float | None  # mean GPU utilisation (%) during the run
    gpu_util_max: float | None
    realtime: bool  # no skipped hop, feed never >= 1 hop behind
    holds: bool  # realtime and p99 <= p99_target_ms
    p99_target_ms: float = DEFAULT_P99_MS
    mode: str = "inproc"
    chunk_ms: int = 20
    windows_per_s: float = 0.0  # scored windows per second of the run
    client_cpu_per_wall: float | None = None  # WebSocket client processes, together
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def delivered(self) -> float:
        """Fraction of the windows asked for that were scored."""
        return self.scored / self.requested if self.requested else 1.0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["delivered"] = round(self.delivered, 4)
        return out

    def line(self) -> str:
        gpu = "" if self.gpu_util is None else f" gpu={self.gpu_util:5.1f}%"
        return (
            f"{self.mode:16} streams={self.streams:6d} win/s={self.windows_per_s:8.1f} "
            f"delivered={100 * self.delivered:5.1f}% skipped={self.skipped_hops:5d} "
            f"batch={self.mean_batch:6.1f} p50={self.p50_ms:7.1f} p99={self.p99_ms:7.1f} "
            f"max={self.max_ms:7.1f} ms lag={self.max_lag_ms:6.1f} ms "
            f"cpu={self.cpu_per_wall:4.2f}{gpu} {'HOLDS' if self.holds else 'fails'}"
        )


def speech_loop(folder: Path, seconds: float, rate: int = 16000) -> NDArray[np.float32]:
    """At least ``seconds`` of speech from the folder's files (concatenated, looped)."""
    from voiceid.audio.io import load_audio

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


# -- GPU utilisation -----------------------------------------------------------------------


class GpuSampler:
    """Samples GPU utilisation (%) every ``period_s`` in a thread: NVML, else nvidia-smi."""

    def __init__(self, period_s: float = 0.25, device: int = 0) -> None:
        self.period_s = period_s
        self.device = device
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read: Callable[[], float | None] | None = self._reader()

    def _reader(self) -> Callable[[], float | None] | None:
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.device)

            def nvml() -> float | None:
                return float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

            nvml()
            return nvml
        except Exception:
            pass
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return None

        def smi() -> float | None:
            try:
                out = subprocess.run(
                    [
                        exe,
                        f"--id={self.device}",
                        "--query-gpu=utilization.gpu",
                        "--format=csv,noheader,nounits",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=True,
                ).stdout
                return float(out.strip().splitlines()[0])
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return None

        return smi if smi() is not None else None

    @property
    def available(self) -> bool:
        return self._read is not None

    def __enter__(self) -> GpuSampler:
        if self._read is not None:
            self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        assert self._read is not None
        while not self._stop.wait(self.period_s):
            v = self._read()
            if v is not None:
                self.samples.append(v)

    def mean(self) -> float | None:
        return round(statistics.fmean(self.samples), 1) if self.samples else None

    def max(self) -> float | None:
        return max(self.samples) if self.samples else None


# -- shared helpers --------------------------------------------------------------------------


def _stream_config(
    embedder: Embedder, hop_s: float, window_s: float, slice_s: float | None = None
) -> StreamConfig:
    """The daemon's defaults with this hop, window and front-end slice (None: default)."""
    scheduler = SchedulerConfig(hop_s=hop_s, window_s=window_s)
    if slice_s is not None:
        scheduler = dataclasses.replace(scheduler, slice_s=slice_s)
    return StreamConfig(
        scheduler=scheduler,
        decision=DecisionConfig(enter=embedder.card.threshold),
    )


def _prepare(hub: Hub) -> None:
    """Build every (batch, frames) bucket's static GPU session before the clock starts."""
    model = hub.embedder.model
    prepare = getattr(model, "prepare", None)
    if prepare is None:
        return
    ec = hub.engine_config
    sizes = batch_buckets(ec.max_batch) if hub.pad_batches else (1,)
    frames = hub.stream_config.scheduler.bucket_frames(hub.embedder.card.frontend)
    prepare([(b, t) for t in frames for b in sizes])


async def _started_hub(
    embedder: Embedder, cfg: StreamConfig, engine: EngineConfig | None, streams: int
) -> Hub:
    """The bench's hub: random profiles, every GPU bucket built, warmed up."""
    hub = Hub(
        embedder,
        random_index(embedder.fingerprint, embedder.card.dim),
        cfg,
        engine or EngineConfig(),
        max_streams=streams,
    )
    await asyncio.to_thread(_prepare, hub)
    await hub.start()
    return hub


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 1)


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class _Run:
    """What both modes measure around the hub."""

    hub: Hub
    live: list[LiveStream]
    wall0: float
    cpu0: float
    lags: list[float]

    def result(
        self,
        *,
        mode: str,
        streams: int,
        duration_s: float,
        hop_s: float,
        window_s: float,
        chunk_ms: int,
        p99_ms: float,
        gpu: GpuSampler,
        embedder: Embedder,
        client_cpu: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> StreamsResult:
        wall = time.perf_counter() - self.wall0
        cpu = _cpu_s() - self.cpu0
        hub = self.hub
        stats = hub.engine.stats()
        lat = list(hub.hop_latency_ms)
        requested = sum(s.core.stats.windows for s in self.live)
        scored = sum(s.core.stats.scored for s in self.live)
        max_lag = max(self.lags, default=0.0)
        realtime = hub.skipped_hops == 0 and max_lag < hop_s
        p99 = _pct(lat, 0.99)
        return StreamsResult(
            streams=streams,
            duration_s=duration_s,
            hop_s=hop_s,
            window_s=window_s,
            provider=embedder.model.provider,
            windows=stats.windows,
            requested=requested,
            scored=scored,
            skipped_hops=hub.skipped_hops,
            batches=stats.batches,
            mean_batch=round(stats.windows / stats.batches, 2) if stats.batches else 0.0,
            p50_ms=round(statistics.median(lat), 1) if lat else float("nan"),
            p99_ms=p99,
            max_ms=round(max(lat), 1) if lat else float("nan"),
            max_lag_ms=round(max_lag * 1000, 1),
            p99_lag_ms=round(_pct(self.lags, 0.99) * 1000, 1) if self.lags else 0.0,
            cpu_per_wall=round(cpu / wall, 2),
            gpu_util=gpu.mean(),
            gpu_util_max=gpu.max(),
            realtime=realtime,
            holds=realtime and bool(lat) and p99 <= p99_ms,
            p99_target_ms=p99_ms,
            mode=mode,
            chunk_ms=chunk_ms,
            windows_per_s=round(scored / duration_s, 1),
            client_cpu_per_wall=None if client_cpu is None else round(client_cpu / wall, 2),
            extra=extra or {},
        )


# -- in-process --------------------------------------------------------------------------------


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
    p99_ms: float = DEFAULT_P99_MS,
    stagger: bool = False,
    slice_s: float | None = None,
) -> StreamsResult:
    """N streams fed from the event loop (no sockets): the daemon core's own limit.

    All streams start at the same instant, so their hops end in the same tick: every
    window of every stream arrives at once (the worst case). ``stagger``: stream i
    starts i/N of a hop earlier (its first chunk is preceded by that much audio), so hop
    ends spread evenly over the hop, as for streams that connected at random times.
    """
    rate = embedder.sample_rate
    cfg = _stream_config(embedder, hop_s, window_s, slice_s)
    hub = await _started_hub(embedder, cfg, engine, streams)
    live = [hub.open_stream(f"bench-{i}", encoding=None) for i in range(streams)]
    chunk = rate * chunk_ms // 1000
    offsets = [(i * len(audio) // max(streams, 1)) % len(audio) for i in range(streams)]
    ticks = int(duration_s * 1000 / chunk_ms)
    if stagger:
        hop = round(hop_s * rate)
        for i, s in enumerate(live):
            ahead = (i * hop // max(streams, 1)) // chunk * chunk  # < one hop: no hop end
            if ahead:
                s.feed_samples(audio[offsets[i] : offsets[i] + ahead])
                offsets[i] += ahead
    loop = asyncio.get_running_loop()
    run = _Run(hub, live, time.perf_counter(), _cpu_s(), [])
    with GpuSampler() as gpu:
        t0 = loop.time()
        for k in range(ticks):
            target = t0 + k * chunk_ms / 1000
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                run.lags.append(-delay)
                await asyncio.sleep(0)
            for i, s in enumerate(live):
                start = (offsets[i] + k * chunk) % (len(audio) - chunk)
                s.feed_samples(audio[start : start + chunk])
        await _settle(hub, live)
    res = run.result(
        mode="inproc-staggered" if stagger else "inproc",
        streams=streams,
        duration_s=duration_s,
        hop_s=hop_s,
        window_s=window_s,
        chunk_ms=chunk_ms,
        p99_ms=p99_ms,
        gpu=gpu,
        embedder=embedder,
    )
    for s in live:
        s.close()
    await hub.close()
    return res


async def _settle(hub: Hub, live: list[LiveStream], timeout_s: float = 2.0) -> None:
    """Let the last batches come back (at most ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (
        hub.engine.stats().pending or any(s.core.unresolved for s in live)
    ):
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)


# -- WebSockets -----------------------------------------------------------------------------------


def _ws_clients(
    port: int,
    names: list[str],
    pcm: bytes,
    offsets: list[int],
    chunk_ms: int,
    t0: float,
    duration_s: float,
    out: Any,
    ahead: list[int] | None = None,
) -> None:
    """One client process: ``len(names)`` streams over WebSockets, paced in real time."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    res = asyncio.run(_ws_clients_async(port, names, pcm, offsets, chunk_ms, t0, duration_s, ahead))
    r = resource.getrusage(resource.RUSAGE_SELF)
    res["cpu_s"] = r.ru_utime + r.ru_stime
    out.put(res)


async def _ws_clients_async(
    port: int,
    names: list[str],
    pcm: bytes,
    offsets: list[int],
    chunk_ms: int,
    t0: float,
    duration_s: float,
    ahead: list[int] | None = None,
) -> dict[str, Any]:
    """``ahead[i]``: bytes of stream i sent at once before t0 (staggered hop ends)."""
    from websockets.asyncio.client import ClientConnection, connect

    from voiceid.sources.protocol import STOP_MESSAGE, StartMessage

    frame = 16000 * chunk_ms // 1000 * 2  # bytes of one PCM16 frame
    url = f"ws://127.0.0.1:{port}/stream"
    gate = asyncio.Semaphore(64)
    events = 0
    failed = 0

    async def open_one(name: str) -> ClientConnection | None:
        nonlocal failed
        async with gate:
            try:
                ws = await connect(url, compression=None, max_size=1 << 20, open_timeout=60)
                await ws.send(StartMessage(name, 16000, "pcm_s16le").to_json())
                reply = json.loads(await ws.recv())
                if reply.get("type") != "ready":  # refused (too many streams, ...)
                    failed += 1
                    await ws.close()
                    return None
                return ws
            except Exception:
                failed += 1
                return None

    async def reader(ws: ClientConnection) -> None:
        nonlocal events
        with contextlib.suppress(Exception):
            async for _msg in ws:
                events += 1

    conns = await asyncio.gather(*(open_one(n) for n in names))
    offsets = list(offsets)
    for i, ws in enumerate(conns):
        if ws is not None and ahead and ahead[i]:
            with contextlib.suppress(Exception):
                await ws.send(pcm[offsets[i] : offsets[i] + ahead[i]])
            offsets[i] += ahead[i]
    readers = [asyncio.create_task(reader(ws)) for ws in conns if ws is not None]
    ticks = int(duration_s * 1000 / chunk_ms)
    max_late = 0.0
    start_late = time.time() - t0
    for k in range(ticks):
        due = t0 + (k + 1) * chunk_ms / 1000
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            max_late = max(max_late, -delay)
        for i, ws in enumerate(conns):
            if ws is None:
                continue
            start = (offsets[i] + k * frame) % (len(pcm) - frame)
            start -= start % 2
            with contextlib.suppress(Exception):
                await ws.send(pcm[start : start + frame])
    for ws in conns:
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.send(STOP_MESSAGE)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), 15.0)
    for ws in conns:
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
    return {
        "streams": len(names),
        "failed": failed,
        "events": events,
        "max_late_s": max_late,
        "start_late_s": start_late,
    }


def _start_clients(
    port: int,
    audio: NDArray[np.float32],
    streams: int,
    chunk_ms: int,
    t0: float,
    duration_s: float,
    procs_n: int,
    stagger_s: float = 0.0,
) -> tuple[list[Any], Any]:
    """``procs_n`` client processes with ``streams`` WebSocket streams between them.

    ``stagger_s`` (a hop): stream i first sends i/N of it at once, so that the hop ends
    of the streams spread over the hop (streams that connected at different times)."""
    rate = 16000
    pcm = (np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2")).tobytes()
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    names = [f"ws-{i}" for i in range(streams)]
    frame = rate * chunk_ms // 1000 * 2
    offsets = [(i * (len(pcm) // max(streams, 1))) // frame * frame for i in range(streams)]
    shards = [list(range(p, streams, procs_n)) for p in range(procs_n)]
    hop = int(stagger_s * rate) * 2
    ahead = [(i * hop // max(streams, 1)) // frame * frame for i in range(streams)]
    procs = [
        ctx.Process(
            target=_ws_clients,
            args=(
                port,
                [names[i] for i in shard],
                pcm,
                [offsets[i] for i in shard],
                chunk_ms,
                t0,
                duration_s,
                out,
                [ahead[i] for i in shard],
            ),
            daemon=True,
        )
        for shard in shards
        if shard
    ]
    for p in procs:
        p.start()
    return procs, out


def _client_extra(reports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "client_procs": len(reports),
        "connect_failed": sum(int(r["failed"]) for r in reports),
        "events": sum(int(r["events"]) for r in reports),
        "client_max_late_ms": round(1000 * max(float(r["max_late_s"]) for r in reports), 1),
        "client_start_late_ms": round(1000 * max(float(r["start_late_s"]) for r in reports), 1),
    }


async def run_ws_streams(
    embedder: Embedder,
    audio: NDArray[np.float32],
    *,
    streams: int,
    duration_s: float,
    hop_s: float = 0.5,
    window_s: float = 2.0,
    chunk_ms: int = 20,
    engine: EngineConfig | None = None,
    p99_ms: float = DEFAULT_P99_MS,
    client_procs: int | None = None,
    setup_s: float | None = None,
    slice_s: float | None = None,
) -> StreamsResult:
    """N WebSocket clients (other processes) -> real ``serve_websocket`` -> hub -> events."""
    from voiceid.config import WebSocketSection
    from voiceid.sources.websocket import WebSocketStats, serve_websocket

    rate = embedder.sample_rate
    cfg = _stream_config(embedder, hop_s, window_s, slice_s)
    hub = await _started_hub(embedder, cfg, engine, streams)
    loop = asyncio.get_running_loop()
    procs_n = client_procs or max(1, min((os.cpu_count() or 2) // 2, (streams + 199) // 200))
    setup = setup_s if setup_s is not None else 3.0 + streams / 400
    t0 = time.time() + setup
    ws_cfg = WebSocketSection(port=0, max_streams=streams, event_queue=1024)
    started: asyncio.Future[int] = loop.create_future()
    stats = WebSocketStats()
    server = asyncio.create_task(serve_websocket(hub, ws_cfg, started=started, stats=stats))
    port = await started

    # server-side intake lag: when a frame reaches the core vs when its audio ended
    lags: list[float] = []
    bytes_per_s = 2 * rate
    opened: list[LiveStream] = []
    original_open = hub.open_stream

    def open_and_watch(name: str, **kw: Any) -> LiveStream:
        live = original_open(name, **kw)
        opened.append(live)
        received = 0
        feed = live.feed_bytes

        def timed_feed(data: bytes) -> None:
            nonlocal received
            received += len(data)
            lag = time.time() - (t0 + received / bytes_per_s)
            if lag > 0:
                lags.append(lag)
            feed(data)

        live.feed_bytes = timed_feed  # type: ignore[method-assign]
        return live

    hub.open_stream = open_and_watch  # type: ignore[method-assign]
    procs, out = _start_clients(port, audio, streams, chunk_ms, t0, duration_s, procs_n)
    # measure from t0 (connections are set up before it)
    await asyncio.sleep(max(0.0, t0 - time.time()))
    run = _Run(hub, opened, time.perf_counter(), _cpu_s(), lags)
    with GpuSampler() as gpu:
        reports: list[dict[str, Any]] = []
        for _ in procs:
            reports.append(await loop.run_in_executor(None, out.get))
        await _settle(hub, opened)
    for p in procs:
        p.join(10)
    client_cpu = sum(float(r["cpu_s"]) for r in reports)
    res = run.result(
        mode="ws",
        streams=streams,
        duration_s=duration_s,
        hop_s=hop_s,
        window_s=window_s,
        chunk_ms=chunk_ms,
        p99_ms=p99_ms,
        gpu=gpu,
        embedder=embedder,
        client_cpu=client_cpu,
        extra={**_client_extra(reports), "ws_rejections": stats.rejections},
    )
    failed = int(res.extra["connect_failed"])
    if failed or float(res.extra["client_start_late_ms"]) > 0:
        res = replace(
            res, holds=res.holds and failed == 0 and res.extra["client_start_late_ms"] < 100
        )
    server.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await server
    await hub.close()
    return res


# -- search --------------------------------------------------------------------------------


def find_max(
    trial: Callable[[int], Awaitable[StreamsResult]] | Callable[[int], StreamsResult],
    *,
    start: int = 16,
    limit: int = 100_000,
    tolerance: float = 0.1,
    report: Callable[[StreamsResult], None] | None = None,
) -> tuple[int, list[StreamsResult]]:
    """Largest N for which ``trial(N).holds``: double from ``start``, then bisect.

    Stops bisecting when the gap is within ``tolerance`` of the best N found. Returns that
    N (0: even ``start`` fails) and every trial, in order.
    """
    results: list[StreamsResult] = []

    def run(n: int) -> bool:
        r = trial(n)
        if asyncio.iscoroutine(r):
            r = asyncio.run(r)
        assert isinstance(r, StreamsResult)
        results.append(r)
        if report is not None:
            report(r)
        return r.holds

    good, bad = 0, None
    n = max(1, start)
    while n <= limit:
        if run(n):
            good = n
            n *= 2
        else:
            bad = n
            break
    if bad is None:
        return good, results
    while bad - good > max(1, int(tolerance * max(good, 1))):
        mid = (good + bad) // 2
        if run(mid):
            good = mid
        else:
            bad = mid
    return good, results


# -- CPU side by side ----------------------------------------------------------------------


def _speech_windows(
    audio: NDArray[np.float32], window_s: float, count: int, rate: int = 16000
) -> list[NDArray[np.float32]]:
    """``count`` windows of ``window_s`` seconds from the speech loop, 1.3 s apart."""
    n = round(window_s * rate)
    step = round(1.3 * rate)
    return [audio[i * step : i * step + n] for i in range(count) if i * step + n <= len(audio)]


def _rate(fn: Callable[[NDArray[np.float32]], object], windows: list[NDArray[np.float32]]) -> float:
    """Windows per second of ``fn`` over ``windows`` (one warm-up pass of 3 first)."""
    for w in windows[:3]:
        fn(w)
    t0 = time.perf_counter()
    for w in windows:
        fn(w)
    return len(windows) / (time.perf_counter() - t0)


def sherpa_extractor(model_path: Path, threads: int | None) -> Any:
    """A sherpa-onnx speaker-embedding extractor for the same ONNX file (None: not installed)."""
    try:
        import sherpa_onnx
    except ImportError:
        return None
    cfg = sherpa_onnx.SpeakerEmbeddingExtractorConfig(
        model=str(model_path), num_threads=threads or (os.cpu_count() or 1), provider="cpu"
    )
    return sherpa_onnx.SpeakerEmbeddingExtractor(cfg)


def compare(
    embedder: Embedder,
    audio: NDArray[np.float32],
    *,
    window_s: float = 2.0,
    hop_s: float = 0.5,
    count: int = 40,
    rounds: int = 5,
    duration_s: float = 20.0,
    p99_ms: float = 1000.0,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One run, one machine: model-only, our per-window path, sherpa-onnx's, live streams.

    Interleaved (``rounds`` rounds, each timing every variant once on ``count / rounds``
    windows, in a rotating order; medians reported), so that load from other processes
    hits all variants alike:

    * model-only: the model on ready features, batch 1 and batch 8;
    * ours: fbank + CMN + model for one window of real speech at a time;
    * sherpa-onnx: ``SpeakerEmbeddingExtractor`` (its own front-end) on the same windows
      and the same ONNX file (if installed).

    Then the largest N of in-process real-time streams that holds (no skipped hop,
    p99 <= ``p99_ms``) and the windows/s they got scored, as a share of model-only.
    """
    say = log or (lambda _s: None)
    model = embedder.model
    windows = _speech_windows(audio, window_s, count)
    feats = [embedder.features(w) for w in windows]
    per = max(1, len(windows) // rounds)
    variants: dict[str, Callable[[int], int]] = {}

    def model_b1(r: int) -> int:
        for f in feats[r * per : (r + 1) * per]:
            model.embed(f[None])
        return per

    def model_b8(r: int) -> int:
        batch = np.stack(feats[r * per : r * per + 8] or feats[:8])
        model.embed(batch)
        return len(batch)

    def ours(r: int) -> int:
        for w in windows[r * per : (r + 1) * per]:
            embedder.embed(w, check=False)
        return per

    variants = {"model-only B=1": model_b1, "model-only B=8": model_b8, "ours B=1": ours}
    extractor = sherpa_extractor(model.path, threads)

    def sherpa_embed(w: NDArray[np.float32]) -> NDArray[np.float32]:
        st = extractor.create_stream()
        st.accept_waveform(embedder.sample_rate, w)
        st.input_finished()
        return np.asarray(extractor.compute(st), dtype=np.float32)

    if extractor is not None:

        def sherpa(r: int) -> int:
            for w in windows[r * per : (r + 1) * per]:
                sherpa_embed(w)
            return per

        variants["sherpa-onnx B=1"] = sherpa
    else:
        say("sherpa-onnx: not installed (pip install sherpa-onnx)")
    for fn in variants.values():  # warm-up
        fn(0)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            n = variants[k](r)
            rates[k].append(n / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    for k, v in med.items():
        say(f"{k:16} {v:7.2f} win/s ({1000 / v:6.1f} ms/window)")
    model_wps = max(med["model-only B=1"], med["model-only B=8"])
    out: dict[str, Any] = {
        "provider": model.provider,
        "threads": threads,
        "window_s": window_s,
        "rounds": rounds,
        "rates_wps": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "median_wps": {k: round(v, 2) for k, v in med.items()},
        "model_only_wps": round(model_wps, 2),
    }
    if extractor is not None:
        a = np.stack([embedder.embed(w, check=False) for w in windows[:10]])
        b = np.stack([sherpa_embed(w) for w in windows[:10]])
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        cos = (a * b).sum(axis=1)
        ratio = med["ours B=1"] / med["sherpa-onnx B=1"]
        out["ours_over_sherpa"] = round(ratio, 3)
        out["cosine_ours_sherpa"] = [round(float(cos.min()), 5), round(float(cos.mean()), 5)]
        say(
            f"ours/sherpa {ratio:.2f}; cosine ours vs sherpa (different front-ends) "
            f"min {cos.min():.4f} mean {cos.mean():.4f}"
        )

    def trial(n: int) -> StreamsResult:
        return asyncio.run(
            run_streams(
                embedder,
                audio,
                streams=n,
                duration_s=duration_s,
                hop_s=hop_s,
                window_s=window_s,
                p99_ms=p99_ms,
            )
        )

    def report(r: StreamsResult) -> None:
        say(r.line())

    best, runs = find_max(trial, start=2, limit=4096, report=report)
    at_best = [r for r in runs if r.streams == best and r.holds]
    delivered_wps = at_best[-1].windows_per_s if at_best else 0.0
    share = delivered_wps / model_wps if model_wps else 0.0
    say(
        f"streams: largest N that holds = {best}: {delivered_wps:.1f} win/s scored = "
        f"{100 * share:.1f} % of model-only ({model_wps:.1f} win/s)"
    )
    out.update(
        {
            "largest_holding": best,
            "delivered_wps": delivered_wps,
            "delivered_share": round(share, 4),
            "runs": [r.as_dict() for r in runs],
        }
    )
    return out


# -- WebSockets, front-end worker processes ----------------------------------------------------


async def run_pool_streams(
    embedder: Embedder,
    audio: NDArray[np.float32],
    *,
    streams: int,
    workers: int,
    duration_s: float,
    hop_s: float = 0.5,
    window_s: float = 2.0,
    chunk_ms: int = 20,
    engine: EngineConfig | None = None,
    p99_ms: float = DEFAULT_P99_MS,
    client_procs: int | None = None,
    setup_s: float | None = None,
    slice_s: float | None = None,
    stagger: bool = False,
    inflight: int | None = None,
    switch_ms: float | None = None,
) -> StreamsResult:
    """N WebSocket clients -> the daemon's :class:`WorkerPool` (``websocket.workers``)
    -> one model in this process. Latency, skipped hops and counts come from the
    workers (as the daemon's metrics get them); the feed's lag is the clients' lateness."""
    from voiceid.config import LogSection, Settings, WebSocketSection
    from voiceid.runtime.embclient import DEFAULT_INFLIGHT
    from voiceid.runtime.workers import WorkerPool, reserve_port
    from voiceid.sources.websocket import WebSocketStats

    cfg = _stream_config(embedder, hop_s, window_s, slice_s)
    hub = await _started_hub(embedder, cfg, engine, streams)
    ws_cfg = WebSocketSection(port=0, max_streams=streams, event_queue=1024, workers=workers)
    settings = Settings(websocket=ws_cfg, log=LogSection(level="WARNING"))
    sock = reserve_port("127.0.0.1", 0)
    port = int(sock.getsockname()[1])
    stats = WebSocketStats()
    inflight = inflight or DEFAULT_INFLIGHT
    switch_s = None if switch_ms is None else switch_ms / 1000.0
    switch_before = sys.getswitchinterval()
    if switch_s is not None:  # this process is the daemon process
        sys.setswitchinterval(switch_s)
    pool = WorkerPool(
        hub,
        settings,
        port,
        workers=workers,
        websocket_stats=stats,
        inflight=inflight,
        switch_interval_s=switch_s,
    )
    await pool.start()
    supervisor = asyncio.create_task(pool.run())
    loop = asyncio.get_running_loop()
    procs_n = client_procs or max(1, min((os.cpu_count() or 2) // 2, (streams + 199) // 200))
    t0 = time.time() + (setup_s if setup_s is not None else 3.0 + streams / 400)
    procs, out = _start_clients(
        port, audio, streams, chunk_ms, t0, duration_s, procs_n, hop_s if stagger else 0.0
    )
    await asyncio.sleep(max(0.0, t0 - time.time()))
    hub.hop_latency_ms.clear()  # warm-up windows are not part of the run
    for q in (*hub.stage_ms.values(), pool.batcher.wait_ms, pool.batcher.model_ms):
        q.clear()
    wall0, cpu0 = time.perf_counter(), _cpu_s()
    b0 = pool.batcher.stats()
    cpu_w0 = {w.wid: float(w.stats.get("cpu_s", 0.0)) for w in pool.workers()}
    with GpuSampler() as gpu:
        reports = [await loop.run_in_executor(None, out.get) for _ in procs]
        deadline = time.monotonic() + 5.0  # the last windows come back
        while time.monotonic() < deadline and (
            pool.totals()["scored"] < pool.totals()["windows"] or pool.totals()["streams"]
        ):
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # one more stats message from every worker
    wall = time.perf_counter() - wall0
    cpu = _cpu_s() - cpu0
    for p in procs:
        p.join(10)
    b1 = pool.batcher.stats()
    totals = pool.totals()
    worker_cpu = [float(w.stats.get("cpu_s", 0.0)) - cpu_w0.get(w.wid, 0.0) for w in pool.workers()]
    supervisor.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await supervisor
    sock.close()
    await hub.close()
    sys.setswitchinterval(switch_before)
    lat = list(hub.hop_latency_ms)
    p99 = _pct(lat, 0.99)
    extra = _client_extra(reports)
    max_late = float(extra["client_max_late_ms"])
    realtime = (
        hub.skipped_hops == 0
        and max_late < 1000 * hop_s
        and totals["scored"] == totals["windows"]
        and extra["connect_failed"] == 0
        and extra["client_start_late_ms"] < 100
    )
    batches = b1.batches - b0.batches
    windows = b1.windows - b0.windows
    return StreamsResult(
        streams=streams,
        duration_s=duration_s,
        hop_s=hop_s,
        window_s=window_s,
        provider=embedder.model.provider,
        windows=windows,
        requested=totals["windows"],
        scored=totals["scored"],
        skipped_hops=hub.skipped_hops,
        batches=batches,
        mean_batch=round(windows / batches, 2) if batches else 0.0,
        p50_ms=round(statistics.median(lat), 1) if lat else float("nan"),
        p99_ms=p99,
        max_ms=round(max(lat), 1) if lat else float("nan"),
        max_lag_ms=max_late,
        p99_lag_ms=max_late,
        cpu_per_wall=round(cpu / wall, 2),
        gpu_util=gpu.mean(),
        gpu_util_max=gpu.max(),
        realtime=realtime,
        holds=realtime and bool(lat) and p99 <= p99_ms,
        p99_target_ms=p99_ms,
        mode=f"ws+{workers}workers" + ("-staggered" if stagger else ""),
        chunk_ms=chunk_ms,
        windows_per_s=round(totals["scored"] / duration_s, 1),
        client_cpu_per_wall=round(sum(float(r["cpu_s"]) for r in reports) / wall, 2),
        extra={
            **extra,
            "workers": workers,
            "inflight": inflight,
            "switch_ms": switch_ms,
            "worker_cpu_per_wall_max": round(max(worker_cpu, default=0.0) / wall, 2),
            "worker_cpu_per_wall_sum": round(sum(worker_cpu) / wall, 2),
            "ws_rejections": stats.rejections,
            "ws_rejected": dict(stats.rejected),
            "restarts": pool.restarts,
            # p50 / p99 ms of each stage of a hop (worker: queued, embed = the round trip,
            # decide) and inside the round trip (daemon: batch wait per block, model call)
            "stages_ms": {
                name: [_pct(list(q), 0.5), _pct(list(q), 0.99)]
                for name, q in (
                    *hub.stage_ms.items(),
                    ("batch_wait", pool.batcher.wait_ms),
                    ("model", pool.batcher.model_ms),
                )
            },
        },
    )
