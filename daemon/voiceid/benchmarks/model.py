"""Model-only speed: latency and throughput of the ONNX model over batch sizes and window lengths.

Inputs are random features of the model's shape (speed does not depend on values).
Times are medians of ``repeats`` runs after ``warmup`` runs, wall clock (perf_counter).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from voiceid.frontend.base import FrontEndSpec
from voiceid.models.inference import EmbeddingModel


@dataclass(frozen=True)
class ModelTiming:
    model: str
    provider: str
    batch: int
    window_s: float
    frames: int
    median_ms: float  # per batch
    p90_ms: float  # per batch
    ms_per_window: float
    windows_per_s: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def frames_for(window_s: float, spec: FrontEndSpec) -> int:
    """Frames the front-end makes from ``window_s`` seconds of audio."""
    samples = round(window_s * spec.sample_rate)
    if spec.kind == "kaldi_fbank":  # snip_edges: only whole frames
        return 1 + (samples - spec.frame_length) // spec.frame_shift
    return 1 + samples // spec.frame_shift  # centred frames (librosa center=True)


def time_model(
    model: EmbeddingModel,
    *,
    batch: int,
    window_s: float,
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
) -> ModelTiming:
    spec = model.card.frontend
    frames = frames_for(window_s, spec)
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((batch, frames, spec.num_bins)).astype(np.float32)
    if spec.kind == "mel_power":
        feats = (np.abs(feats) * 1e-3).astype(np.float32)  # power spectra are non-negative
    for _ in range(warmup):
        model.embed(feats)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.embed(feats)
        runs.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(runs)
    p90 = sorted(runs)[max(0, round(0.9 * len(runs)) - 1)]
    return ModelTiming(
        model=model.card.name,
        provider=model.provider,
        batch=batch,
        window_s=window_s,
        frames=frames,
        median_ms=round(med, 3),
        p90_ms=round(p90, 3),
        ms_per_window=round(med / batch, 3),
        windows_per_s=round(batch * 1e3 / med, 1),
    )
