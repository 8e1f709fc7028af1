"""Where does the GPU time of the ResNet34 go, and does padding the first Conv to 8 channels help?

    python3 bench/gpu/kernels.py [--device cuda|cpu] [--batches 128 512] [--rounds 5]
                                 [--profile-batches 20] [--skip-profile] [--out FILE]

1. Equivalence (CPU, fp32): :func:`pad_first_conv` gives the first Conv (1 input channel,
   a poor fit for NHWC fp16 tensor-core kernels) ``--channels`` input channels: its
   weight zero-padded, its input padded with zero channels by a ``Pad``. Cosine of the
   embeddings of both graphs on random input must be >= 0.99999 (else exit 1).
2. Throughput on ``--device``: the daemon's default model (``EmbeddingModel``: fp16 trunk,
   NHWC, conv+bias fusion, static shapes, CUDA graphs, IO binding) against the same
   pipeline fed the padded fp32 graph; ``embed`` of float32 windows of T = 198 frames
   (2 s), host copies included; interleaved rounds, median windows/s per variant.
3. Kernel profile (CUDA + PyTorch only): ``--profile-batches`` runs of B = 512 inside
   ``torch.profiler.profile(activities=[CUDA])``; CUPTI records every kernel of the
   process, ONNX Runtime's included. GPU time per batch and window, the top kernels,
   and time by category (convolution, elementwise, layout, reductions, memcpy, ...).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray

from voiceid.benchmarks.model import gpu_name
from voiceid.models import registry
from voiceid.models.card import ModelCard
from voiceid.models.inference import EmbeddingModel

FRAMES = 198  # 2 s windows
COSINE_MIN = 0.99999

# -- the graph change ----------------------------------------------------------------------


def pad_first_conv(model: onnx.ModelProto, channels: int = 8) -> onnx.ModelProto:
    """A copy of ``model`` whose first Conv reads ``channels`` input channels.

    The Conv's weight [Cout, Cin, k...] is zero-padded to [Cout, channels, k...] and its
    input gets ``channels - Cin`` zero channels (a constant ``Pad`` on axis 1, so batch and
    time stay dynamic). The extra products are zero times zero: same output.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    conv = next((n for n in g.node if n.op_type == "Conv"), None)
    if conv is None:
        raise ValueError("model has no Conv")
    if any(a.name == "group" and a.i != 1 for a in conv.attribute):
        raise ValueError(f"first Conv {conv.name!r} is grouped")
    inits = {t.name: t for t in g.initializer}
    if conv.input[1] not in inits:
        raise ValueError(f"first Conv {conv.name!r}: weight is not an initializer")
    w = onnx.numpy_helper.to_array(inits[conv.input[1]])
    cin = w.shape[1]
    if cin >= channels:
        raise ValueError(f"first Conv already has {cin} >= {channels} input channels")
    padded = np.zeros((w.shape[0], channels, *w.shape[2:]), dtype=w.dtype)
    padded[:, :cin] = w
    tag = f"voiceid_cpad{channels}"
    w_name = f"{conv.input[1]}_{tag}"
    g.initializer.append(onnx.numpy_helper.from_array(padded, w_name))
    old_w = conv.input[1]
    conv.input[1] = w_name
    if not any(old_w in n.input for n in g.node):
        g.initializer.remove(inits[old_w])
    # pads: begins then ends, one per axis; only the end of axis 1 grows
    pads = [0] * (2 * w.ndim)
    pads[w.ndim + 1] = channels - cin
    x, y = conv.input[0], f"{conv.input[0]}_{tag}"
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= 11:  # pads as an input
        pads_name = f"{tag}_pads"
        g.initializer.append(onnx.numpy_helper.from_array(np.array(pads, np.int64), pads_name))
        pad = onnx.helper.make_node("Pad", [x, pads_name], [y], name=tag, mode="constant")
    else:
        pad = onnx.helper.make_node("Pad", [x], [y], name=tag, mode="constant", pads=pads)
    conv.input[0] = y
    nodes = list(g.node)
    nodes.insert(nodes.index(conv), pad)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    return m


