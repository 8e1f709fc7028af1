# mypy: allow-subclassing-any
"""PyTorch reference speed of the same ResNet34 (same seeded weights) on the GPU machine.

    python3 bench/gpu/torch_ref.py [--batches 1 32 128 512] [--compile 512 128 32 1]
                                   [--compile-budget 420] [--out $OUT/torch.jsonl]

Rows (features already on the GPU, T = 198 frames = 2 s): eager fp32, eager fp16
channels_last, and ``torch.compile(mode="max-autotune")`` fp16 channels_last per batch
size (each a separate compile; stops when ``--compile-budget`` seconds are spent).
Throughput = B x iterations / time (synchronised); B=1 latency = median of synchronised
single calls. The torch graph is checked against ONNX Runtime (CPU, fp32) first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from voiceid.models.resnet34 import (
    POOL_EPS,
    _fold,
    _has_shortcut,
    _stages,
    build_resnet34_onnx,
    resnet34_parameters,
)

FRAMES = 198


class Block(nn.Module):
    def __init__(self, c1: nn.Conv2d, c2: nn.Conv2d, sc: nn.Conv2d | None) -> None:
        super().__init__()
        self.c1, self.c2, self.sc = c1, c2, sc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c2(F.relu(self.c1(x)))
        return F.relu(y + (self.sc(x) if self.sc is not None else x))


class ResNet34(nn.Module):
    """WeSpeaker ResNet34 + TSTP + Linear, BN folded into the convs (as the ONNX file)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        params, buffers = resnet34_parameters(seed)

        def conv(name: str, bn: str, stride: int, k: int) -> nn.Conv2d:
            w, b = _fold(params[name], params, buffers, bn)
            c = nn.Conv2d(w.shape[1], w.shape[0], k, stride, k // 2, bias=True)
            c.weight.data = torch.from_numpy(w.copy())
            c.bias.data = torch.from_numpy(b.copy())
            return c

        self.stem = conv("conv1.weight", "bn1", 1, 3)
        blocks = []
        for prefix, cin, cout, stride in _stages(32):
            sc = None
            if _has_shortcut(cin, cout, stride):
                sc = conv(f"{prefix}.shortcut.0.weight", f"{prefix}.shortcut.1", stride, 1)
            blocks.append(
                Block(
                    conv(f"{prefix}.conv1.weight", f"{prefix}.bn1", stride, 3),
                    conv(f"{prefix}.conv2.weight", f"{prefix}.bn2", 1, 3),
                    sc,
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(5120, 256)
        self.fc.weight.data = torch.from_numpy(params["seg_1.weight"].copy())
        self.fc.bias.data = torch.from_numpy(params["seg_1.bias"].copy())
        self.channels_last = False

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = feats.transpose(1, 2).unsqueeze(1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = F.relu(self.stem(x))
        for b in self.blocks:
            x = b(x)
        mean = x.mean(-1)
        std = torch.sqrt(x.var(-1, unbiased=True) + POOL_EPS)
        return self.fc(torch.cat([mean.flatten(1), std.flatten(1)], 1))


def check_against_onnx(model: ResNet34) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(
        build_resnet34_onnx(0).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(1).standard_normal((2, FRAMES, 80)).astype(np.float32)
    ref = sess.run(None, {"feats": x})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def bench(fn: Any, x: torch.Tensor, *, min_s: float = 1.0) -> dict[str, float]:
    with torch.no_grad():
        for _ in range(5):
            fn(x)
        torch.cuda.synchronize()
        lat = []
        for _ in range(20):
            t0 = time.perf_counter()
            fn(x)
            torch.cuda.synchronize()
            lat.append((time.perf_counter() - t0) * 1e3)
        med = statistics.median(lat)
        iters = max(10, int(min_s * 1e3 / max(med, 1e-3)))
        t0 = time.perf_counter()
        for _ in range(iters):
            fn(x)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    b = x.shape[0]
    return {"median_ms": round(med, 3), "windows_per_s": round(b * iters / dt, 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128, 512])
    ap.add_argument("--compile", type=int, nargs="*", default=[512, 128, 32, 1])
    ap.add_argument("--compile-budget", type=float, default=420.0)
    ap.add_argument("--skip-eager", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}", flush=True)
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")

    base = ResNet34(0).eval()
    emit({"check_vs_onnx_rel_err": check_against_onnx(base)})
    torch.backends.cudnn.benchmark = True
    if not args.skip_eager:
        m32 = ResNet34(0).eval().to(dev)
        m16 = ResNet34(0).eval().to(dev).half().to(memory_format=torch.channels_last)
        m16.channels_last = True
        for b in args.batches:
            x = torch.randn(b, FRAMES, 80, device=dev)
            emit({"engine": "torch eager fp32", "batch": b, **bench(m32, x)})
            emit({"engine": "torch eager fp16 channels_last", "batch": b, **bench(m16, x.half())})
        del m32
    spent = 0.0
    for b in args.compile:
        if spent > args.compile_budget:
            emit({"engine": "torch.compile max-autotune fp16", "batch": b, "skipped": "budget"})
            continue
        torch._dynamo.reset()
        m = ResNet34(0).eval().to(dev).half().to(memory_format=torch.channels_last)
        m.channels_last = True
        t0 = time.perf_counter()
        cm = torch.compile(m, mode="max-autotune", dynamic=False)
        x = torch.randn(b, FRAMES, 80, device=dev).half()
        with torch.no_grad():
            cm(x)
            torch.cuda.synchronize()
        ct = time.perf_counter() - t0
        r = bench(cm, x)
        spent += time.perf_counter() - t0
        emit(
            {
                "engine": "torch.compile max-autotune fp16",
                "batch": b,
                "compile_s": round(ct, 1),
                **r,
            }
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
