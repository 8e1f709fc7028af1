"""Helpers for the HTTP, browser and client tests: a real daemon in a thread, HTTP calls.

``running_daemon(db)`` starts :class:`voiceid.runtime.daemon.Daemon` (resemblyzer-ge2e
on the CPU, WebSocket and HTTP on ephemeral loopback ports) on its own event loop in a
background thread, so tests talk to it over real sockets with blocking clients
(``urllib``, subprocesses, a browser). Use it with the ``model_home`` fixture (the
model cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soundfile as sf

from voiceid.config import Settings
from voiceid.runtime.daemon import Daemon

T = TypeVar("T")
MODEL = "resemblyzer-ge2e"


@dataclass
class Running:
    daemon: Daemon
    loop: asyncio.AbstractEventLoop

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.daemon.ports['http']}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.daemon.ports['websocket']}"

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the daemon's loop thread (hub state is loop-thread only)."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def scorer_names(self) -> list[str]:
        hub = self.daemon.hub
        assert hub is not None
        return self.call(lambda: list(hub.scorer.names))


def settings(db: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "model": {"name": MODEL, "device": "cpu", "threads": 2},
        "db": str(db),
        "websocket": {"host": "127.0.0.1", "port": 0},
        "http": {"host": "127.0.0.1", "port": 0},
        "engine": {"max_batch": 8},
        "stdout_events": False,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return Settings(**base)


@contextlib.contextmanager
def running_daemon(db: Path, timeout: float = 60.0, **overrides: Any) -> Iterator[Running]:
    """A started daemon (ready: sources listening); stopped and joined on exit."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    def on_ready(d: Daemon) -> None:
        box["loop"] = asyncio.get_running_loop()
        ready.set()

    def main() -> None:
        daemon = Daemon(settings(db, **overrides), on_ready=on_ready)
        box["daemon"] = daemon
        try:
            asyncio.run(daemon.run())
        except BaseException as exc:
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=main, name="voiceid-daemon", daemon=True)
    thread.start()
    ready.wait(timeout)
    if "loop" not in box:
        thread.join(5)
        raise RuntimeError(f"daemon did not start: {box.get('error')!r}")
    running = Running(box["daemon"], box["loop"])
    try:
        yield running
    finally:
        with contextlib.suppress(RuntimeError):
            running.loop.call_soon_threadsafe(running.daemon.stop)
        thread.join(30)
        assert not thread.is_alive(), "daemon did not stop within 30 s"
        if "error" in box:
            raise box["error"]


# ------------------------------------------------------------------------------- HTTP


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        err: dict[str, Any] = self.json()["error"]
        return err


def request(
    url: str,
    method: str = "GET",
    *,
    json_body: Any = None,
    form: tuple[bytes, str] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Reply:
    hdrs = dict(headers or {})
    data: bytes | None = None
    if json_body is not None:
        data = json.dumps(json_body).encode()
        hdrs["Content-Type"] = "application/json"
    elif form is not None:
        data, hdrs["Content-Type"] = form
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def multipart(fields: dict[str, str], files: Sequence[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """multipart/form-data body + content type; files are (field, filename, data)."""
    boundary = "test-" + secrets.token_hex(12)
    out = bytearray()
    for key, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    for key, filename, data in files:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples, dtype=np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def files_of(paths: Sequence[Path]) -> list[tuple[str, str, bytes]]:
    return [("files", p.name, p.read_bytes()) for p in paths]
