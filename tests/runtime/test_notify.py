"""sd_notify over a real datagram socket: path and abstract addresses, the messages the
daemon sends, no-ops outside systemd, the watchdog interval from the environment."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from voiceid.runtime import notify


@pytest.fixture()
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"@voiceid-test-{secrets.token_hex(6)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:])
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    yield sock
    sock.close()


def recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_abstract_socket_messages(abstract_socket: socket.socket) -> None:
    assert notify.ready("ready: 2 profiles")
    assert recv(abstract_socket) == ["READY=1", "STATUS=ready: 2 profiles"]
    assert notify.watchdog()
    assert recv(abstract_socket) == ["WATCHDOG=1"]
    assert notify.status("two\nlines")
    assert recv(abstract_socket) == ["STATUS=two lines"]  # one field stays one line
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notify.reloading()
    fields = recv(abstract_socket)
    assert fields[0] == "RELOADING=1"
    assert fields[1].startswith("MONOTONIC_USEC=")
    usec = int(fields[1].split("=")[1])
    assert before <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notify.stopping()
    assert recv(abstract_socket) == ["STOPPING=1"]


def test_path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify.ready()
        assert recv(sock) == ["READY=1"]


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False
    assert notify.watchdog() is False
    assert notify.notify("READY=1", environ={}) is False


def test_unreachable_socket_does_not_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing.sock"))
    assert notify.ready() is False
    assert "sd_notify" in caplog.text
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # not supported: ignored
    assert notify.ready() is False


def test_watchdog_interval() -> None:
    pid = str(os.getpid())
    assert notify.watchdog_interval({}) is None
    assert notify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert notify.watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": pid}) == 0.2
    assert notify.watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}) is None
    assert notify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert notify.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
