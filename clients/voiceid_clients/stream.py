"""Stream audio to a voiceid daemon over WebSocket ``/stream`` and print its events.

    python -m voiceid_clients.stream speech.flac                 # in real time
    python -m voiceid_clients.stream --speed 0 a.wav b.wav       # as fast as possible
    python -m voiceid_clients.stream --mic --stream kitchen      # the microphone (Ctrl-C)

Protocol: docs/protocol.md (``start`` -> ``ready`` -> binary PCM -> ``stop``). Files are
read with soundfile (WAV, FLAC, OGG, MP3, ...) and sent as 16-bit PCM at their own rate
and channel count: the daemon resamples and mixes down. Exit status: 0 when the stream
ended normally, 1 when the daemon refused or dropped it, 2 for bad arguments or files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from voiceid_clients import format_event

DEFAULT_URL = "ws://127.0.0.1:8765"
STREAM_NAME_HELP = "1-64 characters of A-Z a-z 0-9 _ . -"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m voiceid_clients.stream",
        description="Stream audio files (or the microphone) to a voiceid daemon over "
        "WebSocket and print who is speaking.",
    )
    p.add_argument(
        "files", nargs="*", metavar="FILE", help="audio files, streamed one after another"
    )
    p.add_argument(
        "--url",
        default=DEFAULT_URL,
        help=f"the daemon's WebSocket server (default {DEFAULT_URL}); /stream is appended",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("VOICEID_TOKEN"),
        help="API token with the stream scope (default: $VOICEID_TOKEN)",
    )
    p.add_argument("--stream", default="cli", help=f"stream name ({STREAM_NAME_HELP})")
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="1 = real time (default), 2 = twice as fast, 0 = as fast as possible",
    )
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per frame (default 100)")
    p.add_argument("--no-scores", action="store_true", help="hide the periodic scores events")
    p.add_argument("--json", action="store_true", help="print each event as received (JSON)")
    p.add_argument("--mic", action="store_true", help="stream the microphone until Ctrl-C")
    p.add_argument("--device", default=None, help="microphone (sounddevice name or index)")
    p.add_argument("--rate", type=int, default=16000, help="microphone sample rate (Hz)")
    args = p.parse_args(argv)
    if bool(args.files) == bool(args.mic):
        p.error("give audio FILEs or --mic (one of them)")
    if args.speed < 0:
        p.error("--speed must be >= 0")
    if not 10 <= args.chunk_ms <= 5000:
        p.error("--chunk-ms must be between 10 and 5000")
    return args


def auth(args: argparse.Namespace) -> dict[str, str]:
    """The bearer header for the daemon's token (none when no token is given)."""
    return {"Authorization": f"Bearer {args.token}"} if args.token else {}


def stream_url(url: str) -> str:
    base = url.rstrip("/")
    return base if base.endswith("/stream") else base + "/stream"


def read_files(paths: Sequence[str]) -> tuple[np.ndarray, int]:
    """int16 frames [n, channels] of the files, concatenated (same rate and channels)."""
    import soundfile as sf

    parts: list[np.ndarray] = []
    rate = channels = 0
    for path in paths:
        try:
            data, sr = sf.read(path, dtype="int16", always_2d=True)
        except (OSError, RuntimeError, sf.LibsndfileError) as exc:
            raise SystemExit(f"stream: error: cannot read {path}: {exc}") from None
        if parts and (sr != rate or data.shape[1] != channels):
            raise SystemExit(
                f"stream: error: {path} is {sr} Hz / {data.shape[1]} ch, the first file "
                f"{rate} Hz / {channels} ch: stream them separately"
            )
        rate, channels = int(sr), int(data.shape[1])
        parts.append(data)
    return np.concatenate(parts), rate


