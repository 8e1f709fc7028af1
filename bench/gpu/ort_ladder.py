"""ONNX Runtime CUDA, one optimisation at a time, on the ResNet34 graph (random weights).

    python3 bench/gpu/ort_ladder.py [--batches 1 32 128 512] [--audio DIR] [--out FILE]

Each rung is an :class:`EmbeddingModel` configuration; for each batch size (T = 198
frames, 2 s) it reports the median ms per batch of ``embed`` (features in host memory ->
unit-norm embeddings in host memory, copies included) and, with IO binding, of the run
alone (features already on the GPU). Accuracy: cosine of each configuration's embeddings
to ONNX Runtime CPU fp32 on real speech windows (Kaldi fbank + CMN of 2 s windows).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from voiceid.benchmarks.model import gpu_name, time_model
from voiceid.benchmarks.streams import speech_loop
from voiceid.frontend.fbank import fbank
from voiceid.models import registry
from voiceid.models.inference import EmbeddingModel, l2_normalize

NCHW = {"prefer_nhwc": "0"}
NHWC = {"prefer_nhwc": "1"}

RUNGS: list[tuple[str, dict[str, Any]]] = [
    (
        "fp32 (NCHW, session.run)",
        dict(precision="fp32", cuda_options=NCHW, io_binding=False, static_shapes=False),
    ),
    (
        "fp16 whole graph (keep_io_types)",
        dict(
            precision="fp16",
            fp32_head=False,
            cuda_options=NCHW,
            io_binding=False,
            static_shapes=False,
        ),
    ),
    (
        "fp16 trunk, fp32 head",
        dict(precision="fp16", cuda_options=NCHW, io_binding=False, static_shapes=False),
    ),
    (
        "+ prefer_nhwc=1",
        dict(precision="fp16", cuda_options=NHWC, io_binding=False, static_shapes=False),
    ),
    ("+ IO binding", dict(precision="fp16", cuda_options=NHWC, static_shapes=False)),
    ("+ static shapes per bucket", dict(precision="fp16", cuda_options=NHWC, cuda_graph=False)),
    ("+ CUDA graph (default)", dict(precision="fp16", cuda_options=NHWC)),
    (
        "  algo HEURISTIC",
        dict(precision="fp16", cuda_options={**NHWC, "cudnn_conv_algo_search": "HEURISTIC"}),
    ),
    (
        "  algo DEFAULT",
        dict(precision="fp16", cuda_options={**NHWC, "cudnn_conv_algo_search": "DEFAULT"}),
    ),
    (
        "  max_workspace=0",
        dict(precision="fp16", cuda_options={**NHWC, "cudnn_conv_use_max_workspace": "0"}),
    ),
    ("  fp16 whole graph + graph", dict(precision="fp16", fp32_head=False, cuda_options=NHWC)),
    ("  fp32 + NHWC + static + graph", dict(precision="fp32", cuda_options=NHWC)),
    # session 2: the cuDNN-frontend conv + bias fusion of the CUDA provider
    (
        "  fuse_conv_bias=1",
        dict(precision="fp16", cuda_options={**NHWC, "fuse_conv_bias": "1"}),
    ),
    (
        "  fuse_conv_bias=1, NCHW (FusedConv Conv+ReLU path)",
        dict(precision="fp16", cuda_options={**NCHW, "fuse_conv_bias": "1"}),
    ),
]


def speech_windows(audio_dir: Path, n: int = 64) -> NDArray[np.float32]:
    """``n`` CMN'd fbank windows of 198 frames (2 s) of real speech, [n, 198, 80]."""
    audio = speech_loop(audio_dir, n * 1.3 + 3)
    feats = fbank(audio)
    wins = np.stack([feats[i * 130 : i * 130 + 198] for i in range(n)])
    out: NDArray[np.float32] = (wins - wins.mean(axis=1, keepdims=True)).astype(np.float32)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128, 512])
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--audio", type=Path, required=True)
    ap.add_argument("--rungs", type=int, nargs="*", default=None, help="indices to run")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="wespeaker-resnet34-random", help="registry name")
    args = ap.parse_args()
    print(
        f"onnxruntime {ort.__version__} {ort.get_available_providers()}; GPU {gpu_name()}",
        flush=True,
    )
    resolved = registry.resolve(args.model, fetch=True)
    wins = speech_windows(args.audio)
    cpu = EmbeddingModel(resolved.path, resolved.card, device="cpu")
    ref = cpu.embed(wins)
    del cpu

    def emit(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")

    model: EmbeddingModel | None = None
    for idx, (name, kw) in enumerate(RUNGS):
        if args.rungs is not None and idx not in args.rungs:
            continue
        t0 = time.perf_counter()
        try:
            model = EmbeddingModel(resolved.path, resolved.card, device=args.device, **kw)
            emb = np.concatenate([model.embed(wins[i : i + 32]) for i in range(0, len(wins), 32)])
            cos = (emb * ref).sum(axis=1)
            build = time.perf_counter() - t0
            row: dict[str, Any] = {
                "rung": idx,
                "name": name,
                "config": model.describe(),
                "cos_min": round(float(cos.min()), 7),
                "cos_mean": round(float(cos.mean()), 7),
                "first_call_s": round(build, 2),
                "points": [],
            }
            for b in args.batches:
                t1 = time.perf_counter()
                r = time_model(
                    model, batch=b, window_s=args.window, repeats=20, min_time_s=args.min_time
                )
                row["points"].append(
                    {
                        "batch": b,
                        "ms": r.median_ms,
                        "wps": r.windows_per_s,
                        "dev_ms": r.device_ms,
                        "dev_wps": r.device_windows_per_s,
                        "graph": r.cuda_graph,
                        "setup_s": round(time.perf_counter() - t1, 2),
                    }
                )
            emit(row)
        except Exception as exc:
            emit({"rung": idx, "name": name, "error": f"{type(exc).__name__}: {exc}"[:2000]})
            traceback.print_exc()
        model = None
        gc.collect()

    # TensorRT: listed in the wheel, usable only with libnvinfer present
    try:
        import onnx

        from voiceid.models import gpu

        fp16 = gpu.to_fp16(onnx.load(str(resolved.path)))
        m = gpu.fix_shape(fp16, resolved.card.input_name, (32, 198, 80))
        sess = ort.InferenceSession(
            m.SerializeToString(),
            providers=[
                ("TensorrtExecutionProvider", {"trt_fp16_enable": "1"}),
                "CUDAExecutionProvider",
            ],
        )
        provs = sess.get_providers()
        x = np.random.default_rng(0).standard_normal((32, 198, 80)).astype(np.float32)
        for _ in range(3):
            sess.run(None, {"feats": x})
        lat = []
        for _ in range(20):
            t = time.perf_counter()
            sess.run(None, {"feats": x})
            lat.append((time.perf_counter() - t) * 1e3)
        med = statistics.median(lat)
        emit(
            {
                "name": "TensorRT EP fp16 B=32",
                "providers": provs,
                "ms": med,
                "wps": round(32e3 / med, 1),
                "cos_note": "see first provider: TensorRT only if listed first",
            }
        )
    except Exception as exc:
        emit({"name": "TensorRT EP", "error": f"{type(exc).__name__}: {exc}"[:1000]})
    _ = l2_normalize
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
