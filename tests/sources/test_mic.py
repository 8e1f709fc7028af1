"""Microphone source: PortAudio's callback thread -> loop -> live stream, with bounded queues.

A stand-in for ``sounddevice.InputStream`` drives the real callback from its own thread
(as PortAudio does) with real speech in 20 ms blocks; the hub, front-end, model and
decisions are the real ones.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from voiceid.audio.io import load_audio
from voiceid.config import MicSection, Settings
from voiceid.errors import ConfigError
from voiceid.models.embedder import Embedder
from voiceid.profiles.index import ProfileIndex
from voiceid.profiles.model import centroid
from voiceid.runtime.daemon import stream_config
from voiceid.runtime.hub import EngineConfig, Hub
from voiceid.sources.mic import BlockQueue, input_devices, run_microphone


class FakeInputStream:
    """Calls ``callback(indata, frames, time, status)`` from a thread, like PortAudio."""

    def __init__(self, audio: np.ndarray, *, pace_s: float = 0.0, **kw: Any) -> None:
        self.kw = kw
        self.audio = audio
        self.pace_s = pace_s
        self.block = kw["blocksize"]
        self.callback = kw["callback"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.done = threading.Event()

    def _run(self) -> None:
        status = SimpleNamespace(input_overflow=False)
        for i in range(0, len(self.audio) - self.block + 1, self.block):
            if self._stop.is_set():
                return
            block = self.audio[i : i + self.block].reshape(-1, 1)
            self.callback(block, self.block, None, status)
            if self.pace_s:
                time.sleep(self.pace_s)
        self.done.set()

    def __enter__(self) -> FakeInputStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def test_microphone_stream_names_the_enrolled_speaker(
    speakers: dict[str, list[Path]], ge2e_embedder: Embedder
) -> None:
    spk = sorted(speakers)[0]
    cent = centroid([ge2e_embedder.embed(load_audio(f)) for f in speakers[spk][:3]])
    index = ProfileIndex.from_matrix(ge2e_embedder.fingerprint, [spk], ["0" * 32], cent[None])
    audio = load_audio(speakers[spk][5])[: 6 * 16000]
    made: list[FakeInputStream] = []

    def factory(**kw: Any) -> FakeInputStream:
        made.append(FakeInputStream(audio, pace_s=0.001, **kw))
        return made[-1]

    async def main() -> list[dict[str, Any]]:
        hub = Hub(ge2e_embedder, index, stream_config(Settings(), 0.70), EngineConfig(max_batch=4))
        await hub.start()
        sub = hub.bus.subscribe()
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = BlockQueue(10_000)
        cfg = MicSection(name="kitchen", device="fake", block_ms=20)
        task = asyncio.create_task(
            run_microphone(hub, cfg, opened=opened, stream_factory=factory, queue=queue)
        )
        await opened
        assert made[0].kw["samplerate"] == 16000 and made[0].kw["blocksize"] == 320
        while not made[0].done.is_set():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the last blocks and windows
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await hub.close()
        assert queue.overflows == 0 and "kitchen" not in hub.streams
        return [e.to_dict() async for e in sub]

    events = asyncio.run(asyncio.wait_for(main(), 60))
    named = [e for e in events if e["type"] == "speaker_started"]
    assert named and named[0]["name"] == spk and named[0]["stream"] == "kitchen", events
    assert events[-1]["type"] == "speaker_ended" and events[-1]["reason"] == "closed"


def test_block_queue_drops_the_oldest_and_counts() -> None:
    async def main() -> tuple[int, list[float]]:
        q = BlockQueue(3)
        for i in range(5):
            q.push(np.full(4, float(i), np.float32), device_overflow=(i == 4))
        got = [float((await q.get())[0]) for _ in range(3)]
        assert q.device_overflows == 1
        return q.overflows, got

    overflows, got = asyncio.run(main())
    assert overflows == 2 and got == [2.0, 3.0, 4.0]


def test_unknown_device_is_a_clear_config_error(ge2e_embedder: Embedder) -> None:
    def factory(**kw: Any) -> Any:
        raise ValueError("No input device matching 'nope'")

    async def main() -> None:
        index = ProfileIndex(ge2e_embedder.fingerprint)
        hub = Hub(ge2e_embedder, index, stream_config(Settings(), 0.70), EngineConfig(max_batch=1))
        with pytest.raises(ConfigError, match="voiceid devices"):
            await run_microphone(hub, MicSection(device="nope"), stream_factory=factory)
        assert hub.streams == {}

    asyncio.run(main())


def test_devices_lists_what_portaudio_has() -> None:
    try:
        devices = input_devices()
    except ConfigError as exc:  # no PortAudio library: the error says how to get it
        assert "libportaudio2" in str(exc)
        return
    for d in devices:  # none on a machine without sound cards; each one well-formed
        assert d.channels > 0 and d.default_samplerate > 0 and d.name
