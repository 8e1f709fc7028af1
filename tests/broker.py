"""A real Mosquitto broker for tests: free loopback port, temp config, kill and restart.

    with Broker(tmp_path) as broker:      # or the `broker` fixture below
        broker.port                       # 127.0.0.1:<free port>
        broker.kill()                     # SIGKILL: clients see the connection drop
        broker.start()                    # same port again

``extra_config`` is appended (options after the one listener apply to it: TLS
``certfile``/``keyfile``, ``password_file`` with ``anonymous=False``).
``persistence=True`` keeps sessions (and retained messages) across a kill: the broker
saves its database on every change, so a ``clean_session=False`` subscriber gets what
was published while it was away. Skips the test when ``mosquitto`` is not installed.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

HOST = "127.0.0.1"


def mosquitto_binary() -> str:
    """Path of ``mosquitto`` (Debian puts it in /usr/sbin); skips the test without one."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if found is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; tests/run.sh does)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Broker:
    """One ``mosquitto`` process on ``HOST:port``; ``start`` again after ``kill``/``stop``."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        persistence: bool = False,
        anonymous: bool = True,
        extra_config: str = "",
    ) -> None:
        self.binary = mosquitto_binary()
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistence = persistence
        self.anonymous = anonymous
        self.extra_config = extra_config
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {HOST}",
            f"allow_anonymous {'true' if self.anonymous else 'false'}",
            f"user {getpass.getuser()}",  # as root, mosquitto would switch to 'mosquitto'
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 10000",
        ]
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.dir}/",
                "autosave_interval 1",
                "autosave_on_changes true",
            ]
        else:
            lines.append("persistence false")
        self.conf.write_text("\n".join(lines) + "\n" + self.extra_config)

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart) and wait until the port accepts connections."""
        if self.running:
            return
        self._write_config()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}): {self.tail()}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"mosquitto did not listen: {self.tail()}") from None
                time.sleep(0.01)
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye to anyone (clients just see the connection drop)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: a clean broker shutdown."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh broker per test (no persistence)."""
    with Broker(tmp_path / "broker") as b:
        yield b


@pytest.fixture()
def persistent_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker whose sessions survive ``kill()`` + ``start()``."""
    with Broker(tmp_path / "broker", persistence=True) as b:
        yield b
