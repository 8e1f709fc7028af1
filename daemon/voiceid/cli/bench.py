"""``voiceid bench model`` and ``voiceid bench streams``: speed, measured side by side."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from voiceid.benchmarks.model import time_model
from voiceid.benchmarks.streams import run_streams, speech_loop
from voiceid.cli.demo import find_audio
from voiceid.models.embedder import Embedder
from voiceid.runtime.hub import EngineConfig


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks: model throughput, live streams")
    bsub = p.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    m = bsub.add_parser("model", help="model-only latency/throughput over batch sizes")
    m.add_argument("--model", default="wespeaker-resnet34-random")
    m.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    m.add_argument("--threads", type=int, default=None)
    m.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    m.add_argument("--windows", type=float, nargs="+", default=[2.0], help="seconds")
    m.add_argument("--repeats", type=int, default=20)
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_model)
    s = bsub.add_parser("streams", help="N real-time streams through the daemon core")
    s.add_argument("--model", default="wespeaker-resnet34-random")
    s.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--streams", type=int, nargs="+", default=[20])
    s.add_argument("--hop", type=float, default=0.5, help="seconds")
    s.add_argument("--window", type=float, default=2.0, help="seconds")
    s.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    s.add_argument("--max-batch", type=int, default=64)
    s.add_argument("--max-wait-ms", type=float, default=5.0)
    s.add_argument("--audio", type=Path, default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_streams)


def cmd_model(args: argparse.Namespace) -> int:
    embedder = Embedder.load(args.model, device=args.device, threads=args.threads)
    rows = [
        time_model(embedder.model, batch=b, window_s=w, repeats=args.repeats).as_dict()
        for w in args.windows
        for b in args.batches
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    base = rows[0]["windows_per_s"]
    print(
        f"{'model':26} {'provider':22} {'win s':>5} {'batch':>5} {'ms/batch':>9} "
        f"{'ms/win':>7} {'win/s':>9} {'x batch1':>8}"
    )
    for r in rows:
        ratio = float(r["windows_per_s"]) / float(base) if base else 0.0  # type: ignore[arg-type]
        print(
            f"{r['model']:26} {r['provider']:22} {r['window_s']:>5} {r['batch']:>5} "
            f"{r['median_ms']:>9.2f} {r['ms_per_window']:>7.2f} {r['windows_per_s']:>9.1f} "
            f"{ratio:>8.2f}"
        )
    return 0


def cmd_streams(args: argparse.Namespace) -> int:
    embedder = Embedder.load(args.model, device=args.device, threads=args.threads)
    audio = speech_loop(find_audio(args.audio), 120.0, embedder.sample_rate)
    results = []
    for n in args.streams:
        res = asyncio.run(
            run_streams(
                embedder,
                audio,
                streams=n,
                duration_s=args.duration,
                hop_s=args.hop,
                window_s=args.window,
                engine=EngineConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms),
            )
        )
        results.append(res.as_dict())
        if not args.json:
            print(
                f"streams={res.streams:5d} windows={res.windows:6d} skipped={res.skipped_hops:5d} "
                f"batch={res.mean_batch:6.2f} p50={res.p50_ms:7.1f} ms p99={res.p99_ms:7.1f} ms "
                f"max={res.max_ms:7.1f} ms lag={res.max_lag_ms:6.1f} ms "
                f"cpu={res.cpu_per_wall:4.2f} realtime={'yes' if res.realtime else 'NO'}",
                flush=True,
            )
    if args.json:
        print(json.dumps(results))
    return 0
