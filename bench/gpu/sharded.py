"""Streams sharded over P processes, each a whole daemon core (hub + engine + GPU model).

    python3 bench/gpu/sharded.py --procs 14 --streams 4200 [--duration 20] [--audio DIR]

One process runs the front-end of its streams on one core (Python's GIL); P processes
use P cores and share the GPU (each its own CUDA context and sessions: the GPU
time-slices between them). This is the simplest way past one core with today's code; it
gives every process its own batches (smaller than one shared engine's). Each process
runs :func:`voiceid.benchmarks.streams.run_streams` on ``streams / procs`` streams,
all starting together; the figures are summed (windows) or the worst (latency, lag).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any


def worker(
    idx: int,
    n: int,
    args: dict[str, Any],
    barrier: Any,
    out: Any,
) -> None:
    from voiceid.benchmarks.streams import run_streams, speech_loop
    from voiceid.models import registry
    from voiceid.models.embedder import Embedder
    from voiceid.models.inference import EmbeddingModel
    from voiceid.runtime.hub import EngineConfig

    try:
        resolved = registry.resolve("wespeaker-resnet34-random", fetch=True)
        opts = {"cudnn_conv_algo_search": args["algo"]}
        model = EmbeddingModel(
            resolved.path, resolved.card, device=args["device"], cuda_options=opts
        )
        emb = Embedder(model, resolved.fingerprint)
        audio = speech_loop(Path(args["audio"]), 120.0)
        audio = audio[(idx * 7919) % 16000 :]
        engine = EngineConfig(
            max_batch=args["max_batch"],
            max_wait_ms=args["max_wait_ms"],
            max_pending=4 * args["max_batch"],
        )
        # build + warm every bucket before the common start
        model.prepare(
            (b, t)
            for t in (98, 148, 198)
            for b in [
                1 << i for i in range(args["max_batch"].bit_length()) if 1 << i <= args["max_batch"]
            ]
        )
        barrier.wait(timeout=600)
        res = asyncio.run(
            run_streams(
                emb,
                audio,
                streams=n,
                duration_s=args["duration"],
                chunk_ms=args["chunk_ms"],
                engine=engine,
                p99_ms=args["p99_ms"],
            )
        )
        out.put((idx, res.as_dict()))
    except Exception as exc:  # report, do not hang the parent
        import traceback

        traceback.print_exc()
        out.put((idx, {"error": f"{type(exc).__name__}: {exc}"}))
        with contextlib.suppress(Exception):
            barrier.abort()


def run(procs: int, streams: int, args: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    shares = [streams // procs + (1 if i < streams % procs else 0) for i in range(procs)]
    ps = [ctx.Process(target=worker, args=(i, shares[i], args, barrier, out)) for i in range(procs)]
    t0 = time.time()
    for p in ps:
        p.start()
    results = [out.get(timeout=900) for _ in ps]
    for p in ps:
        p.join(30)
    rows = [r for _, r in sorted(results)]
    errors = [r["error"] for r in rows if "error" in r]
    good = [r for r in rows if "error" not in r]
    summary: dict[str, Any] = {
        "procs": procs,
        "streams": streams,
        "errors": errors,
        "wall_s": round(time.time() - t0, 1),
    }
    if good:
        summary.update(
            {
                "windows_per_s": round(sum(float(r["windows_per_s"]) for r in good), 1),
                "requested": sum(int(r["requested"]) for r in good),
                "scored": sum(int(r["scored"]) for r in good),
                "skipped_hops": sum(int(r["skipped_hops"]) for r in good),
                "p50_ms_median": sorted(float(r["p50_ms"]) for r in good)[len(good) // 2],
                "p99_ms_worst": max(float(r["p99_ms"]) for r in good),
                "max_ms_worst": max(float(r["max_ms"]) for r in good),
                "max_lag_ms_worst": max(float(r["max_lag_ms"]) for r in good),
                "mean_batch": round(sum(float(r["mean_batch"]) for r in good) / len(good), 2),
                "cpu_per_wall_sum": round(sum(float(r["cpu_per_wall"]) for r in good), 2),
                "gpu_util": [r["gpu_util"] for r in good][:1],
                "holds": all(bool(r["holds"]) for r in good) and len(good) == procs,
            }
        )
    return summary


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=14)
    ap.add_argument("--streams", type=int, nargs="+", default=[2800])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--chunk-ms", type=int, default=20)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--p99-ms", type=float, default=100.0)
    ap.add_argument("--algo", default="HEURISTIC")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--audio", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    args = {
        "duration": a.duration,
        "chunk_ms": a.chunk_ms,
        "max_batch": a.max_batch,
        "max_wait_ms": a.max_wait_ms,
        "p99_ms": a.p99_ms,
        "algo": a.algo,
        "audio": str(a.audio),
        "device": a.device,
    }
    for n in a.streams:
        s = run(a.procs, n, args)
        print(json.dumps(s), flush=True)
        if a.out:
            with a.out.open("a") as f:
                f.write(json.dumps(s) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
