"""Prototype of the scale-out design: front-end worker processes + one GPU process.

    python3 bench/gpu/pool.py --workers 14 --streams 4200 [--chunk-ms 20] [--duration 15]
                              [--max-batch 512] [--audio DIR] [--out FILE]

Each worker process owns ``streams / workers`` streams and runs everything per stream
that the daemon runs on the event loop today - VAD, Kaldi fbank, hop scheduling, CMN
(``StreamCore.feed``), scoring and the decider (``StreamCore.on_embedding``) - on its
own core. Windows go to the GPU process (this one) in one message per worker and tick
(fp16 features [n, T, 80] + ids, over a pipe); the GPU process feeds them into the
:class:`ArrayBatcher` (one CUDA context, large batches across all workers, no Python
object per window: session 1's version fed the daemon's ``BatchEngine`` one
``WindowRequest`` per window and topped out at ~7k windows/s) and sends the embeddings
back per worker and batch. Latency is measured in
the worker: from the moment a hop's last sample was fed to the moment its embedding
reached the decider (both directions of IPC included).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def worker(
    wid: int,
    n: int,
    args: dict[str, Any],
    t0: float,
    to_gpu: Connection,
    from_gpu: Connection,
    out: Any,
) -> None:
    """One front-end process: ``n`` streams paced in real time from ``t0``."""
    from voiceid.benchmarks.streams import random_index, speech_loop
    from voiceid.frontend import make_frontend
    from voiceid.models import registry
    from voiceid.stream.decide import DecisionConfig
    from voiceid.stream.pipeline import StreamConfig, StreamCore
    from voiceid.stream.scheduler import SchedulerConfig, SilentHop, WindowRequest

    card = registry.card("wespeaker-resnet34-random")
    cfg = StreamConfig(
        scheduler=SchedulerConfig(
            hop_s=args["hop_s"], window_s=args["window_s"], slice_s=args["slice_s"]
        ),
        decision=DecisionConfig(enter=card.threshold),
    )
    scorer = random_index("x", card.dim)
    audio = speech_loop(Path(args["audio"]), 120.0)
    cores = [StreamCore(f"w{wid}-{i}", make_frontend(card.frontend), cfg) for i in range(n)]
    chunk = 16000 * args["chunk_ms"] // 1000
    offsets = [((wid * 7919 + i * 104729) * 160) % (len(audio) - chunk) for i in range(n)]
    pending: dict[int, tuple[int, WindowRequest]] = {}
    lat: list[float] = []
    lags: list[float] = []
    next_id = 0
    sent = scored = lost = 0

    def take_results(block_s: float = 0.0) -> None:
        nonlocal scored
        while from_gpu.poll(block_s):
            block_s = 0.0
            ids, embs = from_gpu.recv()
            now = time.time()
            for k, e in zip(ids.tolist(), embs, strict=True):
                got = pending.pop(k, None)
                if got is None:
                    continue
                i, req = got
                cores[i].on_embedding(req, e, scorer)
                lat.append((now - req.fed_at) * 1000.0)
                scored += 1

    ticks = int(args["duration"] * 1000 / args["chunk_ms"])
    if args["stagger"]:
        # streams that started at different times: stream g of G (over all workers) is
        # g/G of a hop ahead, so hop ends spread evenly over the hop instead of all
        # falling in one tick (the aligned case is the worst case: everyone at once)
        hop = round(args["hop_s"] * 16000)
        for i, core in enumerate(cores):
            g = wid + i * args["workers"]
            ahead = (g * hop // args["total"]) // chunk * chunk
            if ahead:
                for hop_ in core.feed(audio[offsets[i] : offsets[i] + ahead]):
                    if isinstance(hop_, SilentHop):
                        core.on_silent(hop_)
                offsets[i] += ahead
    cpu0 = time.process_time()
    for k in range(ticks):
        due = t0 + (k + 1) * args["chunk_ms"] / 1000  # chunk k has "happened" then
        delay = due - time.time()
        if delay > 0:
            take_results(delay)  # wait for the tick while taking results
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
        else:
            lags.append(-delay)
        by_t: dict[int, tuple[list[int], list[np.ndarray]]] = {}
        for i, core in enumerate(cores):
            start = (offsets[i] + k * chunk) % (len(audio) - chunk)
            for hop in core.feed(audio[start : start + chunk]):
                if isinstance(hop, SilentHop):
                    core.on_silent(hop)
                    continue
                pending[next_id] = (i, hop)
                ids, feats = by_t.setdefault(hop.feats.shape[0], ([], []))
                ids.append(next_id)
                feats.append(hop.feats)
                next_id += 1
        for ids, feats in by_t.values():
            to_gpu.send((wid, np.asarray(ids, np.int64), np.stack(feats).astype(np.float16)))
            sent += len(ids)
        take_results()
    end = time.time() + 2.0
    while pending and time.time() < end:
        take_results(0.05)
    lost = len(pending)
    cpu = time.process_time() - cpu0
    out.put(
        {
            "wid": wid,
            "streams": n,
            "sent": sent,
            "scored": scored,
            "lost": lost,
            "lat": lat,
            "max_lag_ms": 1000 * max(lags, default=0.0),
            "cpu_s": cpu,
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def load_model(a: argparse.Namespace) -> Any:
    """The GPU process's model, every (batch, frames) bucket built and warmed."""
    from voiceid.models import registry
    from voiceid.models.inference import EmbeddingModel
    from voiceid.stream.engine import batch_buckets

    resolved = registry.resolve("wespeaker-resnet34-random", fetch=True)
    model = EmbeddingModel(resolved.path, resolved.card, device=a.device)
    model.prepare((b, t) for t in (98, 148, 198) for b in batch_buckets(a.max_batch))
    return model


