"""Benchmark 1:N profile search and enrollment finalize.

Usage::

    .venv/bin/python bench/bench_search.py [--sizes 10000,100000,1000000] [--dim 256]

For N random unit centroids (dim 256), times ``ProfileIndex.top_k`` (k=5) for a
single query (median and p99 over ``--queries`` queries after warm-up) and
``top_k_batch`` for batches of 32 queries; prints the matrix memory. Then times
enrollment finalize, ``centroid`` + ``ProfileStore.add`` of a 3-utterance
profile (median over 20) on a temporary database.

Goals: single-query top-5 <= 60 ms at 1M profiles; finalize <= 500 ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from voiceid.profiles.index import ProfileIndex
from voiceid.profiles.model import Utterance, centroid
from voiceid.profiles.store import ProfileStore

SEARCH_GOAL_MS = 60.0
FINALIZE_GOAL_MS = 500.0


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> npt.NDArray[np.float32]:
    out = np.empty((n, dim), dtype=np.float32)
    step = 65536
    for lo in range(0, n, step):
        block = rng.standard_normal((min(step, n - lo), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[lo : lo + len(block)] = block
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_size(
    n: int, dim: int, k: int, queries: int, warmup: int, batch: int, batches: int, seed: int
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    matrix = unit_rows(rng, n, dim)
    names = [f"speaker{i}" for i in range(n)]
    ids = [f"{i:032x}" for i in range(n)]
    index = ProfileIndex.from_matrix("bench", names, ids, matrix)
    del matrix
    build_s = time.perf_counter() - t0

    qs = unit_rows(rng, warmup + queries, dim)
    # Sanity: exact against a brute-force argsort.
    want = np.argsort(-(index.matrix @ qs[0]), kind="stable")[:k]
    got = [name for name, _ in index.top_k(qs[0], k)]
    assert got == [names[i] for i in want], (got, want)

    single: list[float] = []
    for i, q in enumerate(qs):
        t = time.perf_counter()
        index.top_k(q, k)
        if i >= warmup:
            single.append((time.perf_counter() - t) * 1e3)

    bq = unit_rows(rng, batch * (batches + 2), dim).reshape(batches + 2, batch, dim)
    per_batch: list[float] = []
    for i, block in enumerate(bq):
        t = time.perf_counter()
        index.top_k_batch(block, k)
        if i >= 2:
            per_batch.append((time.perf_counter() - t) * 1e3)

    return {
        "n": n,
        "build_s": build_s,
        "mem_mib": index.nbytes / 2**20,
        "single_med": statistics.median(single),
        "single_p99": pct(single, 99),
        "batch_med": statistics.median(per_batch),
        "batch_p99": pct(per_batch, 99),
    }


def bench_finalize(dim: int, repeats: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    times: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="voiceid-bench-") as tmp,
        ProfileStore.open(Path(tmp) / "profiles.db") as store,
    ):
        for i in range(repeats + 2):
            utts = [
                Utterance(rng.standard_normal(dim, dtype=np.float32), 3.0, f"u{j}")
                for j in range(3)
            ]
            t = time.perf_counter()
            centroid([u.embedding for u in utts])
            store.add(f"enrolled{i}", "bench", "bench-model", utts)
            if i >= 2:
                times.append((time.perf_counter() - t) * 1e3)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--finalize-repeats", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s]
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"numpy {np.__version__}, dim {args.dim}, top-{args.k}, "
        f"{args.queries} single queries after {args.warmup} warm-up, "
        f"{args.batches} batches of {args.batch}"
    )
    header = (
        f"{'profiles':>10} {'matrix MiB':>10} {'build s':>8} {'1q med ms':>10} "
        f"{'1q p99 ms':>10} {'B32 med ms':>11} {'B32 p99 ms':>11} {'B32 ms/q':>9}"
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    for n in sizes:
        r = bench_size(
            n, args.dim, args.k, args.queries, args.warmup, args.batch, args.batches, args.seed
        )
        if n >= 1_000_000:
            worst = max(worst, r["single_med"])
        print(
            f"{n:>10,} {r['mem_mib']:>10.1f} {r['build_s']:>8.2f} {r['single_med']:>10.2f} "
            f"{r['single_p99']:>10.2f} {r['batch_med']:>11.2f} {r['batch_p99']:>11.2f} "
            f"{r['batch_med'] / args.batch:>9.2f}",
            flush=True,
        )
    fin = bench_finalize(args.dim, args.finalize_repeats, args.seed)
    print(
        f"\nenrollment finalize (centroid + store.add, 3 utterances, synchronous=FULL): "
        f"median {statistics.median(fin):.2f} ms, p99 {pct(fin, 99):.2f} ms, "
        f"max {max(fin):.2f} ms over {len(fin)}"
    )
    ok_search = worst <= SEARCH_GOAL_MS
    ok_fin = statistics.median(fin) <= FINALIZE_GOAL_MS
    if any(n >= 1_000_000 for n in sizes):
        print(f"goal 1M single-query median <= {SEARCH_GOAL_MS:.0f} ms: {ok_search}")
    print(f"goal finalize median <= {FINALIZE_GOAL_MS:.0f} ms: {ok_fin}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