# -- kernel categories ---------------------------------------------------------------------

# (category, lower-case substrings), first match wins: the order matters (cuDNN's layout
# kernels contain "cudnn", cuBLAS's GEMMs "xmma", split-K reductions "reduce")
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("memcpy", ("memcpy", "memset")),
    (
        "transpose/layout/pad",
        ("transpose", "nchwtonhwc", "nhwctonchw", "nchw2nhwc", "nhwc2nchw", "padkernel", "_pad"),
    ),
    ("gemm (Linear)", ("gemm",)),  # without the conv words below (see classify)
    ("reduce/pool", ("reduce", "pool", "mean", "variance")),
    (
        "convolution",
        (
            "fprop",
            "implicit",
            "conv",
            "winograd",
            "splitk",
            "cudnn",
            "cutlass",
            "xmma",
            "sm90",
            "sm80",
        ),
    ),
    ("elementwise", ("elementwise", "relu", "add", "cast")),  # ORT: _*ElementWise*<OP_x>
]
CONV_WORDS = ("fprop", "implicit", "conv", "cudnn", "splitk")


def classify(name: str) -> str:
    """The category of a GPU activity (kernel or memcpy) by its name."""
    low = name.lower()
    for category, words in CATEGORIES:
        if category == "gemm (Linear)" and any(c in low for c in CONV_WORDS):
            continue
        if category == "reduce/pool" and "splitk" in low:
            continue
        if category == "memcpy":
            if low.startswith(words):
                return category
        elif any(w in low for w in words):
            return category
    return "other"


def _check_classify() -> None:
    samples = {
        "Memcpy HtoD (Pageable -> Device)": "memcpy",
        "Memset (Device)": "memcpy",
        "void cudnn::engines_precompiled::nchwToNhwcKernel<__half, __half, float, false>": (
            "transpose/layout/pad"
        ),
        "void onnxruntime::cuda::Transpose4DKernel<int>(...)": "transpose/layout/pad",
        "void onnxruntime::cuda::_PadKernel<__half, 0>(...)": "transpose/layout/pad",
        "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128": (
            "convolution"
        ),
        "cutlass_tensorop_f16_s16816fprop_optimized_f16_128x128_32x4_nhwc_align8": "convolution",
        "void cudnn::cnn::conv2d_grouped_direct_kernel<false, true, __half>": "convolution",
        "void xmma_cudnn::gemm::kernel<xmma_cudnn::implicit_gemm::fprop::Kernel>": "convolution",
        "void cudnn::ops::splitKreduce_kernel<32, 16, int, __half, __half>": "convolution",
        "sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32": "gemm (Linear)",
        "void onnxruntime::cuda::_UnaryElementWise<__half, __half, OP_Relu<__half>, 256, 4>": (
            "elementwise"
        ),
        "void onnxruntime::cuda::_BinaryElementWiseSimple<true, true, __half, OP_Add>": (
            "elementwise"
        ),
        "void onnxruntime::cuda::reduce_matrix_rows_kernel<float, float, float>": "reduce/pool",
        "void onnxruntime::cuda::SomethingElse<float>": "other",
    }
    for name, want in samples.items():
        got = classify(name)
        assert got == want, f"classify({name!r}) = {got!r}, want {want!r}"


# -- models --------------------------------------------------------------------------------


def random_windows(batch: int, bins: int, seed: int = 0) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    out: NDArray[np.float32] = rng.standard_normal((batch, FRAMES, bins)).astype(np.float32)
    return out


def build(
    path: Path, card: ModelCard, device: str, shapes: Iterable[tuple[int, int]], **kw: Any
) -> EmbeddingModel:
    """The daemon's model (``EmbeddingModel`` defaults), static sessions of ``shapes`` built."""
    model = EmbeddingModel(path, card, device="cuda" if device == "cuda" else "cpu", **kw)
    model.prepare(list(shapes))
    return model