class ArrayBatcher:
    """The GPU process's batching without a Python object per window.

    Blocks arrive per worker and tick: ``ids`` [n] and fp16 ``feats`` [n, T, F]. One thread
    takes, for the window length T of the oldest waiting block, blocks (split if needed) up
    to ``max_batch`` windows, waits at most ``max_wait_ms`` for a batch to fill, pads to the
    next power-of-two bucket, embeds, and sends each worker its (ids, embeddings) at once.
    """

    def __init__(
        self,
        model: Any,
        send: Callable[[int, np.ndarray, np.ndarray], None],
        max_batch: int,
        max_wait_ms: float,
    ) -> None:
        from voiceid.stream.engine import batch_buckets

        self.model, self.send = model, send
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000
        self.buckets = batch_buckets(max_batch)
        self.blocks: dict[int, deque[tuple[float, int, np.ndarray, np.ndarray]]] = {}
        self.waiting = 0
        self.cond = threading.Condition()
        self.closing = False
        self.batches = self.windows = 0
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def submit(self, w: int, ids: np.ndarray, feats: np.ndarray) -> None:
        with self.cond:
            self.blocks.setdefault(feats.shape[1], deque()).append(
                (time.monotonic(), w, ids, feats)
            )
            self.waiting += len(ids)
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join(10)

    def _take(self) -> tuple[list[tuple[int, np.ndarray]], list[np.ndarray]] | None:
        with self.cond:
            while not self.waiting and not self.closing:
                self.cond.wait()
            if not self.waiting:
                return None
            deadline = time.monotonic() + self.max_wait_s
            while self.waiting < self.max_batch and not self.closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            t = min((q[0][0], t) for t, q in self.blocks.items() if q)[1]
            queue, owners, parts, n = self.blocks[t], [], [], 0
            while queue and n < self.max_batch:
                at, w, ids, feats = queue.popleft()
                room = self.max_batch - n
                if len(ids) > room:  # split: the rest stays first in line
                    queue.appendleft((at, w, ids[room:], feats[room:]))
                    ids, feats = ids[:room], feats[:room]
                owners.append((w, ids))
                parts.append(feats)
                n += len(ids)
            self.waiting -= n
            return owners, parts

    def _work(self) -> None:
        bufs: dict[tuple[int, ...], np.ndarray] = {}  # one float32 batch buffer per shape
        while (got := self._take()) is not None:
            owners, parts = got
            n = sum(len(p) for p in parts)
            size = next(b for b in self.buckets if b >= n)
            shape = (size, *parts[0].shape[1:])
            x = bufs.get(shape)
            if x is None:
                x = bufs[shape] = np.zeros(shape, np.float32)
            row = 0
            for part in parts:  # fp16 -> float32 straight into the batch (no concatenate)
                x[row : row + len(part)] = part
                row += len(part)
            x[n:] = 0.0  # padding rows (only these: no zero-fill of the whole batch)
            embs = self.model.embed(x)[:n]
            self.batches += 1
            self.windows += n
            at = 0
            by_w: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
            for w, ids in owners:
                got_ids, got_embs = by_w.setdefault(w, ([], []))
                got_ids.append(ids)
                got_embs.append(embs[at : at + len(ids)])
                at += len(ids)
            for w, (i_parts, e_parts) in by_w.items():
                self.send(w, np.concatenate(i_parts), np.concatenate(e_parts))


