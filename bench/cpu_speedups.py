"""CPU speed-ups for the WeSpeaker ResNet34 graph, side by side: speed and agreement with fp32.

    .venv/bin/python bench/cpu_speedups.py [--threads 2] [--rounds 20] [--eval 120]
    PYTHONPATH=/path/to/openvino .venv/bin/python bench/cpu_speedups.py   # + OpenVINO rows

One run, one machine, one table. For each variant: ms per 2 s window (T=198 frames) at
B=1 and B=8 (median of ``--rounds`` runs after warm-up), aggregate windows/s (the
better of the two), speed-up against the fp32 baseline, and agreement with the fp32
baseline embeddings on real speech (cosine min / mean per window, and the largest
change of a pairwise trial score between windows).

Timing is interleaved: each round times every variant once at B=1 and once at B=8, in
a rotating order, so that load from other processes (report ``uptime``) hits all
variants alike and the ratios stay meaningful when absolute numbers move.

Rows with ``2x1``: two Python threads, each driving its own 1-thread session (two
windows at once); their ms/window is wall time / windows done by both.

Features: Kaldi fbank (``voiceid.frontend.fbank.fbank``) + CMN of 2 s windows of
LibriSpeech test-other (``--audio``). Calibration windows come from the even-numbered
files of each speaker, evaluation windows from the odd-numbered ones. Variants that
run the same graph as the baseline (session options only) are checked on
``--eval-exact`` windows, the others on ``--eval``.

Model: the seeded random-weight copy of the ResNet34-LM graph (``save_resnet34``), or
``--model``. Random weights have the real ops, shapes and FLOPs, but not the real
activation statistics: int8 agreement must be re-checked on the real weights.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

from voiceid.audio.io import load_audio
from voiceid.frontend.fbank import fbank
from voiceid.models import registry
from voiceid.models.inference import EmbeddingModel
from voiceid.models.quantize import quantize_int8
from voiceid.models.resnet34 import save_resnet34

Array = NDArray[np.float32]
Embed = Callable[[Array], Array]

FRAMES = 198  # 2 s at 16 kHz: 1 + (32000 - 400) // 160
AUDIO = Path(__file__).resolve().parents[1].parent / "shared/audio/librispeech-test-other"
CARD = "wespeaker-resnet34-random"
INPUT = "feats"


@dataclass
class Variant:
    """One way of computing embeddings; ``pair`` = two 1-thread runners used at once."""

    name: str
    embed: Embed
    exact: bool = False  # same graph as the baseline: fewer accuracy windows
    pair: tuple[Embed, Embed] | None = None
    load_s: float = 0.0
    b1: list[float] = field(default_factory=list)
    b8: list[float] = field(default_factory=list)
    cos: Array | None = None
    dscore: float = float("nan")


# --------------------------------------------------------------------------- data


def speech_windows(files: Sequence[Path], hop: int) -> Array:
    """CMN'd fbank windows [N, 198, 80] every ``hop`` frames of each file."""
    out = []
    for f in files:
        feats = fbank(load_audio(f))
        for i in range(0, len(feats) - FRAMES + 1, hop):
            w = feats[i : i + FRAMES]
            out.append(w - w.mean(axis=0, keepdims=True))
    return np.stack(out).astype(np.float32)


def evenly(x: Array, n: int) -> Array:
    """``n`` rows of ``x`` spread evenly over it (all rows if it has fewer)."""
    if len(x) <= n:
        return x
    picked: Array = x[np.linspace(0, len(x) - 1, n).round().astype(int)]
    return picked


def batches(x: Array, size: int) -> list[Array]:
    return [x[i : i + size] for i in range(0, len(x), size)]


