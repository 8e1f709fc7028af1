"""Hub: batch padding only where it pays (the GPU's static shapes)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import numpy as np

from voiceid.models.embedder import Embedder
from voiceid.models.gpu import CUDA
from voiceid.profiles.index import ProfileIndex
from voiceid.runtime.hub import EngineConfig, Hub, on_gpu
from voiceid.stream.pipeline import StreamConfig


def fake_embedder(provider: str, calls: list[int]) -> Embedder:
    card = SimpleNamespace(frontend=SimpleNamespace(num_bins=80), dim=4)

    def embed_features(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[0])
        return np.tile(np.eye(1, 4, dtype=np.float32), (x.shape[0], 1))

    model = SimpleNamespace(provider=provider)
    return cast(Embedder, SimpleNamespace(card=card, model=model, embed_features=embed_features))


def hub_for(provider: str, calls: list[int]) -> Hub:
    index = ProfileIndex.from_matrix("f", ["a"], ["a"], np.eye(1, 4, dtype=np.float32))
    return Hub(fake_embedder(provider, calls), index, StreamConfig(), EngineConfig(max_batch=16))


def test_cpu_batches_are_not_padded() -> None:
    calls: list[int] = []
    hub = hub_for("CPUExecutionProvider", calls)
    assert not on_gpu(hub.embedder) and not hub.pad_batches
    assert hub.engine.buckets is None


def test_gpu_batches_are_padded_to_buckets() -> None:
    calls: list[int] = []
    hub = hub_for(CUDA, calls)
    assert on_gpu(hub.embedder) and hub.pad_batches
    assert hub.engine.buckets == (1, 2, 4, 8, 16)
    off: Any = EngineConfig(max_batch=16, batch_buckets=False)
    index = ProfileIndex.from_matrix("f", ["a"], ["a"], np.eye(1, 4, dtype=np.float32))
    assert not Hub(fake_embedder(CUDA, calls), index, StreamConfig(), off).pad_batches