def run(n_streams: int, a: argparse.Namespace, model: Any) -> dict[str, Any]:
    from voiceid.benchmarks.streams import GpuSampler

    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    shares = [n_streams // a.workers + (i < n_streams % a.workers) for i in range(a.workers)]
    pipes_in = [ctx.Pipe(duplex=False) for _ in range(a.workers)]  # worker -> gpu
    pipes_out = [ctx.Pipe(duplex=False) for _ in range(a.workers)]  # gpu -> worker
    args = {
        "hop_s": a.hop,
        "window_s": a.window,
        "chunk_ms": a.chunk_ms,
        "slice_s": a.slice_s,
        "duration": a.duration,
        "audio": str(a.audio),
        "stagger": not a.aligned,
        "workers": a.workers,
        "total": n_streams,
    }
    t0 = time.time() + a.setup
    procs = [
        ctx.Process(
            target=worker,
            args=(w, shares[w], args, t0, pipes_in[w][1], pipes_out[w][0], out),
            daemon=True,
        )
        for w in range(a.workers)
    ]
    for p in procs:
        p.start()
    send_locks = [threading.Lock() for _ in range(a.workers)]

    def send(w: int, ids: np.ndarray, embs: np.ndarray) -> None:
        with send_locks[w]:
            pipes_out[w][1].send((ids, embs))

    batcher = ArrayBatcher(model, send, a.max_batch, a.max_wait_ms)

    def receive(w: int) -> None:
        conn = pipes_in[w][0]
        while True:
            try:
                _wid, ids, feats = conn.recv()
            except (EOFError, OSError):
                return
            batcher.submit(w, ids, feats)

    threads = [threading.Thread(target=receive, args=(w,), daemon=True) for w in range(a.workers)]
    for t in threads:
        t.start()
    with GpuSampler() as gpu:
        reports = [out.get(timeout=a.setup + a.duration + 120) for _ in procs]
    for p in procs:
        p.join(10)
    batcher.close()
    lat = [x for r in reports for x in r["lat"]]
    sent = sum(r["sent"] for r in reports)
    scored = sum(r["scored"] for r in reports)
    res = {
        "workers": a.workers,
        "streams": n_streams,
        "chunk_ms": a.chunk_ms,
        "slice_s": a.slice_s,
        "aligned": a.aligned,
        "max_batch": a.max_batch,
        "max_wait_ms": a.max_wait_ms,
        "windows_per_s": round(scored / a.duration, 1),
        "sent": sent,
        "scored": scored,
        "lost": sum(r["lost"] for r in reports),
        "p50_ms": round(statistics.median(lat), 1) if lat else None,
        "p99_ms": round(_pct(lat, 0.99), 1),
        "max_ms": round(max(lat), 1) if lat else None,
        "max_lag_ms": round(max(r["max_lag_ms"] for r in reports), 1),
        "worker_cpu_per_s_max": round(max(r["cpu_s"] for r in reports) / a.duration, 2),
        "batches": batcher.batches,
        "mean_batch": round(batcher.windows / batcher.batches, 1) if batcher.batches else 0.0,
        "gpu_util": gpu.mean(),
        "gpu_util_max": gpu.max(),
        "gpu_proc_cpu_s": round(time.process_time(), 1),
    }
    res["holds"] = bool(
        res["lost"] == 0
        and scored == sent
        and res["max_lag_ms"] < 1000 * a.hop
        and lat
        and res["p99_ms"] <= a.p99_ms
    )
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--streams", type=int, nargs="+", default=[2800])
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--chunk-ms", type=int, default=20)
    ap.add_argument("--slice-s", type=float, default=0.5, help="stream.slice_s")
    ap.add_argument("--hop", type=float, default=0.5)
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--max-batch", type=int, default=512)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--p99-ms", type=float, default=100.0)
    ap.add_argument("--setup", type=float, default=8.0, help="seconds before t0")
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--aligned", action="store_true", help="all streams' hops end together (worst case)"
    )
    ap.add_argument("--audio", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    model = load_model(a)
    for n in a.streams:
        r = run(n, a, model)
        print(json.dumps(r), flush=True)
        if a.out:
            with a.out.open("a") as f:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
