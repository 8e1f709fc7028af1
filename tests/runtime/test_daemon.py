"""The daemon under a fake systemd: ``voiceid run`` as a subprocess with ``NOTIFY_SOCKET``
bound by the test and a short ``WATCHDOG_USEC``; readiness, watchdog pings, SIGHUP reload
(a profile enrolled while running is identified on a stream that stays open), SIGTERM.
In-process: config reload, failed reload, the engine watch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voiceid.audio.io import load_audio
from voiceid.config import load_settings
from voiceid.models.embedder import Embedder
from voiceid.profiles.model import Utterance
from voiceid.profiles.store import ProfileStore
from voiceid.runtime.daemon import Daemon, EngineWatch
from voiceid.stream.engine import EngineStats

SCRIPT = Path(sys.executable).parent / "voiceid"
FRAME = 3200  # 100 ms of s16le


def write_config(path: Path, db: Path, **overrides: Any) -> Path:
    cfg: dict[str, Any] = {
        "model": {"name": "resemblyzer-ge2e", "device": "cpu", "threads": 1, "fetch": False},
        "db": str(db),
        "engine": {"max_batch": 4},
        "websocket": {"host": "127.0.0.1", "port": 0},
        "http": {"enabled": False},  # the HTTP server is tested on its own
        "stdout_events": False,
        "log": {"level": "INFO"},
    }
    for key, value in overrides.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path.write_text(yaml.safe_dump(cfg))
    return path


def pcm16(x: np.ndarray) -> bytes:
    return bytes((np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())


class Notifications:
    """A fake systemd: a datagram socket in the abstract namespace, read by a thread."""

    def __init__(self) -> None:
        self.address = f"@voiceid-test-{secrets.token_hex(6)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.cond = threading.Condition()
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.running:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.split("\n") if "=" in line)
            with self.cond:
                self.messages.append((time.monotonic(), fields))
                self.cond.notify_all()

    def wait(self, check: Callable[[list[dict[str, str]]], bool], timeout: float) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: check([m for _, m in self.messages]), timeout)
        assert ok, f"timed out; got {[m for _, m in self.messages]}"

    def count(self, key: str) -> int:
        with self.cond:
            return sum(key in m for _, m in self.messages)

    def kinds(self) -> list[str]:
        """READY/WATCHDOG/RELOADING/STOPPING in arrival order (STATUS-only left out)."""
        keys = ("READY", "WATCHDOG", "RELOADING", "STOPPING")
        with self.cond:
            return [next(k for k in keys if k in m) for _, m in self.messages if set(keys) & set(m)]

    def last_status(self) -> str:
        with self.cond:
            return next(m["STATUS"] for _, m in reversed(self.messages) if "STATUS" in m)

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()


@pytest.fixture()
def notifications() -> Iterator[Notifications]:
    n = Notifications()
    yield n
    n.close()


def squash(kinds: list[str]) -> list[str]:
    """Consecutive repeats collapsed: READY WATCHDOG WATCHDOG -> READY WATCHDOG."""
    return [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]


@pytest.mark.slow
def test_real_daemon_ready_watchdog_reload_stop(
    tmp_path: Path,
    model_home: Path,
    notifications: Notifications,
    speakers: dict[str, list[Path]],
    ge2e_embedder: Embedder,
) -> None:
    db = tmp_path / "profiles.db"
    config = write_config(tmp_path / "config.yaml", db)
    name = sorted(speakers)[0]
    files = speakers[name]
    env = {
        **os.environ,
        "NOTIFY_SOCKET": notifications.address,
        "WATCHDOG_USEC": "400000",  # ping every 0.2 s
        "VOICEID_HOME": str(model_home),
    }
    env.pop("WATCHDOG_PID", None)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(SCRIPT), "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        notifications.wait(lambda ms: any("READY" in m for m in ms), 60)
        print(f"READY after {time.monotonic() - t0:.2f} s")
        status = notifications.last_status()
        assert status.startswith("ready: 0 profiles"), status
        port_match = re.search(r"websocket:(\d+)", status)
        assert port_match, status
        port = int(port_match.group(1))
        notifications.wait(lambda ms: sum("WATCHDOG" in m for m in ms) >= 3, 10)

        held_out = pcm16(np.concatenate([load_audio(f) for f in files[3:6]]))
        enroll = [ge2e_embedder.embed(load_audio(f)) for f in files[:3]]

        async def session() -> list[dict[str, Any]]:
            messages: list[dict[str, Any]] = []
            async with connect(f"ws://127.0.0.1:{port}/stream", compression=None) as ws:
                await ws.send(json.dumps({"type": "start", "stream": "room", "sample_rate": 16000}))
                assert json.loads(await ws.recv())["type"] == "ready"

                async def read() -> None:
                    with contextlib.suppress(ConnectionClosed):
                        async for raw in ws:
                            messages.append(json.loads(raw))

                reader = asyncio.create_task(read())
                for i in range(0, 16000 * 2 * 3, FRAME):  # 3 s before the reload
                    await ws.send(held_out[i : i + FRAME])
                # enroll while the daemon runs, then SIGHUP
                with ProfileStore.open(db) as store:
                    store.add(
                        "alice",
                        ge2e_embedder.fingerprint,
                        ge2e_embedder.card.name,
                        [Utterance(e, 3.0, "test") for e in enroll],
                    )
                proc.send_signal(signal.SIGHUP)
                await asyncio.to_thread(
                    notifications.wait,
                    lambda ms: (
                        any("RELOADING" in m for m in ms)
                        and "READY" in ms[-1]
                        and ms[-1].get("STATUS", "").startswith("ready: 1 profiles")
                    ),
                    15,
                )
                # the same connection, after the reload: the new profile is recognised
                for i in range(16000 * 2 * 3, len(held_out), FRAME):
                    await ws.send(held_out[i : i + FRAME])
                    await asyncio.sleep(0.01)
                    if any(m.get("name") == "alice" for m in messages):
                        break
                await ws.send(json.dumps({"type": "stop"}))
                await asyncio.wait_for(reader, 15)
                assert ws.close_code == 1000, (ws.close_code, ws.close_reason)
            return messages

        messages = asyncio.run(asyncio.wait_for(session(), 60))
        started = [m for m in messages if m["type"] == "speaker_started"]
        assert started and started[0]["name"] == "alice", messages
        assert notifications.count("RELOADING") == 1

        watchdogs = notifications.count("WATCHDOG")
        notifications.wait(lambda ms: sum("WATCHDOG" in m for m in ms) >= watchdogs + 2, 5)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        _, err = proc.communicate()
        assert rc == 0, err
        notifications.wait(lambda ms: any("STOPPING" in m for m in ms), 5)
        order = squash(notifications.kinds())
        # READY after warm-up, pings, RELOADING -> READY, pings, STOPPING last
        assert order[0] == "READY", order
        assert order[-1] == "STOPPING", order
        assert order.index("RELOADING") > order.index("WATCHDOG"), order
        reloaded = order.index("RELOADING") + 1
        if order[reloaded] == "WATCHDOG":  # a ping may come while the profiles load
            reloaded += 1
        assert order[reloaded] == "READY", order
        assert "WATCHDOG" in order[reloaded:], order  # pings go on after the reload
        assert order.count("STOPPING") == 1
        assert "warmed up" in err
        assert "reloaded: 1 profiles" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- in-process -------------------------------------------------------------------------
def test_config_reload_applies_decision_and_log_level(
    tmp_path: Path, model_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "profiles.db"
    config = write_config(tmp_path / "config.yaml", db, decision={"threshold": 0.6})

    async def main() -> None:
        daemon = Daemon(load_settings(config), config_path=config)
        task = asyncio.create_task(daemon.run())
        while not daemon.ready:
            await asyncio.sleep(0.02)
            assert not task.done(), task.exception()
        hub = daemon.hub
        assert hub is not None
        assert hub.stream_config.decision.enter == pytest.approx(0.6)
        old_stream = hub.open_stream("kept")

        write_config(
            config,
            db,
            decision={"threshold": 0.8, "alpha": 0.25},
            log={"level": "WARNING"},
            websocket={"port": 9},  # not reloadable: warned about
        )
        daemon.request_reload()
        while daemon.reloads < 1:
            await asyncio.sleep(0.02)
        assert hub.stream_config.decision.enter == pytest.approx(0.8)
        assert hub.stream_config.decision.alpha == pytest.approx(0.25)
        assert daemon.settings.websocket.port == 0  # the running server is kept
        assert hub.streams["kept"] is old_stream  # open streams are untouched
        assert old_stream.core.config.decision.enter == pytest.approx(0.6)
        import logging

        assert logging.getLogger().level == logging.WARNING

        config.write_text("decision: [not, a, mapping")  # broken: keep everything
        assert await daemon.reload(daemon.app, hub) is False  # type: ignore[arg-type]
        assert daemon.reloads == 1
        assert hub.stream_config.decision.enter == pytest.approx(0.8)

        daemon.stop()
        await asyncio.wait_for(task, 20)

    root = __import__("logging").getLogger()
    level = root.level
    caplog.set_level("INFO")
    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        root.setLevel(level)
    assert "need a restart" in caplog.text and "websocket" in caplog.text
    assert "reload failed" in caplog.text


def _stats(batches: int, pending: int) -> EngineStats:
    return EngineStats(batches, batches, 0, 0, 0, 0, pending, 1.0, 1)


def test_engine_watch() -> None:
    w = EngineWatch(stall_s=10)
    assert w.check(_stats(0, 0), 0.0) is None
    assert w.check(_stats(0, 5), 1.0) is None  # queued, waiting for the first batch
    assert w.check(_stats(0, 5), 10.5) is None  # 9.5 s: not yet
    problem = w.check(_stats(0, 5), 11.5)
    assert problem is not None and "stuck" in problem
    assert w.check(_stats(1, 5), 12.0) is None  # progress again
    assert w.check(_stats(1, 0), 100.0) is None  # idle is healthy
    assert w.check(_stats(1, 3), 101.0) is None
    assert w.check(_stats(1, 3), 111.5) is not None


def test_watchdog_pings_stop_while_the_engine_is_stuck(
    tmp_path: Path, model_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path / "config.yaml", tmp_path / "profiles.db")
    n = Notifications()
    monkeypatch.setenv("NOTIFY_SOCKET", n.address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    async def main() -> None:
        daemon = Daemon(load_settings(config), stall_s=0.3)
        task = asyncio.create_task(daemon.run())
        while not daemon.ready:
            await asyncio.sleep(0.02)
        hub = daemon.hub
        assert hub is not None
        await asyncio.to_thread(n.wait, lambda ms: sum("WATCHDOG" in m for m in ms) >= 2, 5)
        stuck = EngineStats(7, 7, 0, 0, 0, 0, 5, 1.0, 1)  # windows queued, no progress
        hub.engine.stats = lambda: stuck  # type: ignore[method-assign]
        await asyncio.to_thread(n.wait, lambda ms: "stuck" in ms[-1].get("STATUS", ""), 5)
        pings = n.count("WATCHDOG")
        await asyncio.sleep(0.5)
        assert n.count("WATCHDOG") == pings  # silent: systemd would restart us
        del hub.engine.stats  # healthy again
        await asyncio.to_thread(n.wait, lambda ms: sum("WATCHDOG" in m for m in ms) > pings, 5)
        daemon.stop()
        await asyncio.wait_for(task, 20)

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        n.close()
    assert squash(n.kinds())[-1] == "STOPPING"


def test_busy_port_is_a_one_line_error(tmp_path: Path, model_home: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(
            tmp_path / "config.yaml", tmp_path / "profiles.db", websocket={"port": port}
        )
        proc = subprocess.run(
            [str(SCRIPT), "run", "--config", str(config)],
            env={**os.environ, "VOICEID_HOME": str(model_home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1  # restartable (2 would be a config error)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("voiceid: error: websocket: cannot listen on"), proc.stderr
    assert "address already in use" in last
    assert "Traceback" not in proc.stderr