class Windows(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime is untyped
    def __init__(self, x: Array, batch: int = 10) -> None:
        self._it = iter(batches(x, batch))

    def get_next(self) -> dict[str, Array] | None:
        b = next(self._it, None)
        return None if b is None else {INPUT: b}


# --------------------------------------------------------------------------- runners


def options(
    threads: int,
    *,
    inter: int = 1,
    parallel: bool = False,
    spinning: bool | None = None,
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    save_to: Path | None = None,
) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = inter
    if parallel:
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if save_to is not None:
        so.optimized_model_filepath = str(save_to)
    return so


def ort_runner(path: Path, so: ort.SessionOptions) -> tuple[Embed, float]:
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - t0

    def embed(x: Array) -> Array:
        return np.asarray(sess.run(None, {INPUT: x})[0], dtype=np.float32)

    return embed, load


def ort_variant(name: str, path: Path, so: ort.SessionOptions, *, exact: bool = False) -> Variant:
    embed, load = ort_runner(path, so)
    return Variant(name, embed, exact=exact, load_s=load)


def ort_pair(name: str, path: Path, *, exact: bool = False) -> Variant:
    a, la = ort_runner(path, options(1))
    b, lb = ort_runner(path, options(1))
    return Variant(name, a, exact=exact, pair=(a, b), load_s=la + lb)


def openvino_variants(fp32: Path, int8: Path, threads: int, header: list[str]) -> list[Variant]:
    """OpenVINO rows (fp32, bf16, int8 from the QDQ model), if ``openvino`` imports."""
    try:
        ov: Any = importlib.import_module("openvino")
    except ImportError:
        header.append("openvino: not importable (pip install openvino to add its rows)")
        return []
    core = ov.Core()
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    header.append(f"openvino {ov.__version__}: CPU capabilities {' '.join(caps)}")

    def compiled(path: Path, precision: str, streams: int, nthreads: int) -> tuple[Any, float]:
        t0 = time.perf_counter()
        cm = core.compile_model(
            core.read_model(str(path)),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": nthreads,
                "NUM_STREAMS": streams,
                "INFERENCE_PRECISION_HINT": precision,
            },
        )
        load = time.perf_counter() - t0
        got = cm.get_property("INFERENCE_PRECISION_HINT")
        header.append(f"openvino {path.name} asked {precision}: inference precision {got}")
        return cm, load

    def runner(cm: Any) -> Embed:
        req = cm.create_infer_request()

        def embed(x: Array) -> Array:
            return np.array(req.infer({0: x})[0], dtype=np.float32)

        return embed

    out = []
    for name, path, prec in (
        ("OV fp32", fp32, "f32"),
        ("OV bf16", fp32, "bf16"),
        ("OV int8 (trunk QDQ)", int8, "f32"),
    ):
        cm, load = compiled(path, prec, 1, threads)
        out.append(Variant(name, runner(cm), exact=prec == "f32" and path == fp32, load_s=load))
    for name, path, prec in (("OV bf16 2x1", fp32, "bf16"), ("OV int8 2x1", int8, "f32")):
        cm, load = compiled(path, prec, 2, 2)  # two streams of one thread each
        a, b = runner(cm), runner(cm)
        out.append(Variant(name, a, pair=(a, b), load_s=load))
    return out


# --------------------------------------------------------------------------- measuring


def timed(v: Variant, x: Array, pool: ThreadPoolExecutor) -> float:
    """ms per window for one call (both runners at once for a pair)."""
    t0 = time.perf_counter()
    if v.pair is None:
        v.embed(x)
        n = len(x)
    else:
        futures = [pool.submit(r, x) for r in v.pair]
        for f in futures:
            f.result()
        n = 2 * len(x)
    return (time.perf_counter() - t0) * 1e3 / n


def unit(x: Array) -> Array:
    out: Array = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="fp32 ONNX (default: seeded random ResNet34)")
    ap.add_argument("--audio", type=Path, default=AUDIO)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20, help="timed runs per variant and batch")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--calib", type=int, default=50, help="calibration windows")
    ap.add_argument("--eval", type=int, default=120, help="evaluation windows")
    ap.add_argument("--eval-exact", type=int, default=24, help="windows for same-graph rows")
    ap.add_argument("--workdir", type=Path, help="keep the models here (default: temp)")
    args = ap.parse_args()
    started = time.perf_counter()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cpu-speedups-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run(args, work, started, load_start)


