"""``websocket.workers: 2``: the real daemon (``voiceid run``) with two front-end processes.

Real speech over real loopback WebSockets: streams spread over both workers are
identified with the daemon's profiles; an ``/events`` subscriber sees the streams of both
workers; a stream name is unique across workers; a profile enrolled while running reaches
the workers on SIGHUP; a worker killed with SIGKILL is restarted while the daemon and the
other worker's streams go on; SIGTERM ends every stream cleanly (1001, last events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.runtime.test_daemon import FRAME, SCRIPT, Notifications, pcm16, write_config
from voiceid.audio.io import load_audio
from voiceid.models.embedder import Embedder
from voiceid.profiles.model import Utterance
from voiceid.profiles.store import ProfileStore

pytestmark = pytest.mark.slow


class Log:
    """The daemon's stderr, read by a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        assert proc.stderr is not None
        self.stream = proc.stderr
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.stream:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait(self, pattern: str, timeout: float) -> re.Match[str]:
        rx = re.compile(pattern)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found[:] = [m for line in self.lines if (m := rx.search(line))]
            return bool(found)

        with self.cond:
            ok = self.cond.wait_for(seen, timeout)
        assert ok, f"no {pattern!r} in the log:\n" + "\n".join(self.lines[-40:])
        return found[-1]

    def worker_of(self, stream: str) -> int | None:
        rx = re.compile(rf"stream {re.escape(stream)}: started by .*\[worker=(\d+)\]")
        with self.cond:
            hits = [int(m.group(1)) for line in self.lines if (m := rx.search(line))]
        return hits[-1] if hits else None

    def text(self) -> str:
        with self.cond:
            return "\n".join(self.lines)


@pytest.fixture()
def notifications() -> Iterator[Notifications]:
    n = Notifications()
    yield n
    n.close()


def enroll(db: Path, name: str, embedder: Embedder, files: list[Path]) -> None:
    with ProfileStore.open(db) as store:
        store.add(
            name,
            embedder.fingerprint,
            embedder.card.name,
            [Utterance(embedder.embed(load_audio(f)), 3.0, "test") for f in files],
        )


def worker_pids(parent: int) -> list[int]:
    """The daemon's worker processes (not multiprocessing's resource tracker)."""
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
    pids = []
    for pid in map(int, out.split()):
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"spawn_main" in cmd:
                pids.append(pid)
    return pids


async def open_stream(port: int, name: str) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{port}/stream", compression=None)
    await ws.send(json.dumps({"type": "start", "stream": name, "sample_rate": 16000}))
    reply = json.loads(await ws.recv())
    assert reply["type"] == "ready", reply
    return ws


async def play(ws: ClientConnection, pcm: bytes, until: str) -> list[dict[str, Any]]:
    """Send ``pcm`` (a little faster than real time) until an event names ``until``."""
    got: list[dict[str, Any]] = []

    async def read() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                got.append(json.loads(raw))

    reader = asyncio.create_task(read())
    for i in range(0, len(pcm), FRAME):
        await ws.send(pcm[i : i + FRAME])
        await asyncio.sleep(0.02)
        if any(m.get("name") == until for m in got):
            break
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    return got