def cosine(a: EmbeddingModel, b: EmbeddingModel, x: NDArray[np.float32]) -> float:
    return float((a.embed(x) * b.embed(x)).sum(axis=1).min())


def uses_graph(model: EmbeddingModel, batch: int) -> bool:
    runner = model.runner_for((batch, FRAMES, model.card.frontend.num_bins))
    return bool(getattr(runner, "cuda_graph", False))


def throughput(
    models: dict[str, EmbeddingModel], batches: list[int], rounds: int, min_time: float
) -> list[dict[str, Any]]:
    """Median windows/s of ``embed`` per (variant, batch); variants alternate in each round."""
    rows: list[dict[str, Any]] = []
    names = list(models)
    for b in batches:
        x = random_windows(b, next(iter(models.values())).card.frontend.num_bins)
        for m in models.values():
            for _ in range(3):
                m.embed(x)
        wps: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            for n in names if r % 2 == 0 else names[::-1]:
                m = models[n]
                done = 0
                t0 = time.perf_counter()
                while True:
                    m.embed(x)
                    done += b
                    elapsed = time.perf_counter() - t0
                    if elapsed >= min_time:
                        break
                wps[n].append(done / elapsed)
        row: dict[str, Any] = {"batch": b, "frames": FRAMES}
        for n in names:
            row[n] = {
                "windows_per_s": round(statistics.median(wps[n]), 1),
                "rounds": [round(v, 1) for v in wps[n]],
                "cuda_graph": uses_graph(models[n], b),
            }
        row["ratio"] = round(row[names[1]]["windows_per_s"] / row[names[0]]["windows_per_s"], 4)
        rows.append(row)
    return rows


# -- kernel profile ------------------------------------------------------------------------


def summarise(
    events: list[tuple[str, float]], n_batches: int, batch: int, top: int
) -> dict[str, Any]:
    """Per-name and per-category GPU time of ``events`` ((name, µs)) over ``n_batches``."""
    by_name: dict[str, list[float]] = {}
    for name, us in events:
        by_name.setdefault(name, []).append(us)
    total = sum(us for _, us in events) or 1e-9
    kernels = sum(us for name, us in events if classify(name) != "memcpy")
    table = [
        {
            "name": name,
            "category": classify(name),
            "calls_per_batch": round(len(v) / n_batches, 2),
            "us_per_batch": round(sum(v) / n_batches, 1),
            "pct": round(100 * sum(v) / total, 2),
        }
        for name, v in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))
    ]
    cats: dict[str, float] = {}
    for name, us in events:
        cats[classify(name)] = cats.get(classify(name), 0.0) + us
    return {
        "batch": batch,
        "batches": n_batches,
        "events": len(events),
        "distinct": len(by_name),
        "kernel_ms_per_batch": round(kernels / n_batches / 1e3, 3),
        "kernel_us_per_window": round(kernels / n_batches / batch, 3),
        "device_ms_per_batch": round(total / n_batches / 1e3, 3),
        "categories": {
            c: {"us_per_batch": round(us / n_batches, 1), "pct": round(100 * us / total, 2)}
            for c, us in sorted(cats.items(), key=lambda kv: -kv[1])
        },
        "top": table[:top],
    }


def print_profile(label: str, s: dict[str, Any]) -> None:
    print(
        f"\n== {label}: B={s['batch']}, {s['batches']} batches, {s['events']} GPU activities "
        f"({s['distinct']} distinct), wall {s.get('wall_ms_per_batch')} ms/batch under the "
        f"profiler, cuda_graph={s.get('cuda_graph')}"
    )
    print(
        f"GPU kernels: {s['kernel_ms_per_batch']:.3f} ms/batch, "
        f"{s['kernel_us_per_window']:.3f} us/window; with memcpy/memset "
        f"{s['device_ms_per_batch']:.3f} ms/batch"
    )
    print(f"{'#':>3} {'calls/b':>7} {'us/batch':>10} {'%':>6}  kernel")
    for i, k in enumerate(s["top"], 1):
        print(
            f"{i:3d} {k['calls_per_batch']:7.2f} {k['us_per_batch']:10.1f} {k['pct']:6.2f}  "
            f"{k['name'][:90]}"
        )
    print(f"{'category':22} {'us/batch':>10} {'%':>6}")
    for c, v in s["categories"].items():
        print(f"{c:22} {v['us_per_batch']:10.1f} {v['pct']:6.2f}")