def run(args: argparse.Namespace, work: Path, started: float, load_start: Sequence[float]) -> None:
    threads: int = args.threads
    header = [
        f"cpu: {cpu_name()} ({os.cpu_count()} cpus; {cpu_flags()}); "
        f"python {platform.python_version()}",
        f"onnxruntime {ort.__version__}; threads {threads}; {args.rounds} interleaved rounds",
    ]
    fp32 = args.model or save_resnet34(work / "resnet34-fp32.onnx", seed=0)

    files = sorted(args.audio.glob("*/*.flac"))
    if not files:
        raise SystemExit(f"no FLAC files under {args.audio}")
    by_speaker: dict[str, list[Path]] = {}
    for f in files:
        by_speaker.setdefault(f.parent.name, []).append(f)
    cal_files = [f for fs in by_speaker.values() for f in fs[0::2]]
    eval_files = [f for fs in by_speaker.values() for f in fs[1::2]]
    cal = evenly(speech_windows(cal_files, 300), args.calib)
    ev = evenly(speech_windows(eval_files, 150), args.eval)
    header.append(
        f"data: {len(cal)} calibration windows ({len(cal_files)} files), {len(ev)} evaluation "
        f"windows ({len(eval_files)} other files), {len(by_speaker)} speakers, T={FRAMES}"
    )

    # --- models
    t_q: dict[str, float] = {}

    def make(name: str, fn: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        fn()
        t_q[name] = time.perf_counter() - t0

    fixed = work / "resnet34-fp32-T198.onnx"
    m = onnx.load(str(fp32))
    make_dim_param_fixed(m.graph, "T", FRAMES)
    onnx.save(m, str(fixed))
    opt = work / "resnet34-fp32-optimized.onnx"
    naive: dict[str, Path] = {}

    def quantize_naive(fmt: Any, dst: Path) -> None:
        quantize_static(
            str(fp32),
            str(dst),
            Windows(cal),
            quant_format=fmt,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )

    for fmt in (QuantFormat.QOperator,):  # QDQ "all ops": same accuracy, same fused graph
        dst = naive[fmt.name] = work / f"resnet34-int8-naive-{fmt.name}.onnx"
        make(f"naive {fmt.name}", functools.partial(quantize_naive, fmt, dst))
    qdq = work / "resnet34-int8-qdq.onnx"
    qop = work / "resnet34-int8-qop.onnx"
    dyn = work / "resnet34-int8-dynamic.onnx"
    cal_batches = batches(cal, 10)
    make("trunk QDQ", lambda: quantize_int8(fp32, qdq, cal_batches))
    make("trunk QOp", lambda: quantize_int8(fp32, qop, cal_batches, quant_format="qoperator"))
    make(
        "dynamic",
        lambda: quantize_dynamic(
            str(fp32), str(dyn), op_types_to_quantize=["Conv"], weight_type=QuantType.QUInt8
        ),
    )
    header.append("quantization time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t_q.items()))

    # --- variants
    t0 = time.perf_counter()
    base_model = EmbeddingModel(fp32, registry.card(CARD), device="cpu", intra_threads=threads)
    base_load = time.perf_counter() - t0
    base = Variant(
        "fp32 baseline (EmbeddingModel: ALL, 2 thr)",
        lambda x: np.asarray(base_model.session.run(None, {INPUT: x})[0], dtype=np.float32),
        exact=True,
        load_s=base_load,
    )
    variants: list[Variant] = [base]
    fp = [
        ("fp32 spinning off", options(threads, spinning=False)),
        ("fp32 1 thread", options(1)),
        ("fp32 intra 2, inter 2, PARALLEL", options(threads, inter=2, parallel=True)),
    ]
    variants += [ort_variant(n, fp32, so, exact=True) for n, so in fp]
    variants.append(ort_pair("fp32 2x1 (2 sessions x 1 thread)", fp32, exact=True))
    ort_runner(fp32, options(threads, save_to=opt))  # writes the optimized graph
    disable = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    variants.append(
        ort_variant(
            "fp32 optimized file, reloaded", opt, options(threads, level=disable), exact=True
        )
    )
    variants.append(ort_variant("fp32 T fixed to 198", fixed, options(threads), exact=True))
    variants.append(ort_variant("int8 dynamic (ConvInteger)", dyn, options(threads)))
    for fmt_name, path in naive.items():
        variants.append(ort_variant(f"int8 static {fmt_name}, all ops", path, options(threads)))
    variants += [
        ort_variant("int8 trunk QDQ minmax (quantize_int8)", qdq, options(threads)),
        ort_variant("int8 trunk QOperator minmax", qop, options(threads)),
        ort_variant("int8 trunk QDQ, spinning off", qdq, options(threads, spinning=False)),
        ort_pair("int8 trunk QDQ 2x1", qdq),
    ]
    variants += openvino_variants(fp32, qdq, threads, header)

    # --- accuracy against the baseline
    ref = unit(np.concatenate([base.embed(b) for b in batches(ev, 8)]))
    pairs = np.triu_indices(len(ev), 1)
    ref_scores = (ref @ ref.T)[pairs]
    header.append(
        f"fp32 trial scores between evaluation windows: mean {ref_scores.mean():.3f}, "
        f"std {ref_scores.std():.3f} (random weights: embeddings cluster)"
    )
    for v in variants:
        n = args.eval_exact if v.exact else len(ev)
        e = unit(np.concatenate([v.embed(b) for b in batches(ev[:n], 8)]))
        v.cos = (e * ref[:n]).sum(axis=1)
        if n == len(ev):
            v.dscore = float(np.abs((e @ e.T)[pairs] - ref_scores).max())

    # --- speed, interleaved
    x1, x8 = ev[:1], ev[:8]
    with ThreadPoolExecutor(2) as pool:
        for v in variants:
            for _ in range(args.warmup):
                timed(v, x1, pool)
                timed(v, x8, pool)
        for r in range(args.rounds):
            k = r % len(variants)
            for v in variants[k:] + variants[:k]:
                v.b1.append(timed(v, x1, pool))
                v.b8.append(timed(v, x8, pool))

    # --- table
    def agg(v: Variant) -> float:
        return 1e3 / min(statistics.median(v.b1), statistics.median(v.b8))

    base_agg = agg(base)
    head = (
        f"{'variant':42} {'B=1 ms':>7} {'B=8 ms':>7} {'win/s':>6} {'speed-up':>8} "
        f"{'best':>5} {'cos min':>8} {'cos mean':>8} {'n':>4} {'Δscore':>7} {'load s':>6}"
    )
    lines = [head, "-" * len(head)]
    for v in variants:
        assert v.cos is not None
        lines.append(
            f"{v.name:42} {statistics.median(v.b1):7.1f} {statistics.median(v.b8):7.1f} "
            f"{agg(v):6.1f} {agg(v) / base_agg:7.2f}x {min(v.b1 + v.b8):5.1f} "
            f"{v.cos.min():8.5f} {v.cos.mean():8.5f} "
            f"{len(v.cos):4d} {'-' if np.isnan(v.dscore) else f'{v.dscore:.4f}':>7} "
            f"{v.load_s:6.2f}"
        )
    load_end = os.getloadavg()
    header.append(
        "load average (1/5/15 min): start "
        + " ".join(f"{x:.2f}" for x in load_start)
        + ", end "
        + " ".join(f"{x:.2f}" for x in load_end)
        + f"; script wall time {time.perf_counter() - started:.0f} s"
    )
    print("\n".join(header))
    print()
    print("\n".join(lines))
    print(
        "\nms = median ms per window (2x1 rows: wall time / windows of both threads); "
        "best = fastest single run (ms/window, either batch); "
        "win/s = 1000 / the lower of the two medians;\n"
        "cos = cosine to the fp32 baseline per window, over n windows; "
        "Δscore = largest change of a pairwise trial score (all n windows);\n"
        "load s = session load/compile time (for OV 2x1: one compile)."
    )


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "flags unknown"
    words = set(text.split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return " ".join(f for f in wanted if f in words) or "no AVX2"


if __name__ == "__main__":
    main()
