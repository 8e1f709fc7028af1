"""Soak test: N concurrent WebSocket streams for T minutes against a real Hub + server.

Usage (not run in CI)::

    .venv/bin/python bench/soak.py --streams 50 --minutes 10 [--threads 2] [--json FILE]

The server side is the daemon's own: the GE2E model (``resemblyzer-ge2e``, fetched into
the cache if missing), a :class:`~voiceid.runtime.hub.Hub` with its batching engine, and
:func:`~voiceid.sources.websocket.serve_websocket` on a loopback port. ``--speakers``
LibriSpeech speakers are enrolled from 3 recordings each; every stream then plays, in
real time (100 ms ``pcm_s16le`` frames on an absolute schedule), other recordings of one
of them, each utterance followed by ``--gap-s`` of silence, looped. The clients run in a
separate process (``--client-procs``), so their CPU does not hide in the server's loop.

Reported per minute: server RSS (VmRSS) and its growth since minute 1, hop -> decision
latency percentiles (``Hub.hop_latency_ms``: the hop's last sample fed to its decision),
windows embedded / failed / skipped, event messages received by the clients, and, per
utterance played, whether a ``speaker_started`` naming the right speaker came (``events
vs expected``). At the end: totals, wrong or missing identifications, engine errors,
WebSocket rejections, RSS first/last/max.

Audio: ``--audio DIR`` (default ``../shared/audio/librispeech-test-other``), one
sub-directory of FLAC files per speaker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parents[1]
DEFAULT_AUDIO = REPO.parent / "shared" / "audio" / "librispeech-test-other"
RATE = 16000
FRAME_S = 0.1
FRAME_BYTES = int(RATE * FRAME_S) * 2


# ------------------------------------------------------------------------ helpers


def rss_mb() -> float:
    """Resident set size of this process (MiB), from /proc."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def pcm16(x: NDArray[np.float32]) -> bytes:
    return bytes((np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())


@dataclass
class Script:
    """What one stream plays: utterances of ``speaker`` separated by silence."""

    speaker: str
    pcm: bytes
    segments: list[tuple[float, float]]  # (start_s, end_s) of each utterance in the loop


@dataclass
class ClientMinute:
    minute: int
    messages: int = 0
    types: dict[str, int] = field(default_factory=dict)
    starts_expected: int = 0  # utterances whose identification window closed this minute
    starts_correct: int = 0
    starts_wrong: int = 0  # speaker_started/changed naming someone else


@dataclass
class ClientReport:
    minutes: list[ClientMinute]
    streams_ok: int
    streams_failed: list[str]
    close_codes: dict[str, int]
    latency_ms: list[float]  # event latency_ms fields (server-side, per event)


# -------------------------------------------------------------------------- clients


async def _one_stream(
    url: str,
    name: str,
    script: Script,
    t_start: float,
    t_end: float,
    minutes: dict[int, ClientMinute],
    latencies: list[float],
    grace_s: float,
) -> tuple[bool, int | None]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    def minute_of(t: float) -> ClientMinute:
        m = int((t - t_start) // 60)
        return minutes.setdefault(m, ClientMinute(m))

    ws = await connect(url, compression=None, max_size=None, open_timeout=60)
    await ws.send(
        json.dumps({"type": "start", "stream": name, "sample_rate": RATE, "encoding": "pcm_s16le"})
    )
    ready = json.loads(await ws.recv())
    if ready.get("type") != "ready":
        raise RuntimeError(f"{name}: no ready: {ready}")
    t0 = time.monotonic()
    loop_s = len(script.pcm) / 2 / RATE
    starts: list[tuple[float, str]] = []  # (stream time, name) of speaker_started/changed

    async def reader() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                msg = json.loads(raw)
                m = minute_of(time.monotonic())
                m.messages += 1
                kind = str(msg.get("type"))
                m.types[kind] = m.types.get(kind, 0) + 1
                if "latency_ms" in msg:
                    latencies.append(float(msg["latency_ms"]))
                if kind in ("speaker_started", "speaker_changed"):
                    starts.append((float(msg["stream_time_s"]), str(msg["name"])))
                    if msg["name"] != script.speaker:
                        m.starts_wrong += 1

    task = asyncio.create_task(reader())
    k = 0
    offset = 0
    try:
        while t0 + (k + 1) * FRAME_S <= t_end:
            due = t0 + (k + 1) * FRAME_S  # frame k leaves once its audio has "happened"
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            end = offset + FRAME_BYTES
            frame = script.pcm[offset:end]
            if len(frame) < FRAME_BYTES:
                frame += script.pcm[: FRAME_BYTES - len(frame)]
                offset = FRAME_BYTES - (len(script.pcm) - offset)
            else:
                offset = end % len(script.pcm)
            await ws.send(frame)
            k += 1
    except ConnectionClosed:
        pass
    sent_s = k * FRAME_S
    with contextlib.suppress(ConnectionClosed):
        await ws.send(json.dumps({"type": "stop"}))
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), grace_s)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    with contextlib.suppress(Exception):
        await ws.close()
    # events vs expected: every utterance that was played in full should have been
    # identified (speaker_started naming the right speaker) while it played
    n_loops = int(sent_s // loop_s) + 1
    for loop_i in range(n_loops):
        for seg_start, seg_end in script.segments:
            a, b = loop_i * loop_s + seg_start, loop_i * loop_s + seg_end
            if b > sent_s:
                continue
            m = minute_of(t0 + b)
            m.starts_expected += 1
            if any(a <= t <= b + 1.0 and who == script.speaker for t, who in starts):
                m.starts_correct += 1
    return True, ws.close_code


async def _clients(
    url: str, jobs: list[tuple[str, Script]], duration_s: float, ramp_s: float
) -> ClientReport:
    minutes: dict[int, ClientMinute] = {}
    latencies: list[float] = []
    t_start = time.monotonic()
    t_end = t_start + duration_s

    async def run(i: int, name: str, script: Script) -> tuple[bool, int | None]:
        await asyncio.sleep(ramp_s * i / max(1, len(jobs)))
        return await _one_stream(url, name, script, t_start, t_end, minutes, latencies, 15.0)

    results = await asyncio.gather(
        *(run(i, n, s) for i, (n, s) in enumerate(jobs)), return_exceptions=True
    )
    failed = [
        f"{n}: {r!r}"
        for (n, _), r in zip(jobs, results, strict=True)
        if isinstance(r, BaseException)
    ]
    codes = Counter(str(r[1]) for r in results if not isinstance(r, BaseException))
    return ClientReport(
        minutes=[minutes[k] for k in sorted(minutes)],
        streams_ok=len(jobs) - len(failed),
        streams_failed=failed,
        close_codes=dict(codes),
        latency_ms=latencies,
    )


def client_main(
    url: str,
    jobs: list[tuple[str, str, bytes, list[tuple[float, float]]]],
    duration_s: float,
    ramp_s: float,
    out: Any,
) -> None:
    """A client process: plain data in and out (the spawned child names this module
    ``__mp_main__``, so its own classes would not unpickle in the parent)."""
    try:
        scripts = [(name, Script(spk, pcm, segs)) for name, spk, pcm, segs in jobs]
        report = asyncio.run(_clients(url, scripts, duration_s, ramp_s))
        out.put(("ok", asdict(report)))
    except BaseException as exc:  # report, never hang the parent
        out.put(("error", repr(exc)))


# --------------------------------------------------------------------------- server


def load_voices(
    audio: Path, n_speakers: int, gap_s: float, max_utt_s: float, embedder: Any
) -> tuple[Any, list[Script]]:
    from voiceid.audio.io import load_audio
    from voiceid.profiles.index import ProfileIndex
    from voiceid.profiles.model import centroid

    dirs = sorted(d for d in audio.iterdir() if d.is_dir())[:n_speakers]
    if len(dirs) < n_speakers:
        raise SystemExit(f"{audio}: only {len(dirs)} speakers")
    names, cents, scripts = [], [], []
    for d in dirs:
        files = sorted(d.glob("*.flac"))
        cents.append(centroid([embedder.embed(load_audio(f)) for f in files[:3]]))
        names.append(d.name)
        parts: list[NDArray[np.float32]] = []
        segments: list[tuple[float, float]] = []
        t = 0.0
        for f in files[3:]:
            x = load_audio(f)[: int(max_utt_s * RATE)]
            segments.append((t, t + len(x) / RATE))
            parts += [x, np.zeros(int(gap_s * RATE), np.float32)]
            t += len(x) / RATE + gap_s
        scripts.append(Script(d.name, pcm16(np.concatenate(parts)), segments))
    index = ProfileIndex.from_matrix(embedder.fingerprint, names, names, np.stack(cents))
    return index, scripts


async def serve_and_soak(args: argparse.Namespace) -> dict[str, Any]:
    from voiceid.config import WebSocketSection
    from voiceid.models import registry
    from voiceid.models.embedder import Embedder
    from voiceid.models.inference import EmbeddingModel
    from voiceid.runtime.hub import EngineConfig, Hub
    from voiceid.sources.websocket import WebSocketStats, serve_websocket
    from voiceid.stream.decide import DecisionConfig
    from voiceid.stream.pipeline import StreamConfig
    from voiceid.stream.scheduler import SchedulerConfig

    resolved = registry.resolve("resemblyzer-ge2e", fetch=True)
    model = EmbeddingModel(
        resolved.path, resolved.card, device=args.device, intra_threads=args.threads
    )
    embedder = Embedder(model, resolved.fingerprint)
    index, scripts = load_voices(args.audio, args.speakers, args.gap_s, args.max_utt_s, embedder)
    card = embedder.card
    threshold = card.live_threshold
    hub = Hub(
        embedder,
        index,
        StreamConfig(scheduler=SchedulerConfig(), decision=DecisionConfig(enter=threshold)),
        EngineConfig(max_batch=args.max_batch),
        max_streams=args.streams + 8,
    )
    await hub.start()
    stats = WebSocketStats()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    cfg = WebSocketSection(host="127.0.0.1", port=0, max_streams=args.streams + 8)
    server = asyncio.create_task(serve_websocket(hub, cfg, started=started, stats=stats))
    port = await asyncio.wait_for(started, 30)
    url = f"ws://127.0.0.1:{port}/stream"

    jobs = []
    for i in range(args.streams):
        sc = scripts[i % len(scripts)]
        jobs.append((f"soak{i:03d}", sc.speaker, sc.pcm, sc.segments))
    ctx = mp.get_context("spawn")
    queue: Any = ctx.Queue()
    duration_s = args.minutes * 60.0
    procs = []
    for p in range(args.client_procs):
        part = jobs[p :: args.client_procs]
        proc = ctx.Process(
            target=client_main, args=(url, part, duration_s, args.ramp_s, queue), daemon=True
        )
        proc.start()
        procs.append(proc)

    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    hub.hop_latency_ms.clear()  # warm-up calls are not hops
    last = hub.engine.stats()
    rss0 = rss_mb()
    rss_max = rss0
    print(
        f"soak: {args.streams} streams x {args.minutes:g} min on {url} "
        f"(GE2E on {model.provider}, {args.threads} threads); RSS at start {rss0:.0f} MiB",
        flush=True,
    )
    minute = 0
    while time.monotonic() - t0 < duration_s + 5:
        await asyncio.sleep(min(60.0, max(0.5, t0 + (minute + 1) * 60.0 - time.monotonic())))
        if time.monotonic() - t0 < (minute + 1) * 60.0 - 0.5 and minute + 1 <= args.minutes:
            continue
        minute += 1
        new = list(hub.hop_latency_ms)  # this minute's hops (same thread: no race)
        hub.hop_latency_ms.clear()
        es = hub.engine.stats()
        rss = rss_mb()
        rss_max = max(rss_max, rss)
        row = {
            "minute": minute,
            "rss_mb": round(rss, 1),
            "streams_open": len(hub.streams),
            "hops_decided": len(new),
            "p50_ms": round(pct(new, 50), 1),
            "p90_ms": round(pct(new, 90), 1),
            "p99_ms": round(pct(new, 99), 1),
            "max_ms": round(max(new), 1) if new else float("nan"),
            "windows": es.windows - last.windows,
            "failed_windows": es.failed_windows - last.failed_windows,
            "skipped": es.skipped - last.skipped,
            "mean_batch": round((es.windows - last.windows) / max(1, es.batches - last.batches), 1),
        }
        last = es
        rows.append(row)
        print(json.dumps(row), flush=True)
        if minute >= args.minutes:
            break

    reports: list[ClientReport] = []
    errors: list[str] = []
    for _ in procs:
        try:
            status, payload = await asyncio.to_thread(queue.get, True, 120)
        except Exception as exc:  # queue.Empty
            errors.append(f"client process gave no report: {exc!r}")
            continue
        if status == "ok":
            payload["minutes"] = [ClientMinute(**m) for m in payload["minutes"]]
            reports.append(ClientReport(**payload))
        else:
            errors.append(payload)
    for proc in procs:
        proc.join(10)
    server.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await server
    await hub.close()

    per_min: dict[int, ClientMinute] = {}
    for rep in reports:
        for m in rep.minutes:
            agg = per_min.setdefault(m.minute, ClientMinute(m.minute))
            agg.messages += m.messages
            agg.starts_expected += m.starts_expected
            agg.starts_correct += m.starts_correct
            agg.starts_wrong += m.starts_wrong
            for k, v in m.types.items():
                agg.types[k] = agg.types.get(k, 0) + v
    for row in rows:
        got = per_min.get(int(row["minute"]) - 1)
        if got is not None:
            row.update(
                events=got.messages,
                utterances=got.starts_expected,
                identified=got.starts_correct,
                wrong=got.starts_wrong,
            )
    lat_all = [x for rep in reports for x in rep.latency_ms]
    es = hub.engine.stats()
    summary = {
        "streams": args.streams,
        "minutes": args.minutes,
        "provider": model.provider,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "streams_ok": sum(r.streams_ok for r in reports),
        "streams_failed": [f for r in reports for f in r.streams_failed] + errors,
        "close_codes": dict(sum((Counter(r.close_codes) for r in reports), Counter())),
        "rss_start_mb": round(rss0, 1),
        "rss_end_mb": rows[-1]["rss_mb"] if rows else None,
        "rss_max_mb": round(rss_max, 1),
        "rss_growth_after_min1_mb": round(rows[-1]["rss_mb"] - rows[0]["rss_mb"], 1)
        if rows
        else None,
        "windows": es.windows,
        "failed_windows": es.failed_windows,
        "skipped_windows": es.skipped,
        "engine_errors": es.errors,
        "ws_rejected": dict(stats.rejected),
        "ws_frames_in": stats.frames_in,
        "event_messages": sum(m.messages for m in per_min.values()),
        "event_types": dict(sum((Counter(m.types) for m in per_min.values()), Counter())),
        "utterances_played": sum(m.starts_expected for m in per_min.values()),
        "utterances_identified": sum(m.starts_correct for m in per_min.values()),
        "wrong_identifications": sum(m.starts_wrong for m in per_min.values()),
        "event_latency_ms": {
            "p50": round(pct(lat_all, 50), 1),
            "p99": round(pct(lat_all, 99), 1),
            "max": round(max(lat_all), 1) if lat_all else None,
        },
        "per_minute": rows,
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--speakers", type=int, default=8)
    ap.add_argument("--gap-s", type=float, default=2.5, help="silence after each utterance")
    ap.add_argument("--max-utt-s", type=float, default=8.0, help="cut utterances to this")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--client-procs", type=int, default=1)
    ap.add_argument("--ramp-s", type=float, default=5.0, help="spread stream starts over this")
    ap.add_argument("--audio", type=Path, default=DEFAULT_AUDIO)
    ap.add_argument("--json", type=Path, help="write the summary here")
    args = ap.parse_args(argv)
    summary = asyncio.run(serve_and_soak(args))
    text = json.dumps({k: v for k, v in summary.items() if k != "per_minute"}, indent=1)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    ok = not summary["streams_failed"] and summary["failed_windows"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
