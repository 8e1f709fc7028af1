"""Does ONNX Runtime CUDA gain from running sessions concurrently, and what did it fuse?

    python3 bench/gpu/ort_streams.py [--threads 1 2 3] [--batch 512] [--seconds 6]
                                     [--options fuse_conv_bias=1 ...] [--out FILE]

1. Op histogram of the optimised graph (the CUDA provider's view after ORT's graph
   transformers, fixed shape [B, 198, 80], fp16 trunk): which Conv/ReLU/Add fusions
   and layout transposes are left.
2. Throughput with k threads, each with its own ``EmbeddingModel`` (own session, own
   CUDA stream, static shape + CUDA graph) embedding B windows of 2 s in a loop
   (host copies included): windows/s summed over threads, k = 1 first, side by side.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from voiceid.models import gpu, registry
from voiceid.models.inference import EmbeddingModel


def op_histogram(
    path: Path, input_name: str, batch: int, options: dict[str, str]
) -> dict[str, int]:
    fp16 = gpu.to_fp16(onnx.load(str(path)))
    fixed = gpu.fix_shape(fp16, input_name, (batch, 198, 80))
    with tempfile.TemporaryDirectory() as tmp:
        so = gpu.session_options()
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        provider = ("CUDAExecutionProvider", gpu.cuda_options(options))
        ort.InferenceSession(gpu.serialized(fixed), so, providers=[provider])
        opt = onnx.load(str(Path(tmp) / "opt.onnx"), load_external_data=False)
    return dict(collections.Counter(f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in opt.graph.node))


def throughput(models: list[EmbeddingModel], batch: int, seconds: float) -> float:
    x = np.random.default_rng(0).standard_normal((batch, 198, 80)).astype(np.float32)
    for m in models:
        m.embed(x)
    done = [0] * len(models)
    stop = time.perf_counter() + seconds
    start = threading.Barrier(len(models) + 1)

    def loop(i: int) -> None:
        start.wait()
        while time.perf_counter() < stop:
            models[i].embed(x)
            done[i] += batch

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(models))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--options", nargs="*", default=[], help="CUDA provider key=value")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    options = dict(kv.split("=", 1) for kv in a.options)
    resolved = registry.resolve("wespeaker-resnet34-random", fetch=True)
    row: dict[str, Any] = {"options": gpu.cuda_options(options), "batch": a.batch}
    try:
        row["ops"] = op_histogram(resolved.path, resolved.card.input_name, a.batch, options)
    except Exception as exc:  # e.g. internal NHWC ops that cannot be saved
        row["ops"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    print(json.dumps(row["ops"]), flush=True)
    models: list[EmbeddingModel] = []
    row["windows_per_s"] = {}
    for k in sorted(a.threads):
        while len(models) < k:
            m = EmbeddingModel(resolved.path, resolved.card, device="cuda", cuda_options=options)
            m.prepare([(a.batch, 198)])
            models.append(m)
        wps = throughput(models[:k], a.batch, a.seconds)
        row["windows_per_s"][k] = round(wps, 1)
        print(f"threads={k} B={a.batch}: {wps:,.0f} windows/s", flush=True)
    if a.out:
        with a.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
