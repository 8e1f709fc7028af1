"""sd_notify(3) without libsystemd: one datagram to ``$NOTIFY_SOCKET`` per state change.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op that returns False, so the
daemon calls these unconditionally. ``@name`` is a socket in the abstract namespace.
The watchdog interval comes from ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, when set,
must be our pid), as ``sd_watchdog_enabled(3)`` reads it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(value: str) -> str | bytes:
    return "\0" + value[1:] if value.startswith("@") else value


def notify(*fields: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``KEY=VALUE`` lines (one datagram); True when it was sent."""
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET")
    if not target or not fields:
        return False
    if not target.startswith(("/", "@")):
        log.debug("NOTIFY_SOCKET %r: unsupported address (vsock?), not notifying", target)
        return False
    payload = "\n".join(f.replace("\n", " ") for f in fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(target))
            sock.sendall(payload)
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", target, exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Start-up finished (or a reload finished)."""
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def status(text: str) -> bool:
    """Free-form status line shown by ``systemctl status``."""
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    """Keep-alive ping; send at least every ``watchdog_interval()``."""
    return notify("WATCHDOG=1")


def stopping(status: str | None = None) -> bool:
    return notify("STOPPING=1", *([f"STATUS={status}"] if status else []))


def reloading(status: str | None = None) -> bool:
    """A reload began; ``READY=1`` ends it. ``MONOTONIC_USEC`` is what systemd ≥ 253 wants."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(
        "RELOADING=1", f"MONOTONIC_USEC={usec}", *([f"STATUS={status}"] if status else [])
    )


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec``), or None when off."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    try:
        if pid and int(pid) != os.getpid():
            return None
        value = int(usec)
    except ValueError:
        log.warning("ignoring bad WATCHDOG_USEC=%r / WATCHDOG_PID=%r", usec, pid)
        return None
    return value / 2e6 if value > 0 else None
