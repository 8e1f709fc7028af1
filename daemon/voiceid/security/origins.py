"""Which browser pages may talk to the daemon: ``Origin`` and ``Host`` checks.

Browsers attach an ``Origin`` header to WebSocket handshakes and to requests that
change something, and they do not apply the same-origin policy to WebSockets at all, so
without a check any web site the user visits could open ``ws://127.0.0.1:8765/events``
and read who is speaking. A request is allowed when:

* it has no ``Origin`` (not a browser: curl, Python clients, Home Assistant); or
* its origin is the daemon's own: the same host as the request's ``Host`` (with
  ``localhost``, ``127.0.0.0/8`` and ``::1`` counting as one host) and either the same
  port as ``Host`` (the page and the API behind one address, e.g. a reverse proxy) or
  the port of the daemon's web page (``http.port``: the page connecting to the
  WebSocket port); or
* its origin is listed in ``auth.allowed_origins`` (``scheme://host[:port]``, exactly).

``Origin: null`` (sandboxed frames, ``file://`` pages) is refused.

DNS rebinding: a page of ``evil.example`` whose name later resolves to 127.0.0.1 is
"same origin" with itself and sends ``Host: evil.example``. When the daemon runs without
tokens, :meth:`OriginPolicy.host_allowed` therefore also requires a loopback ``Host``
(or the host of an allowed origin); with tokens the rebound page has no token.

Pure: strings in, booleans out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def normalize_host(host: str) -> str:
    """Lower case, no brackets around IPv6, no trailing dot."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".")


def is_loopback(host: str) -> bool:
    """``localhost`` (and ``*.localhost``, RFC 6761), 127.0.0.0/8, ``::1``."""
    host = normalize_host(host)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def same_host(a: str, b: str) -> bool:
    """The same host name, loopback names and addresses counting as one host."""
    a, b = normalize_host(a), normalize_host(b)
    return a == b or (is_loopback(a) and is_loopback(b))


@dataclass(frozen=True, slots=True)
class Origin:
    """A parsed web origin; ``port`` is always set (the scheme's default if omitted)."""

    scheme: str
    host: str
    port: int

    @property
    def explicit_port(self) -> int | None:
        """The port, None when it is the scheme's default."""
        return None if DEFAULT_PORTS.get(self.scheme) == self.port else self.port

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = self.explicit_port
        return f"{self.scheme}://{host}" + (f":{port}" if port is not None else "")


def parse_origin(value: str) -> Origin | None:
    """``scheme://host[:port]`` (http or https, nothing else), else None."""
    value = value.strip()
    if not value or value == "null" or len(value) > 300:
        return None
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:
        return None
    scheme = url.scheme.lower()
    if scheme not in DEFAULT_PORTS or not url.hostname:
        return None
    if url.username or url.password or url.path not in ("", "/") or url.query or url.fragment:
        return None
    return Origin(scheme, normalize_host(url.hostname), port or DEFAULT_PORTS[scheme])


def parse_host(value: str | None) -> tuple[str, int | None] | None:
    """A ``Host`` header as ``(host, port or None)``; None if malformed."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > 300:
        return None
    try:
        url = urlsplit("//" + value)
        port = url.port
    except ValueError:
        return None
    if not url.hostname or url.path or url.query or url.username:
        return None
    return normalize_host(url.hostname), port


class OriginPolicy:
    """The daemon's rules for ``Origin`` and ``Host`` (module docstring)."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        origins = []
        for entry in allowed:
            origin = parse_origin(entry)
            if origin is None:
                raise ValueError(
                    f"auth.allowed_origins: {entry!r} is not an origin "
                    "(scheme://host[:port], http or https, no path)"
                )
            origins.append(origin)
        self.allowed: frozenset[Origin] = frozenset(origins)

    def allows(
        self, origin: str | None, host: str | None, *, page_ports: Collection[int] = ()
    ) -> bool:
        """May a request with these ``Origin`` and ``Host`` headers go ahead?

        ``page_ports``: the ports the daemon's own web page is served on (for the
        WebSocket server: the HTTP port; for the HTTP server: nothing more than ``Host``).
        """
        if origin is None:
            return True
        parsed = parse_origin(origin)
        if parsed is None:
            return False
        if parsed in self.allowed:
            return True
        target = parse_host(host)
        if target is None or not same_host(parsed.host, target[0]):
            return False
        if parsed.port in page_ports:
            return True
        port = target[1]
        if port is not None and port == DEFAULT_PORTS.get(parsed.scheme):
            port = None
        return parsed.explicit_port == port

    def host_allowed(self, host: str | None) -> bool:
        """Is ``Host`` a name of this machine's loopback (or of an allowed origin)?

        Used when the daemon runs without tokens (loopback only): defeats DNS rebinding.
        A request without ``Host`` is not from a browser and is allowed.
        """
        if host is None:
            return True
        target = parse_host(host)
        if target is None:
            return False
        return is_loopback(target[0]) or any(o.host == target[0] for o in self.allowed)
