"""The clients in clients/ (run as ``python -m voiceid_clients.X`` subprocesses, with
``voiceid`` made unimportable) against a real daemon over real sockets: REST enrollment,
WebSocket streaming, and the MQTT listener with a real Mosquitto (tests/broker.py)."""

from __future__ import annotations

import ast
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import pytest

from tests.conftest import MODEL_CACHE
from tests.http import Running, running_daemon, wav_bytes

REPO = Path(__file__).resolve().parents[2]
CLIENTS = REPO / "clients"
MODULES = ("stream", "enroll", "listen_mqtt")
# Run a client module with every ``voiceid`` import failing: clients use protocols only.
RUNNER = (
    "import runpy, sys; sys.modules['voiceid'] = None; sys.argv[0] = {mod!r}; "
    "runpy.run_module({mod!r}, run_name='__main__', alter_sys=True)"
)


def client_cmd(module: str, *args: str) -> list[str]:
    mod = f"voiceid_clients.{module}"
    return [sys.executable, "-c", RUNNER.format(mod=mod), *args]


def client_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(CLIENTS)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_client(module: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        client_cmd(module, *args),
        env=client_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VOICEID_HOME", str(MODEL_CACHE))
        yield


@pytest.fixture(scope="module")
def voices(speakers: dict[str, list[Path]]) -> tuple[list[Path], list[Path]]:
    a, b = sorted(speakers)[2:4]
    return speakers[a], speakers[b]


@pytest.fixture(scope="module")
def live(env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_daemon(tmp_path_factory.mktemp("clients") / "profiles.db") as running:
        yield running


def test_clients_import_no_voiceid_and_have_help() -> None:
    for path in sorted((CLIENTS / "voiceid_clients").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] != "voiceid", f"{path.name} imports {name}"
    for module in MODULES:
        r = run_client(module, "--help", timeout=30)
        assert r.returncode == 0, r.stderr
        assert f"python -m voiceid_clients.{module}" in r.stdout


def test_enroll_then_stream(live: Running, voices: tuple[list[Path], list[Path]]) -> None:
    a, b = voices
    r = run_client("enroll", "--url", live.http, "Ada", *map(str, a[:3]))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("enrolling 'Ada': needs 3 accepted recordings")
    assert lines[1].startswith(f"[1/3] {a[0].name}: ok  speech ")
    assert lines[-1].startswith("enrolled 'Ada': 3 recordings")
    assert live.scorer_names() == ["Ada"]

    # the same name again: refused, with the daemon's message and hint
    r = run_client("enroll", "--url", live.http, "ada", str(a[3]))
    assert r.returncode == 2 and "already exists" in r.stderr

    # one-shot: too little good speech -> feedback per file, nothing written, exit 1
    silent = Path(live.daemon.settings.db or "").with_name("silence.wav")
    silent.write_bytes(wav_bytes(np.zeros(16000 * 2, np.float32)))
    r = run_client("enroll", "--url", live.http, "--one-shot", "Bea", str(silent), str(b[0]))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "silence.wav: no_voice" in r.stdout and f"{b[0].name}: ok" in r.stdout
    assert "nothing was written" in r.stderr
    assert live.scorer_names() == ["Ada"]

    # stream another recording of Ada as fast as possible: the events name her
    r = run_client("stream", "--url", live.ws, "--stream", "cli-test", "--speed", "0", str(a[6]))
    assert r.returncode == 0, r.stderr
    assert any("speaker_started" in ln and "Ada" in ln for ln in r.stdout.splitlines()), r.stdout
    assert r.stdout.splitlines()[-1].split()[2:4] == ["speaker_ended", "Ada"]
    assert "s of audio sent" in r.stderr

    # the JSON output is the protocol's events; a bad stream name is the daemon's error
    r = run_client("stream", "--url", live.ws, "--speed", "0", "--json", "--no-scores", str(b[1]))
    assert r.returncode == 0 and '"type": "' in r.stdout and '"scores"' not in r.stdout
    r = run_client("stream", "--url", live.ws, "--stream", "bad name!", str(a[6]))
    assert r.returncode == 1 and "stream" in r.stderr
    r = run_client("stream", "--url", "ws://127.0.0.1:9", str(a[6]))
    assert r.returncode == 1 and "cannot connect" in r.stderr


class Lines:
    """The lines a subprocess writes to one pipe, collected by a thread."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe: IO[str]) -> None:
        for line in pipe:
            self.lines.put(line)

    def until(self, want: str, timeout: float) -> str:
        """Everything read so far, once a line contains ``want``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if want in line:
                return "".join(self.seen)
        raise AssertionError(f"no line with {want!r} within {timeout} s: {''.join(self.seen)!r}")


def test_listen_mqtt(env: None, tmp_path: Path, voices: tuple[list[Path], list[Path]]) -> None:
    try:
        from tests.broker import Broker
    except ImportError:
        pytest.skip("tests/broker.py (the Mosquitto fixture) is not in this checkout")
    a, _ = voices
    with Broker(tmp_path / "broker") as broker:
        mqtt = {
            "enabled": True,
            "host": "127.0.0.1",
            "port": broker.port,
            "client_id": f"voiceid-test-{uuid.uuid4().hex[:8]}",
            "prefix": "vtest",
            "discovery": False,
        }
        with running_daemon(tmp_path / "p.db", mqtt=mqtt) as live:
            r = run_client("enroll", "--url", live.http, "--one-shot", "Ada", *map(str, a[:3]))
            assert r.returncode == 0, r.stderr
            args: Sequence[str] = (
                "--host", "127.0.0.1", "--port", str(broker.port), "--prefix", "vtest",
                "--speakers", "--timeout", "30",
            )  # fmt: skip
            listener = subprocess.Popen(
                client_cmd("listen_mqtt", *args),
                env=client_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert listener.stdout is not None and listener.stderr is not None
            out, err = Lines(listener.stdout), Lines(listener.stderr)
            try:
                err.until("-- listening on mqtt://", 15)
                # 4x real time: identity changes are >= 0.125 s apart, as live ones (>= a hop)
                # are; a burst faster than the broker round trip may coalesce retained state
                r = run_client(
                    "stream", "--url", live.ws, "--stream", "hall", "--speed", "4", str(a[7])
                )
                assert r.returncode == 0, r.stderr
                text = out.until("speaker_ended", 20)
                assert "hall" in text and "speaker_started" in text and "Ada" in text, text
                assert "hall  speaker = Ada" in text, text
            finally:
                listener.terminate()
                listener.wait(10)
    r = run_client("listen_mqtt", "--host", "127.0.0.1", "--port", "9", "--timeout", "5")
    assert r.returncode == 1 and "listen_mqtt: error" in r.stderr
