"""CPU (or GPU) latency and throughput of both models, side by side in one run.

    .venv/bin/python bench/bench_models.py [--threads 2] [--batches 1 8] [--json]

Prints ms per 2 s window and windows/s for the ResNet34 graph (seeded random weights:
same ops, shapes and FLOPs as WeSpeaker ResNet34-LM) and for Resemblyzer GE2E.
"""

from __future__ import annotations

import argparse
import json

from voiceid.benchmarks.model import time_model
from voiceid.models import registry
from voiceid.models.inference import EmbeddingModel

MODELS = ("wespeaker-resnet34-random", "resemblyzer-ge2e")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--window", type=float, default=2.0, help="seconds")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for name in MODELS:
        resolved = registry.resolve(name, fetch=True)
        model = EmbeddingModel(
            resolved.path, resolved.card, device=args.device, intra_threads=args.threads
        )
        for b in args.batches:
            rows.append(
                time_model(model, batch=b, window_s=args.window, repeats=args.repeats).as_dict()
            )
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"threads={args.threads} device={args.device} window={args.window} s")
    print(
        f"{'model':28} {'provider':22} {'batch':>5} {'frames':>6} {'ms/batch':>9} "
        f"{'ms/window':>9} {'windows/s':>10}"
    )
    for r in rows:
        print(
            f"{r['model']:28} {r['provider']:22} {r['batch']:>5} {r['frames']:>6} "
            f"{r['median_ms']:>9.2f} {r['ms_per_window']:>9.2f} {r['windows_per_s']:>10.1f}"
        )


if __name__ == "__main__":
    main()
