"""Microphone source: sounddevice (PortAudio) callback → event loop → a live stream.

The PortAudio callback runs on its own thread: it only copies the block and hands it
to the loop with ``call_soon_threadsafe``. The loop side keeps a bounded queue of
blocks; when it is full the oldest block is dropped and counted (``overflows``), so a
stalled loop never grows memory. sounddevice is imported lazily: a daemon without a
``mics:`` section runs on machines without PortAudio.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from voiceid.config import MicSection
from voiceid.errors import ConfigError
from voiceid.runtime.hub import Hub

log = logging.getLogger(__name__)


def import_sounddevice() -> Any:
    """sounddevice, or a ConfigError that says how to get PortAudio."""
    try:
        import sounddevice
    except OSError as exc:  # PortAudio library missing
        raise ConfigError(
            f"microphone support needs PortAudio: {exc}",
            hint="install it (Debian/Ubuntu: apt install libportaudio2) or remove mics: "
            "from the config",
        ) from exc
    return sounddevice


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int
    default_samplerate: float
    is_default: bool


def input_devices() -> list[InputDevice]:
    """Capture devices PortAudio knows (``voiceid devices``)."""
    sd = import_sounddevice()
    default_in = sd.default.device[0] if sd.default.device else -1
    out = []
    for i, dev in enumerate(sd.query_devices()):
        if dev["max_input_channels"] > 0:
            out.append(
                InputDevice(
                    i,
                    dev["name"],
                    int(dev["max_input_channels"]),
                    float(dev["default_samplerate"]),
                    i == default_in,
                )
            )
    return out


class BlockQueue:
    """Bounded FIFO of audio blocks on the loop side; drops the oldest when full."""

    def __init__(self, maxlen: int) -> None:
        self._blocks: deque[NDArray[np.float32]] = deque()
        self.maxlen = maxlen
        self.overflows = 0  # blocks dropped because the loop fell behind
        self.device_overflows = 0  # PortAudio input overflow flags
        self._ready = asyncio.Event()

    def push(self, block: NDArray[np.float32], device_overflow: bool = False) -> None:
        if device_overflow:
            self.device_overflows += 1
        if len(self._blocks) >= self.maxlen:
            self._blocks.popleft()
            self.overflows += 1
            if self.overflows in (1, 10, 100) or self.overflows % 1000 == 0:
                log.warning("microphone queue full: %d blocks dropped so far", self.overflows)
        self._blocks.append(block)
        self._ready.set()

    def __len__(self) -> int:
        return len(self._blocks)

    async def get(self) -> NDArray[np.float32]:
        while not self._blocks:
            self._ready.clear()
            await self._ready.wait()
        return self._blocks.popleft()


async def run_microphone(
    hub: Hub,
    cfg: MicSection,
    *,
    opened: asyncio.Future[None] | None = None,
    stream_factory: Any = None,
    queue: BlockQueue | None = None,
) -> None:
    """Capture ``cfg.device`` into a live stream named ``cfg.name`` until cancelled.

    ``stream_factory`` replaces ``sounddevice.InputStream`` (tests, other backends).
    """
    loop = asyncio.get_running_loop()
    queue = queue if queue is not None else BlockQueue(cfg.queue_blocks)
    factory = stream_factory or import_sounddevice().InputStream

    def callback(indata: NDArray[np.float32], frames: int, time: Any, status: Any) -> None:
        block = np.array(indata, dtype=np.float32, copy=True)
        loop.call_soon_threadsafe(queue.push, block, bool(status and status.input_overflow))

    try:
        pa_stream = factory(
            device=cfg.device,
            samplerate=cfg.sample_rate,
            channels=cfg.channels,
            dtype="float32",
            blocksize=cfg.sample_rate * cfg.block_ms // 1000,
            callback=callback,
        )
    except Exception as exc:  # PortAudioError, ValueError for unknown devices
        raise ConfigError(
            f"cannot open microphone {cfg.device!r} for {cfg.name!r}: {exc}",
            hint="list devices with `voiceid devices`",
        ) from exc
    live = hub.open_stream(
        cfg.name, sample_rate=cfg.sample_rate, encoding="f32le", channels=cfg.channels
    )
    try:
        with pa_stream:
            log.info("microphone %r open as stream %s", cfg.device, cfg.name)
            if opened is not None and not opened.done():
                opened.set_result(None)
            while True:
                block = await queue.get()
                live.feed_bytes(np.ascontiguousarray(block, dtype="<f4").tobytes())
    finally:
        live.close()
        log.info("microphone %s closed (%d blocks dropped)", cfg.name, queue.overflows)