def device_activities(prof: Any) -> list[tuple[str, float]]:
    """(name, µs) of every GPU-side event (kernels, memcpy, memset) of a finished profile.

    From ``prof.events()``, not ``key_averages()``: there the CPU-side CUDA runtime rows
    (cudaGraphLaunch, cudaMemcpyAsync, ...) also carry the device time of their kernels.
    """
    from torch.autograd import DeviceType

    out: list[tuple[str, float]] = []
    for e in prof.events():
        if getattr(e, "device_type", DeviceType.CPU) == DeviceType.CPU:
            continue
        tr = getattr(e, "time_range", None)  # a device event's own span
        if tr is not None:
            us = float(tr.elapsed_us())
        else:  # the same for device events; cuda_time_total before torch 2.4
            us = float(getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0))
        out.append((str(e.name), us))
    return out


def profile_step(
    variants: dict[str, Path],
    card: ModelCard,
    args: argparse.Namespace,
    save: Callable[[], None],
    result: dict[str, Any],
) -> None:
    """Step 3: the kernel profile of each variant (results into ``result['profile']``)."""
    prof_out: dict[str, Any] = {}
    result["profile"] = prof_out
    if args.skip_profile:
        prof_out["skipped"] = "--skip-profile"
        return
    if args.device != "cuda":
        prof_out["skipped"] = "needs --device cuda"
        print("\nkernel profile: skipped (needs --device cuda)")
        return
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError as exc:
        prof_out["skipped"] = f"no torch: {exc}"
        print(f"\nkernel profile: skipped, PyTorch is not installed ({exc})")
        return
    if not torch.cuda.is_available():
        prof_out["skipped"] = "torch.cuda.is_available() is False"
        print("\nkernel profile: skipped, PyTorch sees no CUDA device")
        return
    prof_out["torch"] = torch.__version__
    if not args.no_cupti_prewarm:
        # one empty CUDA profile before any profiled CUDA graph is captured: graphs captured
        # before the profiler's first use may go untraced (torch's workaround,
        # torch.profiler._utils._init_for_cuda_graphs, is the same with CPU activity only)
        with profile(activities=[ProfilerActivity.CUDA]):
            pass
    b, n = args.profile_batch, args.profile_batches
    x = random_windows(b, card.frontend.num_bins)
    for label, path in variants.items():
        configs: list[tuple[str, dict[str, Any]]] = [(label, {})]
        while configs:
            name, kw = configs.pop(0)
            model = build(path, card, "cuda", [(b, FRAMES)], **kw)
            for _ in range(5):
                model.embed(x)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                t0 = time.perf_counter()
                for _ in range(n):
                    model.embed(x)
                wall = time.perf_counter() - t0
            events = device_activities(prof)
            s = summarise(events, n, b, args.top)
            s["wall_ms_per_batch"] = round(wall / n * 1e3, 3)
            s["cuda_graph"] = uses_graph(model, b)
            s["config"] = model.describe()
            prof_out[name] = s
            print_profile(name, s)
            if not any(classify(k) != "memcpy" for k, _ in events):
                kinds = sorted({str(getattr(e, "device_type", "?")) for e in prof.events()})
                print(
                    f"!! no kernels recorded ({len(prof.events())} events, device types "
                    f"{kinds}; first: {[e.name for e in list(prof.events())[:5]]})"
                )
                if s["cuda_graph"] and not kw:  # CUPTI missed the graph's kernels: same
                    configs.append((f"{label} without CUDA graph", {"cuda_graph": False}))
                elif not args.no_cupti_prewarm:
                    print("!! try again with --no-cupti-prewarm")
            del model, prof
            gc.collect()
            save()


