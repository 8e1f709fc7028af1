"""Model-only speed: latency and throughput of the ONNX model over batch sizes and window lengths.

Inputs are random features of the model's shape (speed does not depend on values).
Times are medians of ``repeats`` runs after ``warmup`` runs, wall clock (perf_counter),
of ``EmbeddingModel.embed``: on a GPU that includes the copy of the features to the
device and of the embeddings back. ``device_ms`` (GPU with IO binding only) is the same
run without the copies: the features already in device memory.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from voiceid.frontend.base import FrontEndSpec
from voiceid.models.gpu import StaticRunner
from voiceid.models.inference import EmbeddingModel


@dataclass(frozen=True)
class ModelTiming:
    model: str
    provider: str
    precision: str
    batch: int
    window_s: float
    frames: int
    median_ms: float  # per batch, features in host memory -> embeddings in host memory
    p90_ms: float  # per batch
    ms_per_window: float
    windows_per_s: float
    device_ms: float | None = None  # per batch, compute only (GPU + IO binding)
    device_windows_per_s: float | None = None
    static: bool = False  # ran on a static-shape session
    cuda_graph: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def frames_for(window_s: float, spec: FrontEndSpec) -> int:
    """Frames the front-end makes from ``window_s`` seconds of audio."""
    samples = round(window_s * spec.sample_rate)
    if spec.kind == "kaldi_fbank":  # snip_edges: only whole frames
        return 1 + (samples - spec.frame_length) // spec.frame_shift
    return 1 + samples // spec.frame_shift  # centred frames (librosa center=True)


def _timed(fn: Callable[[], object], repeats: int, min_s: float) -> list[float]:
    """Run ``fn`` at least ``repeats`` times and for at least ``min_s`` seconds; ms each."""
    runs: list[float] = []
    start = time.perf_counter()
    while len(runs) < repeats or (time.perf_counter() - start < min_s and len(runs) < 20 * repeats):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1e3)
    return runs


def time_model(
    model: EmbeddingModel,
    *,
    batch: int,
    window_s: float,
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
    min_time_s: float = 0.0,
    device_only: bool = True,
) -> ModelTiming:
    spec = model.card.frontend
    frames = frames_for(window_s, spec)
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((batch, frames, spec.num_bins)).astype(np.float32)
    if spec.kind == "mel_power":
        feats = (np.abs(feats) * 1e-3).astype(np.float32)  # power spectra are non-negative
    for _ in range(warmup):
        model.embed(feats)
    runs = _timed(lambda: model.embed(feats), repeats, min_time_s)
    med = statistics.median(runs)
    p90 = sorted(runs)[max(0, round(0.9 * len(runs)) - 1)]
    shape = (batch, frames, spec.num_bins)
    bound = model.runner_for(shape)
    static = isinstance(bound, StaticRunner)
    dev_ms: float | None = None
    if device_only and bound is not None:
        for _ in range(warmup):
            bound.run_device(shape)
        dev_ms = statistics.median(_timed(lambda: bound.run_device(shape), repeats, min_time_s))
    return ModelTiming(
        model=model.card.name,
        provider=model.provider,
        precision=model.precision,
        batch=batch,
        window_s=window_s,
        frames=frames,
        median_ms=round(med, 3),
        p90_ms=round(p90, 3),
        ms_per_window=round(med / batch, 4),
        windows_per_s=round(batch * 1e3 / med, 1),
        device_ms=None if dev_ms is None else round(dev_ms, 3),
        device_windows_per_s=None if dev_ms is None else round(batch * 1e3 / dev_ms, 1),
        static=static,
        cuda_graph=isinstance(bound, StaticRunner) and bound.cuda_graph,
    )


def gpu_name() -> str | None:
    """The first GPU's name and driver (``nvidia-smi``), or None without one."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.strip().splitlines()
    return lines[0].strip() if lines else None