def test_two_workers(
    tmp_path: Path,
    model_home: Path,
    notifications: Notifications,
    speakers: dict[str, list[Path]],
    ge2e_embedder: Embedder,
) -> None:
    db = tmp_path / "profiles.db"
    alice, bob = sorted(speakers)[:2]
    enroll(db, "alice", ge2e_embedder, speakers[alice][:3])
    config = write_config(tmp_path / "config.yaml", db, websocket={"workers": 2})
    alice_pcm = pcm16(np.concatenate([load_audio(f) for f in speakers[alice][3:6]]))
    bob_pcm = pcm16(np.concatenate([load_audio(f) for f in speakers[bob][3:6]]))
    env = {**os.environ, "NOTIFY_SOCKET": notifications.address, "VOICEID_HOME": str(model_home)}
    proc = subprocess.Popen(
        [str(SCRIPT), "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = Log(proc)
    try:
        notifications.wait(lambda ms: any("READY" in m for m in ms), 90)
        port = int(log.wait(r"ready: websocket:(\d+)", 5).group(1))
        assert len(worker_pids(proc.pid)) == 2

        async def session() -> None:
            # an /events subscriber on one worker, streams on both
            events: list[dict[str, Any]] = []
            sub = await connect(f"ws://127.0.0.1:{port}/events", compression=None)

            async def follow() -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for raw in sub:
                        events.append(json.loads(raw))

            follower = asyncio.create_task(follow())
            streams: dict[str, ClientConnection] = {}
            for i in range(12):  # until both workers hold streams
                name = f"room{i}"
                streams[name] = await open_stream(port, name)
                await asyncio.to_thread(log.wait, rf"stream {name}: started", 5)
                if i >= 1 and len({log.worker_of(n) for n in streams}) == 2:
                    break
            by_worker = {n: log.worker_of(n) for n in streams}
            assert set(by_worker.values()) == {0, 1}, f"connections not spread: {by_worker}"

            # a name open on one worker is refused, whichever worker takes the connection
            first = next(iter(streams))
            for _ in range(4):
                dup = await connect(f"ws://127.0.0.1:{port}/stream", compression=None)
                await dup.send(json.dumps({"type": "start", "stream": first, "sample_rate": 16000}))
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        await dup.recv()
                assert dup.close_code == 1008, dup.close_code
                assert "already open" in (dup.close_reason or "")

            # one stream per worker plays alice: both are identified
            w0 = next(n for n, w in by_worker.items() if w == 0)
            w1 = next(n for n, w in by_worker.items() if w == 1)
            got0, got1 = await asyncio.gather(
                play(streams[w0], alice_pcm, "alice"), play(streams[w1], alice_pcm, "alice")
            )
            for got in (got0, got1):
                assert any(m["type"] == "speaker_started" and m["name"] == "alice" for m in got), (
                    got
                )
            # the subscriber saw both (one of them came from the other worker)
            await asyncio.sleep(0.5)
            seen = {m["stream"] for m in events if m.get("name") == "alice"}
            assert {w0, w1} <= seen, (seen, by_worker)

            # bob enrolled while running + SIGHUP: the workers identify him
            await asyncio.to_thread(enroll, db, "bob", ge2e_embedder, speakers[bob][:3])
            proc.send_signal(signal.SIGHUP)
            await asyncio.to_thread(log.wait, r"reloaded: 2 profiles", 15)
            await asyncio.sleep(0.5)  # the new scorer is on its way to the workers
            got = await play(streams[w1], bob_pcm, "bob")
            assert any(m.get("name") == "bob" for m in got), got

            # kill worker 0: the daemon restarts it; worker 1's streams go on
            pid0 = int(log.wait(r"worker 0 started \(pid (\d+)\)", 1).group(1))
            os.kill(pid0, signal.SIGKILL)
            await asyncio.to_thread(log.wait, r"worker 0 exited unexpectedly", 10)
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait_for(streams[w0].recv(), 10)
            assert streams[w0].close_code == 1006  # dropped with its worker
            await asyncio.to_thread(log.wait, r"worker 0 is back", 60)
            restarted = log.wait(r"worker 0 started \(pid (\d+)\)", 1)  # the last one
            assert int(restarted.group(1)) != pid0
            assert len(worker_pids(proc.pid)) == 2
            assert streams[w1].close_code is None
            survivors = [n for n, w in by_worker.items() if w == 1]
            late = await open_stream(port, "late")  # accepted by either worker
            got = await play(late, alice_pcm, "alice")
            assert any(m.get("name") == "alice" for m in got), got

            # SIGTERM: every open stream ends with 1001 after its last events
            proc.send_signal(signal.SIGTERM)
            for ws in [late, *(streams[n] for n in survivors)]:
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(ws.recv(), 20)
                assert ws.close_code == 1001, (ws.close_code, ws.close_reason)
            follower.cancel()

        asyncio.run(asyncio.wait_for(session(), 180))
        rc = proc.wait(30)
        assert rc == 0, log.text()[-3000:]
        text = log.text()
        assert "Traceback" not in text, text[-3000:]
        assert "stopped" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
