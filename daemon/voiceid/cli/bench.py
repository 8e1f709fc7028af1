"""``voiceid bench model|streams|compare``: speed, measured side by side.

* ``model``: model-only latency/throughput over batch sizes and window lengths
  (median of ``--repeats`` runs after warm-up; table or ``--json``);
* ``streams``: N real-time streams through the daemon core, in-process or over loopback
  WebSockets (``--ws``); ``--find-max`` searches the largest N that holds real time with
  p99 <= ``--p99-ms``;
* ``compare``: on this machine, in one run: model-only throughput, our whole per-window
  path (fbank + CMN + model), sherpa-onnx's (if installed), and the streams it sustains.

See docs/performance.md for measured figures and the exact commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from voiceid.benchmarks.model import gpu_name, time_model
from voiceid.benchmarks.streams import (
    DEFAULT_P99_MS,
    StreamsResult,
    compare,
    find_max,
    run_pool_streams,
    run_streams,
    run_ws_streams,
    speech_loop,
)
from voiceid.cli.demo import find_audio
from voiceid.models import registry
from voiceid.models.embedder import Embedder
from voiceid.models.inference import CUDA, EmbeddingModel
from voiceid.runtime.hub import EngineConfig
from voiceid.stream.scheduler import SchedulerConfig

GPU_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
CPU_BATCHES = [1, 8, 32]


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="wespeaker-resnet34-random")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per operator")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "int8"],
        default="auto",
        help="int8: the quantized file from `voiceid models quantize` (CPU)",
    )
    p.add_argument(
        "--algo",
        choices=["EXHAUSTIVE", "HEURISTIC", "DEFAULT"],
        default=None,
        help="cuDNN convolution algorithm search (CUDA)",
    )
    p.add_argument(
        "--cuda-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="CUDA provider option (repeatable), e.g. prefer_nhwc=0",
    )
    p.add_argument("--no-io-binding", action="store_true", help="CUDA: plain session.run")
    p.add_argument("--no-static", action="store_true", help="CUDA: no per-shape sessions")
    p.add_argument("--no-cuda-graph", action="store_true", help="CUDA: no CUDA graphs")


def load_embedder(args: argparse.Namespace) -> Embedder:
    """An Embedder built from the ``_model_args`` options."""
    variant: registry.Precision = "int8" if args.precision == "int8" else "fp32"
    resolved = registry.resolve(args.model, fetch=True, precision=variant)
    opts: dict[str, str] = {}
    for kv in args.cuda_option:
        key, sep, value = kv.partition("=")
        if not sep:
            raise SystemExit(f"--cuda-option wants KEY=VALUE, got {kv!r}")
        opts[key] = value
    if args.algo:
        opts["cudnn_conv_algo_search"] = args.algo
    model = EmbeddingModel(
        resolved.path,
        resolved.card,
        device=args.device,
        intra_threads=args.threads,
        precision="fp32" if args.precision == "int8" else args.precision,
        cuda_options=opts,
        io_binding=not args.no_io_binding,
        static_shapes=not args.no_static,
        cuda_graph=not args.no_cuda_graph,
    )
    return Embedder(model, resolved.fingerprint)


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks: model throughput, live streams")
    bsub = p.add_subparsers(dest="bench_command", metavar="WHAT", required=True)

    m = bsub.add_parser("model", help="model-only latency/throughput over batch sizes")
    _model_args(m)
    m.add_argument("--batches", type=int, nargs="+", default=None, help="default: by device")
    m.add_argument("--windows", type=float, nargs="+", default=[1.0, 1.5, 2.0], help="seconds")
    m.add_argument("--repeats", type=int, default=20, help="timed runs per point (at least)")
    m.add_argument("--min-time", type=float, default=0.3, help="seconds per point (at least)")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_model)

    s = bsub.add_parser("streams", help="N real-time streams through the daemon core")
    _model_args(s)
    s.add_argument("--streams", type=int, nargs="+", default=[20])
    s.add_argument("--ws", action="store_true", help="over loopback WebSockets")
    s.add_argument(
        "--stagger",
        action="store_true",
        help="in-process, --workers: spread the streams' hop ends over a hop (default: aligned)",
    )
    s.add_argument("--find-max", action="store_true", help="largest N that holds (doubling)")
    s.add_argument("--start", type=int, default=16, help="--find-max: first N")
    s.add_argument("--limit", type=int, default=100_000, help="--find-max: largest N tried")
    s.add_argument("--p99-ms", type=float, default=DEFAULT_P99_MS)
    s.add_argument("--hop", type=float, default=0.5, help="seconds")
    s.add_argument("--window", type=float, default=2.0, help="seconds")
    s.add_argument("--chunk-ms", type=int, default=20, help="audio per feed / frame")
    s.add_argument("--slice-s", type=float, default=None, help="front-end slice (stream.slice_s)")
    s.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    s.add_argument("--max-batch", type=int, default=64)
    s.add_argument("--max-wait-ms", type=float, default=5.0)
    s.add_argument("--max-pending", type=int, default=None, help="default: 4 x max-batch")
    s.add_argument("--client-procs", type=int, default=None, help="--ws client processes")
    s.add_argument(
        "--workers",
        type=int,
        default=0,
        help="WebSocket front-end worker processes (websocket.workers; implies --ws)",
    )
    s.add_argument(
        "--inflight",
        type=int,
        default=None,
        help="--workers: embedding requests out per worker (default 4)",
    )
    s.add_argument(
        "--switch-ms",
        type=float,
        default=None,
        help="--workers: GIL switch interval of every process (default: Python's 5 ms)",
    )
    s.add_argument("--audio", type=Path, default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_streams)

    c = bsub.add_parser("compare", help="CPU: model-only vs whole path vs sherpa-onnx vs streams")
    _model_args(c)
    c.add_argument("--window", type=float, default=2.0, help="seconds")
    c.add_argument("--hop", type=float, default=0.5, help="seconds")
    c.add_argument("--count", type=int, default=40, help="windows of speech timed")
    c.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    c.add_argument("--duration", type=float, default=20.0, help="seconds per streams run")
    c.add_argument("--p99-ms", type=float, default=1000.0, help="streams: p99 limit (CPU)")
    c.add_argument("--audio", type=Path, default=None)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_compare)


def _header(embedder: Embedder) -> str:
    d = embedder.model.describe()
    gpu = gpu_name() if embedder.model.provider == CUDA else None
    opts = d.get("cuda_options") or {}
    flags = ", ".join(
        f"{k}={v}"
        for k, v in d.items()
        if k not in ("cuda_options", "provider") and v not in (False, None)
    )
    return f"# {embedder.card.name} on {d['provider']}{f' ({gpu})' if gpu else ''}: {flags}" + (
        f"; cuda options {opts}" if opts else ""
    )


def cmd_model(args: argparse.Namespace) -> int:
    embedder = load_embedder(args)
    batches = args.batches or (GPU_BATCHES if embedder.model.provider == CUDA else CPU_BATCHES)
    rows = []
    if not args.json:
        print(_header(embedder), flush=True)
        print(
            f"{'win s':>5} {'T':>4} {'batch':>5} {'ms/batch':>9} {'p90':>8} {'ms/win':>8} "
            f"{'win/s':>9} {'dev ms':>8} {'dev win/s':>10} {'graph':>5}"
        )
    for w in args.windows:
        for b in batches:
            r = time_model(
                embedder.model, batch=b, window_s=w, repeats=args.repeats, min_time_s=args.min_time
            )
            rows.append(r.as_dict())
            if not args.json:
                dev = f"{r.device_ms:8.3f} {r.device_windows_per_s:10.1f}" if r.device_ms else ""
                print(
                    f"{r.window_s:>5} {r.frames:>4} {r.batch:>5} {r.median_ms:>9.3f} "
                    f"{r.p90_ms:>8.3f} {r.ms_per_window:>8.4f} {r.windows_per_s:>9.1f} "
                    f"{dev:>19} {'yes' if r.cuda_graph else 'no':>5}",
                    flush=True,
                )
    if args.json:
        print(
            json.dumps(
                {"gpu": gpu_name(), "config": embedder.model.describe(), "rows": rows}, default=str
            )
        )
    return 0


def _engine(args: argparse.Namespace) -> EngineConfig:
    pending = args.max_pending or 4 * args.max_batch
    return EngineConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_pending=pending)


def cmd_streams(args: argparse.Namespace) -> int:
    embedder = load_embedder(args)
    audio = speech_loop(find_audio(args.audio), 120.0, embedder.sample_rate)
    engine = _engine(args)
    if not args.json:
        print(_header(embedder), flush=True)
        print(
            f"# hop {args.hop} s, window {args.window} s, chunk {args.chunk_ms} ms, "
            f"front-end slice {args.slice_s or SchedulerConfig().slice_s} s, "
            f"{args.duration} s per run, max_batch {engine.max_batch}, "
            f"max_wait {engine.max_wait_ms} ms, p99 limit {args.p99_ms} ms",
            flush=True,
        )

    def trial(n: int) -> StreamsResult:
        kw: dict[str, Any] = {
            "streams": n,
            "duration_s": args.duration,
            "hop_s": args.hop,
            "window_s": args.window,
            "chunk_ms": args.chunk_ms,
            "engine": engine,
            "p99_ms": args.p99_ms,
            "slice_s": args.slice_s,
        }
        if args.workers:
            return asyncio.run(
                run_pool_streams(
                    embedder,
                    audio,
                    workers=args.workers,
                    client_procs=args.client_procs,
                    stagger=args.stagger,
                    inflight=args.inflight,
                    switch_ms=args.switch_ms,
                    **kw,
                )
            )
        if args.ws:
            return asyncio.run(
                run_ws_streams(embedder, audio, client_procs=args.client_procs, **kw)
            )
        return asyncio.run(run_streams(embedder, audio, stagger=args.stagger, **kw))

    def report(r: StreamsResult) -> None:
        if not args.json:
            print(r.line(), flush=True)

    results: list[StreamsResult] = []
    best: int | None = None
    if args.find_max:
        best, results = find_max(trial, start=args.start, limit=args.limit, report=report)
        if not args.json:
            print(f"largest N that holds: {best}", flush=True)
    else:
        for n in args.streams:
            r = trial(n)
            results.append(r)
            report(r)
    if args.json:
        print(
            json.dumps(
                {
                    "gpu": gpu_name(),
                    "config": embedder.model.describe(),
                    "largest_holding": best,
                    "runs": [r.as_dict() for r in results],
                },
                default=str,
            )
        )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    embedder = load_embedder(args)
    audio = speech_loop(find_audio(args.audio), 120.0, embedder.sample_rate)
    out = compare(
        embedder,
        audio,
        window_s=args.window,
        hop_s=args.hop,
        count=args.count,
        rounds=args.rounds,
        duration_s=args.duration,
        p99_ms=args.p99_ms,
        threads=args.threads,
        log=None if args.json else lambda s: print(s, flush=True),
    )
    if args.json:
        json.dump(out, sys.stdout, default=str)
        print()
    return 0
