"""Hub: batch padding only where it pays (the GPU's static shapes); hop latency stages."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from voiceid.audio.io import load_audio
from voiceid.frontend.fbank import WESPEAKER_SPEC
from voiceid.models.embedder import Embedder
from voiceid.models.gpu import CUDA
from voiceid.profiles.index import ProfileIndex
from voiceid.runtime.hub import STAGES, EngineConfig, Hub, on_gpu
from voiceid.stream.pipeline import StreamConfig


def fake_embedder(provider: str, calls: list[int]) -> Embedder:
    card = SimpleNamespace(frontend=WESPEAKER_SPEC, dim=4)

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


def test_each_scored_hop_is_split_into_stages_that_add_up(
    speakers: dict[str, list[Path]],
) -> None:
    asyncio.run(_stages(speakers))


async def _stages(speakers: dict[str, list[Path]]) -> None:
    calls: list[int] = []
    hub = hub_for("CPUExecutionProvider", calls)
    await hub.start()
    stream = hub.open_stream("s", encoding=None)
    speech = load_audio(next(iter(speakers.values()))[0])[: 16000 * 4]
    for start in range(0, len(speech), 1600):  # 100 ms chunks
        stream.feed_samples(speech[start : start + 1600])
        await asyncio.sleep(0)
    for _ in range(200):  # the engine thread answers
        if len(hub.hop_latency_ms) >= 4:
            break
        await asyncio.sleep(0.01)
    await hub.close()
    stages = {name: list(q) for name, q in hub.stage_ms.items()}
    assert len(hub.hop_latency_ms) >= 4 and all(
        len(v) == len(hub.hop_latency_ms) for v in stages.values()
    )
    for i, total in enumerate(hub.hop_latency_ms):
        parts = [stages[name][i] for name in STAGES]
        assert all(p >= 0 for p in parts)
        assert sum(parts) == pytest.approx(total, abs=0.01)