# -- main ----------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--model", default="wespeaker-resnet34-random", help="registry name")
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per variant and round")
    ap.add_argument("--channels", type=int, default=8, help="first-conv input channels")
    ap.add_argument("--profile-batches", type=int, default=20)
    ap.add_argument("--profile-batch", type=int, default=512)
    ap.add_argument("--top", type=int, default=25, help="kernels listed per profile")
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument(
        "--no-cupti-prewarm",
        action="store_true",
        help="do not set up CUPTI before the profiled CUDA graphs are captured",
    )
    ap.add_argument("--out", type=Path, default=None, help="write one JSON object here")
    args = ap.parse_args()
    _check_classify()

    result: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "gpu": gpu_name(),
        "device": args.device,
        "model": args.model,
        "channels": args.channels,
        "frames": FRAMES,
    }

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(result, indent=1) + "\n")

    print(f"onnxruntime {ort.__version__} {result['providers']}; GPU {result['gpu']}", flush=True)
    resolved = registry.resolve(args.model, fetch=True)
    card = resolved.card
    bins = card.frontend.num_bins
    with tempfile.TemporaryDirectory(prefix="voiceid-kernels-") as tmp:
        padded_path = Path(tmp) / f"{resolved.path.stem}-cpad{args.channels}.onnx"
        onnx.save(pad_first_conv(onnx.load(str(resolved.path)), args.channels), str(padded_path))
        variants = {"default": resolved.path, f"cpad{args.channels}": padded_path}
        names = list(variants)

        # 1. equivalence, fp32 on the CPU
        cpu = {k: build(p, card, "cpu", []) for k, p in variants.items()}
        cos = cosine(cpu[names[0]], cpu[names[1]], random_windows(8, bins, seed=1))
        result["cosine_cpu_fp32"] = cos
        ok = cos >= COSINE_MIN
        print(
            f"cosine default vs {names[1]} (CPU fp32, 8 random windows, min): {cos:.8f} "
            f"{'ok' if ok else f'FAIL (< {COSINE_MIN})'}",
            flush=True,
        )
        save()

        # 2. throughput
        if args.device == "cuda":
            del cpu
            gc.collect()
            t0 = time.perf_counter()
            models = {
                k: build(p, card, "cuda", [(b, FRAMES) for b in args.batches])
                for k, p in variants.items()
            }
            result["build_s"] = round(time.perf_counter() - t0, 1)
            result["config"] = models[names[0]].describe()
            gpu_cos = cosine(
                models[names[0]], models[names[1]], random_windows(min(args.batches), bins, seed=1)
            )
            result["cosine_gpu"] = gpu_cos
            print(
                f"cosine default vs {names[1]} on the GPU (fp16 trunk, min): {gpu_cos:.6f}; "
                f"sessions built in {result['build_s']} s",
                flush=True,
            )
        else:
            models = cpu
        result["throughput"] = throughput(models, args.batches, args.rounds, args.min_time)
        save()
        print(
            f"\nthroughput ({args.device}, T={FRAMES}, median of {args.rounds} rounds x "
            f">= {args.min_time} s, embed with host copies)"
        )
        print(f"{'B':>5} {names[0] + ' win/s':>16} {names[1] + ' win/s':>16} {'ratio':>7}  graph")
        for r in result["throughput"]:
            a, p = r[names[0]], r[names[1]]
            print(
                f"{r['batch']:5d} {a['windows_per_s']:16,.0f} {p['windows_per_s']:16,.0f} "
                f"{r['ratio']:7.3f}  {a['cuda_graph']}/{p['cuda_graph']}",
                flush=True,
            )
        del models
        gc.collect()

        # 3. kernel profile
        profile_step(variants, card, args, save, result)
    save()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
