"""Where the CPU time of many live streams goes (front-end, VAD, scheduling, scoring).

    .venv/bin/python bench/gpu/profile_frontend.py --streams 200 --duration 10 [--chunk-ms 20]

The model is replaced by a stub that returns fixed unit vectors at once, so only the
per-stream CPU work is measured: PCM -> VAD -> fbank -> windows (CMN) -> batching ->
scoring -> decisions. Prints CPU ms per stream-second (total and per function, cProfile).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import resource
import sys
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from voiceid.benchmarks.streams import run_streams, run_ws_streams, speech_loop
from voiceid.models import registry
from voiceid.models.embedder import Embedder

ROOT = Path(__file__).resolve().parents[2]


class StubModel:
    """Stands in for EmbeddingModel: same card, constant unit embeddings, no compute."""

    def __init__(self, card: object, dim: int) -> None:
        self.card = card
        self.provider = "stub"
        self.path = Path("stub")
        v = np.ones((1, dim), np.float32) / np.sqrt(dim)
        self._v = v

    def embed(self, feats: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.repeat(self._v, feats.shape[0], axis=0)

    def describe(self) -> dict[str, object]:
        return {"provider": "stub"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--chunk-ms", type=int, default=20)
    ap.add_argument(
        "--audio", type=Path, default=ROOT.parent / "shared/audio/librispeech-test-other"
    )
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument(
        "--ws", action="store_true", help="over loopback WebSockets (clients: other processes)"
    )
    args = ap.parse_args()
    card = registry.card("wespeaker-resnet34-random")
    emb = Embedder(StubModel(card, card.dim), "stub")  # type: ignore[arg-type,unused-ignore]
    audio = speech_loop(args.audio, 120.0)
    prof = cProfile.Profile()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if not args.no_profile:
        prof.enable()
    run = run_ws_streams if args.ws else run_streams
    res = asyncio.run(
        run(emb, audio, streams=args.streams, duration_s=args.duration, chunk_ms=args.chunk_ms)
    )
    prof.disable()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    stream_s = args.streams * args.duration
    print(res.as_dict())
    print(
        f"streams={args.streams} chunk={args.chunk_ms} ms: cpu {cpu:.2f} s over {wall:.2f} s wall;"
        f" {1000 * cpu / stream_s:.3f} CPU ms per stream-second"
        f" -> one core holds ~{stream_s / cpu:.0f} streams"
    )
    if not args.no_profile:
        stats = pstats.Stats(prof, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
