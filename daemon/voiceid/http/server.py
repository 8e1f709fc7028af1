"""Serve the REST API and the web page with uvicorn inside the daemon's own event loop.

uvicorn's ``Server.serve()`` runs as one task of the daemon: no signal handlers of its
own (the daemon owns SIGTERM/SIGINT), no lifespan events (``lifespan="off"``: the daemon
has already loaded the model), and the listening socket is bound here first so that
``started`` gets the real port (``http.port: 0`` → an ephemeral one) before a client can
connect. Cancelling the task shuts the server down gracefully: the listener closes,
open connections finish their request (up to :data:`GRACEFUL_S` seconds), then
``CancelledError`` propagates.

TLS: with ``tls.cert_file`` and ``tls.key_file`` set the server speaks ``https://`` (the
files are checked before the socket is bound: a bad pair is a ``ConfigError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn

from voiceid.config import HttpSection
from voiceid.errors import ConfigError
from voiceid.security import tls_context

if TYPE_CHECKING:
    from voiceid.runtime.daemon import Daemon

log = logging.getLogger(__name__)

GRACEFUL_S = 5  # seconds open requests get to finish on shutdown
SWEEP_S = 15.0  # seconds between sweeps of expired enrollment sessions


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: the daemon has its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        return


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6); ``ConfigError`` if it fails."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"http.host {host!r} cannot be resolved: {exc.strerror}",
            hint="use an IP address such as 127.0.0.1 or 0.0.0.0",
        ) from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"http: cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="another program uses that port: set http.port (0 picks a free one), "
            "or disable the web API with http.enabled: false",
        ) from None
    return sock


async def serve_http(
    daemon: Daemon, cfg: HttpSection, *, started: asyncio.Future[int] | None = None
) -> None:
    """Serve the API of ``daemon`` on ``cfg.host:cfg.port`` until cancelled.

    ``started`` gets the bound port once connections are accepted (or the error when
    the port cannot be bound). Returning by itself is a failure: it raises.
    """
    from voiceid.http.api import create_app

    tls = daemon.settings.tls
    try:
        tls_context(tls)  # a clear ConfigError now rather than an ssl error in uvicorn
        sock = bind_socket(cfg.host, cfg.port)
    except BaseException as exc:
        if started is not None and not started.done():
            started.set_exception(exc)
        raise
    port = int(sock.getsockname()[1])
    app = create_app(daemon)
    use_tls = tls.cert_file is not None and tls.key_file is not None
    certfile = str(tls.cert_file.expanduser()) if use_tls and tls.cert_file else None
    keyfile = str(tls.key_file.expanduser()) if use_tls and tls.key_file else None
    config = uvicorn.Config(
        app,
        lifespan="off",
        ws="none",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_S,
        timeout_keep_alive=5,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="http-server")
    sweeper = asyncio.create_task(_sweep(app.state.enrollments), name="http-sweeper")
    try:
        while not server.started:  # startup is quick: the socket is already listening
            if serving.done():
                break
            await asyncio.sleep(0.005)
        if serving.done():
            serving.result()  # re-raise a startup failure
            raise RuntimeError(f"HTTP server on {cfg.host}:{port} did not start")
        scheme = "https" if use_tls else "http"
        log.info("HTTP API and web page on %s://%s:%d/", scheme, _url_host(cfg.host), port)
        if started is not None and not started.done():
            started.set_result(port)
        await asyncio.shield(serving)
        raise RuntimeError("HTTP server stopped unexpectedly")
    except BaseException as exc:
        if started is not None and not started.done():
            started.set_exception(exc)
        raise
    finally:
        sweeper.cancel()
        app.state.enrollments.clear()
        if not serving.done():
            server.should_exit = True
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(serving, timeout=GRACEFUL_S + 2)
        sock.close()
        log.info("HTTP server closed")


async def _sweep(enrollments: object) -> None:
    sweep = getattr(enrollments, "sweep", None)
    while sweep is not None:
        await asyncio.sleep(SWEEP_S)
        sweep()


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        return "localhost"
    return f"[{host}]" if ":" in host else host