class Printer:
    """Prints the events of the stream; remembers an error message from the daemon."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.error: str | None = None
        self.events = 0

    def handle(self, message: str | bytes) -> None:
        event: dict[str, Any] = json.loads(message)
        kind = event.get("type")
        if kind == "error":
            hint = event.get("hint")
            self.error = str(event.get("message")) + (f" ({hint})" if hint else "")
            return
        self.events += 1
        if self.args.no_scores and kind == "scores":
            return
        print(json.dumps(event) if self.args.json else format_event(event), flush=True)

    async def run(self, ws: ClientConnection) -> int:
        try:
            async for message in ws:
                self.handle(message)
        except ConnectionClosed as exc:
            return self.closed(
                exc.rcvd.code if exc.rcvd else 1006, exc.rcvd.reason if exc.rcvd else ""
            )
        rcvd = ws.close_code
        return self.closed(rcvd if rcvd is not None else 1000, ws.close_reason or "")

    def closed(self, code: int, reason: str) -> int:
        if code == 1000:
            return 0
        text = self.error or reason or "connection lost"
        print(f"stream: error: closed {code}: {text}", file=sys.stderr)
        return 1


async def _start(ws: ClientConnection, name: str, rate: int, channels: int) -> str | None:
    """Send ``start``; None when ready, else the daemon's error message."""
    start = {"type": "start", "stream": name, "sample_rate": rate, "encoding": "pcm_s16le"}
    start["channels"] = channels
    await ws.send(json.dumps(start))
    try:
        reply = json.loads(await ws.recv())
    except ConnectionClosed as exc:
        return exc.rcvd.reason if exc.rcvd else "connection closed"
    if reply.get("type") == "ready":
        return None
    hint = reply.get("hint")
    return str(reply.get("message", reply)) + (f" ({hint})" if hint else "")


async def stream_files(args: argparse.Namespace) -> int:
    audio, rate = read_files(args.files)
    chunk = max(1, rate * args.chunk_ms // 1000)
    async with connect(
        stream_url(args.url), compression=None, max_size=None, additional_headers=auth(args)
    ) as ws:
        refused = await _start(ws, args.stream, rate, audio.shape[1])
        if refused is not None:
            print(f"stream: error: {refused}", file=sys.stderr)
            return 1
        printer = Printer(args)
        reader = asyncio.create_task(printer.run(ws))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with contextlib.suppress(ConnectionClosed):
            for k, i in enumerate(range(0, len(audio), chunk)):
                if args.speed > 0:
                    due = t0 + k * (chunk / rate) / args.speed
                    await asyncio.sleep(max(0.0, due - loop.time()))
                await ws.send(np.ascontiguousarray(audio[i : i + chunk]).tobytes())
            await ws.send(json.dumps({"type": "stop"}))
        code = await reader
    if not args.json:
        print(
            f"-- {len(audio) / rate:.1f} s of audio sent, {printer.events} events", file=sys.stderr
        )
    return code


async def stream_mic(args: argparse.Namespace) -> int:
    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:
        print(
            f"stream: error: no microphone support ({exc}); pip install sounddevice",
            file=sys.stderr,
        )
        return 2
    loop = asyncio.get_running_loop()
    blocks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=100)

    def callback(indata: Any, frames: int, time: Any, status: Any) -> None:
        data = bytes(indata)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_offer, blocks, data)

    device = int(args.device) if args.device is not None and args.device.isdigit() else args.device
    async with connect(
        stream_url(args.url), compression=None, max_size=None, additional_headers=auth(args)
    ) as ws:
        refused = await _start(ws, args.stream, args.rate, 1)
        if refused is not None:
            print(f"stream: error: {refused}", file=sys.stderr)
            return 1
        printer = Printer(args)
        reader = asyncio.create_task(printer.run(ws))
        print(f"-- streaming the microphone as {args.stream!r}; Ctrl-C stops", file=sys.stderr)
        with sd.RawInputStream(
            samplerate=args.rate,
            channels=1,
            dtype="int16",
            blocksize=args.rate * args.chunk_ms // 1000,
            device=device,
            callback=callback,
        ):
            try:
                while not reader.done():
                    await ws.send(await blocks.get())
            except (asyncio.CancelledError, KeyboardInterrupt, ConnectionClosed):
                pass
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({"type": "stop"}))
        return await reader


def _offer(queue: asyncio.Queue[bytes], data: bytes) -> None:
    if queue.full():
        queue.get_nowait()  # drop the oldest block rather than fall behind
    queue.put_nowait(data)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(stream_mic(args) if args.mic else stream_files(args))
    except KeyboardInterrupt:
        return 130
    except (OSError, InvalidHandshake, InvalidURI) as exc:
        print(f"stream: error: cannot connect to {stream_url(args.url)}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
