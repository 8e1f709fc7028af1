"""The WebSocket source and sink: a thin asyncio adapter around :mod:`.protocol`.

Paths (see docs/protocol.md):

* ``/stream`` - one live audio stream per connection: a ``start`` text frame, then binary
  PCM frames; the stream's events come back as JSON text frames. ``stop`` ends the
  stream gracefully (the audio already sent is scored, the last events are sent, close
  1000); a close or a drop of the connection ends it at once. Either way the stream is
  closed and its final ``speaker_ended`` is published.
* ``/events`` - every stream's events (or one stream's with ``?stream=NAME``).
* anything else - HTTP 404 during the handshake.

Access (docs/security.md), checked in ``process_request`` before the upgrade when a
:class:`~voiceid.security.Security` is given: the browser ``Origin`` (403), then a token
with the scope ``stream`` on both paths, from ``Authorization: Bearer`` or ``?token=``
(401 without a valid token, 403 without the scope). Refusals are one-line plain-text
bodies, counted in ``WebSocketStats.rejected``. With TLS configured the server speaks
``wss://``.

Flow control. Each connection has a bounded subscription on the hub's bus
(``event_queue`` events) and one *pump* task that awaits ``ws.send`` for each event;
publishing never waits for a client. A client that does not read makes its pump block in
``send`` (TCP and websockets' write buffer are full), its queue fills, the bus drops the
subscription and the pump notices (it polls while a send is pending): the connection is
closed with 1008 "too slow: event queue full" and its stream is closed. Incoming audio is
bounded by ``max_size`` (one frame) and ``max_queue`` (frames buffered); the receive loop
yields after every frame so one fast client cannot starve the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import Enum
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import MultipleValuesError
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from voiceid.config import WebSocketSection
from voiceid.errors import ProtocolError
from voiceid.runtime.bus import Subscription
from voiceid.runtime.hub import Hub, LiveStream, TooManyStreams
from voiceid.security import Denied, Security
from voiceid.security.tokens import MalformedCredentials, Scope, split_query_token
from voiceid.sources.protocol import (
    Audio,
    CloseCode,
    Failure,
    Reason,
    StartMessage,
    Stop,
    StreamSession,
    event_message,
    parse_events_query,
    ready_message,
    subscribed_message,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

STREAM_PATH = "/stream"
EVENTS_PATH = "/events"
MAX_QUEUE = 16  # incoming frames buffered per connection before TCP back-pressure
CLOSE_TIMEOUT_S = 5.0  # closing handshake; then the TCP connection is dropped
FLUSH_TIMEOUT_S = 2.0  # time to send a closing stream's last events
STOP_SETTLE_S = 5.0  # after stop: time for windows still in the engine to be scored
SLOW_POLL_S = 0.2  # how often a blocked send checks whether its queue overflowed
BACKLOG_POLL_S = 0.005  # how often a throttled stream checks whether results came back
SHUTDOWN_TIMEOUT_S = FLUSH_TIMEOUT_S + CLOSE_TIMEOUT_S + 1.0
SCOPE: Scope = "stream"  # the token scope both paths need


@dataclass
class WebSocketStats:
    """Counters of the WebSocket server (for metrics)."""

    connections: int = 0  # WebSocket connections accepted (both paths)
    active: int = 0  # connections open now
    streams_opened: int = 0  # /stream connections that opened a stream
    active_streams: int = 0
    subscribers: int = 0  # /events connections accepted
    frames_in: int = 0  # binary audio frames received
    bytes_in: int = 0  # audio bytes received
    events_out: int = 0  # event messages sent (both paths)
    closed_by_client: int = 0  # connections the client closed or dropped
    throttled: int = 0  # times a stream stopped reading: too many hops awaiting results
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count

    def reject(self, reason: str) -> None:
        """Count a refused or failed connection (``not_found``, ``protocol``, ...)."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    @property
    def rejections(self) -> int:
        return sum(self.rejected.values())


class _PumpEnd(Enum):
    DRAINED = "drained"  # the subscription ended (we closed it, or the bus closed)
    TOO_SLOW = "too_slow"  # the subscription overflowed
    GONE = "gone"  # the connection closed under the pump


async def _pump(ws: ServerConnection, sub: Subscription, stats: WebSocketStats) -> _PumpEnd:
    """Send the subscription's events until it ends; never lets a blocked send hide an
    overflow (the bus drops a full subscription; we poll for that while a send waits)."""
    while True:
        event = await sub.get()
        if event is None:
            return _PumpEnd.TOO_SLOW if sub.overflowed else _PumpEnd.DRAINED
        send = asyncio.ensure_future(ws.send(event_message(event)))
        try:
            while True:
                done, _ = await asyncio.wait({send}, timeout=SLOW_POLL_S)
                if done:
                    break
                if sub.overflowed:
                    return _PumpEnd.TOO_SLOW
            send.result()
        except ConnectionClosed:
            return _PumpEnd.GONE
        finally:
            if not send.done():
                send.cancel()
        stats.events_out += 1


async def _close(ws: ServerConnection, code: int, reason: str) -> None:
    """Closing handshake, bounded: a client that does not read never lets the close frame
    out of the write buffer (``close`` would wait for the drain), so then drop TCP."""
    try:
        await asyncio.wait_for(ws.close(code, reason), CLOSE_TIMEOUT_S + 1.0)
    except TimeoutError:
        ws.transport.abort()


async def _send_last(ws: ServerConnection, message: str) -> None:
    """Send one message before closing, if the client can take it within the flush time."""
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        await asyncio.wait_for(ws.send(message), FLUSH_TIMEOUT_S)


async def _finish(task: asyncio.Task[object]) -> None:
    """Cancel ``task`` and wait for it, whatever it raises."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


class _Connection:
    """One accepted connection the server may have to shut down."""

    def __init__(self, server: WebSocketServer, ws: ServerConnection, label: str) -> None:
        self.server = server
        self.ws = ws
        self.label = label
        self.done = asyncio.Event()
        self.shutting_down = False
        self._main: asyncio.Task[object] | None = None  # the receive side, cancelled to stop
        self._tasks: list[asyncio.Task[object]] = []

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        return task

    def _cancel_tasks(self) -> None:
        """The handler is leaving (normally or not): nothing of it may outlive it."""
        for task in self._tasks:
            task.cancel()

    def shutdown(self) -> None:
        self.shutting_down = True
        if self._main is not None:
            self._main.cancel()


class _StreamConnection(_Connection):
    """A ``/stream`` connection with an open :class:`LiveStream`."""

    def __init__(
        self,
        server: WebSocketServer,
        ws: ServerConnection,
        session: StreamSession,
        start: StartMessage,
        live: LiveStream,
    ) -> None:
        super().__init__(server, ws, f"stream {start.stream}")
        self.session = session
        self.start = start
        self.live = live

    async def run(self) -> None:
        server, ws, live = self.server, self.ws, self.live
        hub, cfg, stats = server.hub, server.cfg, server.stats
        sub = hub.bus.subscribe(self.start.stream, maxsize=cfg.event_queue)
        sched = hub.stream_config.scheduler
        ending: Failure | None
        try:
            try:
                await ws.send(ready_message(self.start, hop_s=sched.hop_s, window_s=sched.window_s))
            except ConnectionClosed as exc:
                server.count_close(exc, self.label)
                return
            receive: asyncio.Task[object] = self._spawn(self._receive())
            self._main = receive
            if self.shutting_down:
                receive.cancel()
            pump = self._spawn(_pump(ws, sub, stats))
            await asyncio.wait({receive, pump}, return_when=asyncio.FIRST_COMPLETED)

            end = pump.result() if pump.done() else None
            if end is _PumpEnd.TOO_SLOW:
                await _finish(receive)
                stats.reject("too_slow")
                log.warning(
                    "%s: client too slow (event queue of %d full); dropping it",
                    self.label,
                    cfg.event_queue,
                )
                live.close()
                # no error message: the client is not reading; the close frame waits
                # behind the unread data (CLOSE_TIMEOUT_S at most, then TCP is dropped)
                await _close(ws, CloseCode.POLICY_VIOLATION, Reason.TOO_SLOW)
                return
            if end is _PumpEnd.GONE:  # closed under the pump: the receive side ends too
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(receive), CLOSE_TIMEOUT_S)
            if receive.done() and not receive.cancelled():
                result = receive.result()  # (an unexpected exception propagates: 1011)
                ending = result if isinstance(result, Failure) else None
            else:  # the bus closed (the hub is closing) or the server is shutting down
                await _finish(receive)
                ending = Failure(CloseCode.GOING_AWAY, Reason.SHUTDOWN)

            if ending is not None and ending.code == CloseCode.NORMAL:
                await self._settle(pump)  # stop is graceful: decide the audio already sent
            live.close()  # its last events (speaker_ended) go to the queue ...
            sub.close()  # ... and the pump sends them before it ends
            try:
                await asyncio.wait_for(pump, FLUSH_TIMEOUT_S)
            except TimeoutError:
                log.info("%s: last events not delivered within %g s", self.label, FLUSH_TIMEOUT_S)
            if ending is None:
                return
            if ending.code not in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
                await _send_last(ws, ending.to_json())
            await _close(ws, ending.code, ending.reason)
        finally:
            self._cancel_tasks()
            live.close()
            sub.close()

    async def _settle(self, pump: asyncio.Task[_PumpEnd]) -> None:
        """Wait (at most ``STOP_SETTLE_S``) for the windows still being embedded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_SETTLE_S
        while self.live.core.unresolved and not pump.done() and not self.shutting_down:
            if loop.time() > deadline:
                log.info(
                    "%s: %d hop(s) still unresolved at stop; closing anyway",
                    self.label,
                    self.live.core.unresolved,
                )
                return
            await asyncio.sleep(0.01)

    @property
    def _backlog(self) -> int:
        """Hops awaiting results at which reading pauses: half of what the core keeps."""
        return max(1, self.live.core.config.max_unresolved // 2)

    async def _throttle(self) -> None:
        """Back-pressure for clients that send faster than the model embeds (a file sent
        at full speed): stop reading until the backlog halves. TCP then slows the client;
        no window is given up (the core would drop the oldest at ``max_unresolved``)."""
        self.server.stats.throttled += 1
        core, low = self.live.core, self._backlog // 2
        while core.unresolved > low and not self.shutting_down and not self.live.closed:
            await asyncio.sleep(BACKLOG_POLL_S)

    async def _receive(self) -> Failure | None:
        """Feed audio until stop (→ NORMAL), a protocol error (→ its Failure) or a close
        by the client (→ None)."""
        ws, live, stats = self.ws, self.live, self.server.stats
        while True:
            try:
                message = await ws.recv()
            except ConnectionClosed as exc:
                self.server.count_close(exc, self.label)
                return None
            try:
                command = self.session.receive(message)
                if isinstance(command, Stop):
                    log.info("%s: stop received", self.label)
                    return Failure(CloseCode.NORMAL, Reason.STOPPED)
                assert isinstance(command, Audio)
                stats.frames_in += 1
                stats.bytes_in += len(command.data)
                live.feed_bytes(command.data)
                if live.core.unresolved >= self._backlog:
                    await self._throttle()
            except ProtocolError as exc:
                stats.reject("bad_audio" if isinstance(message, bytes) else "protocol")
                log.warning("%s: protocol error: %s", self.label, exc)
                return Failure.of(exc)
            except Exception:
                stats.reject("internal")
                log.exception("%s: internal error", self.label)
                return Failure(CloseCode.INTERNAL_ERROR, Reason.INTERNAL)
            await asyncio.sleep(0)  # let the pumps and the other connections run


class _EventsConnection(_Connection):
    """An ``/events`` subscriber."""

    def __init__(self, server: WebSocketServer, ws: ServerConnection, stream: str | None) -> None:
        super().__init__(server, ws, f"events {stream or '*'}")
        self.stream = stream

    async def run(self) -> None:
        server, ws = self.server, self.ws
        sub = server.hub.bus.subscribe(self.stream, maxsize=server.cfg.event_queue)
        try:
            try:
                await ws.send(subscribed_message(self.stream))
            except ConnectionClosed as exc:
                server.count_close(exc, self.label)
                return
            receive: asyncio.Task[object] = self._spawn(self._receive())
            self._main = receive
            if self.shutting_down:
                receive.cancel()
            pump = self._spawn(_pump(ws, sub, server.stats))
            await asyncio.wait({receive, pump}, return_when=asyncio.FIRST_COMPLETED)
            if pump.done():
                await _finish(receive)
                if pump.result() is _PumpEnd.TOO_SLOW:
                    server.stats.reject("too_slow")
                    log.warning("%s: client too slow; dropping it", self.label)
                    await _close(ws, CloseCode.POLICY_VIOLATION, Reason.TOO_SLOW)
                else:
                    await _close(ws, CloseCode.GOING_AWAY, Reason.SHUTDOWN)
                return
            sub.close()
            if receive.cancelled():  # shutdown: deliver what is queued, then close
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pump, FLUSH_TIMEOUT_S)
                await _close(ws, CloseCode.GOING_AWAY, Reason.SHUTDOWN)
                return
            await _finish(pump)
            failure = receive.result()
            if isinstance(failure, Failure):
                await _send_last(ws, failure.to_json())
                await _close(ws, failure.code, failure.reason)
        finally:
            self._cancel_tasks()
            sub.close()

    async def _receive(self) -> Failure | None:
        try:
            message = await self.ws.recv()
        except ConnectionClosed as exc:
            self.server.count_close(exc, self.label)
            return None
        self.server.stats.reject("protocol")
        kind = "text" if isinstance(message, str) else "binary"
        return Failure(
            CloseCode.POLICY_VIOLATION,
            f"{EVENTS_PATH} takes no messages (got a {kind} frame)",
            hint=f"send audio on {STREAM_PATH}; here only listen",
        )


class WebSocketServer:
    """Routes connections to :class:`_StreamConnection` / :class:`_EventsConnection`."""

    def __init__(
        self,
        hub: Hub,
        cfg: WebSocketSection,
        stats: WebSocketStats | None = None,
        security: Security | None = None,
    ) -> None:
        self.hub = hub
        self.cfg = cfg
        self.stats = stats if stats is not None else WebSocketStats()
        self.security = security  # None: no checks at all (tests, embedding)
        self._who: weakref.WeakKeyDictionary[ServerConnection, str] = weakref.WeakKeyDictionary()
        self._streams: set[_StreamConnection] = set()
        self._subscribers: set[_EventsConnection] = set()
        self._server: Server | None = None
        self._closing = False

    # -- handshake ----------------------------------------------------------------------
    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if self._closing:
            self.stats.reject("shutdown")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
        if url.path not in (STREAM_PATH, EVENTS_PATH):
            self.stats.reject("not_found")
            log.info("HTTP 404 for %s from %s", url.path[:200], connection.remote_address)
            return connection.respond(
                HTTPStatus.NOT_FOUND,
                f"no such path: use {STREAM_PATH} (audio in) or {EVENTS_PATH} (events out)\n",
            )
        try:
            token, query = split_query_token(url.query)
        except MalformedCredentials as exc:
            token, query = None, url.query
            if self.security is not None and not self.security.open:
                return self._deny(
                    connection,
                    Denied(401, "unauthorized", "invalid_token", f"malformed token: {exc}"),
                )
        if self.security is not None:
            denied = self._check_access(connection, request, token)
            if denied is not None:
                return self._deny(connection, denied)
        if url.path == STREAM_PATH:
            if query:
                self.stats.reject("bad_request")
                return connection.respond(
                    HTTPStatus.BAD_REQUEST,
                    f"{STREAM_PATH} takes no query parameters (but token=)\n",
                )
            return None
        try:
            parse_events_query(query)
        except ProtocolError as exc:
            self.stats.reject("bad_request")
            return connection.respond(HTTPStatus.BAD_REQUEST, f"{exc}\n")
        return None

    def _check_access(
        self, connection: ServerConnection, request: Request, token: str | None
    ) -> Denied | None:
        """Origin, then token and scope; remembers who connected (for the log)."""
        security = self.security
        assert security is not None
        denied = security.check_browser(
            _header(request, "Origin"),
            _header(request, "Host"),
            page_ports=security.page_ports(),
            what="WebSocket",
        )
        if denied is not None:
            return denied
        who = security.authorize(_header(request, "Authorization"), token, (SCOPE,))
        if isinstance(who, Denied):
            return who
        if not security.open:
            self._who[connection] = who.name
        return None

    def _deny(self, connection: ServerConnection, denied: Denied) -> Response:
        self.stats.reject(denied.reason)
        log.warning(
            "WebSocket client %s refused (%d %s): %s",
            connection.remote_address,
            denied.status,
            denied.code,
            denied.message,
        )
        response = connection.respond(HTTPStatus(denied.status), denied.line())
        for name, value in denied.headers().items():
            response.headers[name] = value
        return response

    def _label(self, ws: ServerConnection) -> str:
        """``address`` or ``address (token NAME)`` for the log."""
        who = self._who.get(ws)
        return f"{ws.remote_address} (token {who})" if who else str(ws.remote_address)

    # -- connections --------------------------------------------------------------------
    async def handler(self, ws: ServerConnection) -> None:
        stats = self.stats
        stats.connections += 1
        stats.active += 1
        try:
            url = urlsplit(ws.request.path if ws.request is not None else "")
            if url.path == EVENTS_PATH:
                try:
                    query = split_query_token(url.query)[1]
                except MalformedCredentials:  # only without tokens: ignored
                    query = ""
                await self._serve_events(ws, parse_events_query(query))
            else:
                await self._serve_stream(ws)
        except Exception:
            stats.reject("internal")
            log.exception("connection %s from %s failed", ws.id, ws.remote_address)
            await _close(ws, CloseCode.INTERNAL_ERROR, Reason.INTERNAL)
        finally:
            stats.active -= 1

    async def _fail(self, ws: ServerConnection, failure: Failure, counter: str) -> None:
        """Refuse a /stream connection before its stream opens: error message, close."""
        self.stats.reject(counter)
        log.warning(
            "stream connection from %s refused (%s): %s", ws.remote_address, counter, failure
        )
        await _send_last(ws, failure.to_json())
        await _close(ws, failure.code, failure.reason)

    def count_close(self, exc: ConnectionClosed, label: str) -> None:
        """A receive ended with the connection closed: by the client, or by websockets
        itself for a frame over ``max_size`` (1009)."""
        sent = exc.sent
        if sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG and not exc.rcvd_then_sent:
            self.stats.reject("too_big")
            log.warning("%s: frame too big, closed with 1009 (%s)", label, sent.reason)
        elif sent is None or exc.rcvd_then_sent:
            self.stats.closed_by_client += 1
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            log.info("%s: closed by the client (code %s)", label, code)

    async def _serve_stream(self, ws: ServerConnection) -> None:
        cfg, hub = self.cfg, self.hub
        session = StreamSession()
        try:
            first = await asyncio.wait_for(ws.recv(), cfg.start_timeout_s)
        except TimeoutError:
            await self._fail(
                ws,
                Failure(
                    CloseCode.POLICY_VIOLATION,
                    f"no start message within {cfg.start_timeout_s:g} s",
                    hint="send the start message right after connecting",
                ),
                "start_timeout",
            )
            return
        except ConnectionClosed as exc:
            self.count_close(exc, f"connection {ws.id}")
            return
        try:
            command = session.receive(first)
        except ProtocolError as exc:
            await self._fail(ws, Failure.of(exc), "protocol")
            return
        assert isinstance(command, StartMessage)
        start = command
        if self._closing:
            await self._fail(ws, Failure(CloseCode.GOING_AWAY, Reason.SHUTDOWN), "shutdown")
            return
        try:
            if len(self._streams) >= cfg.max_streams or len(hub.streams) >= hub.max_streams:
                raise TooManyStreams(min(cfg.max_streams, hub.max_streams))
            await hub.reserve(start.stream)  # (a worker process asks the daemon process)
        except TooManyStreams as exc:
            failure = Failure(CloseCode.TRY_AGAIN_LATER, exc.message, hint=exc.hint)
            await self._fail(ws, failure, "max_streams")
            return
        except ProtocolError as exc:
            await self._fail(ws, Failure.of(exc), "duplicate")
            return
        try:
            live = hub.open_stream(
                start.stream,
                sample_rate=start.sample_rate,
                encoding=start.encoding,
                channels=start.channels,
            )
        except ProtocolError as exc:
            await self._fail(ws, Failure.of(exc), "protocol")
            return
        conn = _StreamConnection(self, ws, session, start, live)
        self.stats.streams_opened += 1
        self.stats.active_streams += 1
        self._streams.add(conn)
        log.info(
            "stream %s: started by %s (%d Hz, %s, %d ch)",
            start.stream,
            self._label(ws),
            start.sample_rate,
            start.encoding,
            start.channels,
        )
        try:
            await conn.run()
        finally:
            self._streams.discard(conn)
            self.stats.active_streams -= 1
            conn.done.set()
            log.info(
                "stream %s: ended (%d frames, %d bytes)",
                start.stream,
                session.frames,
                session.bytes,
            )

    async def _serve_events(self, ws: ServerConnection, stream: str | None) -> None:
        if self._closing:
            await _close(ws, CloseCode.GOING_AWAY, Reason.SHUTDOWN)
            return
        conn = _EventsConnection(self, ws, stream)
        self.stats.subscribers += 1
        self._subscribers.add(conn)
        log.info("%s: subscribed from %s", conn.label, self._label(ws))
        try:
            await conn.run()
        finally:
            self._subscribers.discard(conn)
            conn.done.set()

    # -- lifecycle ----------------------------------------------------------------------
    async def serve(
        self, started: asyncio.Future[int] | None = None, sock: socket.socket | None = None
    ) -> None:
        cfg = self.cfg
        where: dict[str, Any] = (
            {"sock": sock}
            if sock is not None
            else {
                "host": cfg.host,
                "port": cfg.port,
            }
        )
        try:
            server = await serve(
                self.handler,
                **where,
                process_request=self.process_request,
                ssl=self.security.ssl_context if self.security is not None else None,
                max_size=cfg.max_message_bytes,
                max_queue=MAX_QUEUE,
                compression=None,
                close_timeout=CLOSE_TIMEOUT_S,
            )
        except BaseException as exc:
            if started is not None and not started.done():
                started.set_exception(exc)
            raise
        self._server = server
        port = int(server.sockets[0].getsockname()[1]) if server.sockets else cfg.port
        tls = self.security is not None and self.security.ssl_context is not None
        log.info("WebSocket server listening on %s://%s:%d", "wss" if tls else "ws", cfg.host, port)
        if started is not None and not started.done():
            started.set_result(port)
        try:
            await asyncio.Future()  # serve until cancelled
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """End every stream (their last events are sent), then close everything (1001)."""
        self._closing = True
        server = self._server
        streams = list(self._streams)
        for conn in streams:
            conn.shutdown()
        await _wait_done(streams, SHUTDOWN_TIMEOUT_S)
        subscribers = list(self._subscribers)
        for sconn in subscribers:
            sconn.shutdown()
        await _wait_done(subscribers, SHUTDOWN_TIMEOUT_S)
        if server is not None:
            server.close(code=CloseCode.GOING_AWAY, reason=Reason.SHUTDOWN)
            await server.wait_closed()
        log.info("WebSocket server closed (%d connections served)", self.stats.connections)


def _header(request: Request, name: str) -> str | None:
    """One header's value; repeated: "" (invalid for every check that reads it)."""
    try:
        return request.headers.get(name)
    except MultipleValuesError:
        return ""


async def _wait_done(
    conns: list[_StreamConnection] | list[_EventsConnection], timeout: float
) -> None:
    if conns:
        waits = [asyncio.ensure_future(c.done.wait()) for c in conns]
        _, pending = await asyncio.wait(waits, timeout=timeout)
        for w in pending:
            w.cancel()


async def serve_websocket(
    hub: Hub,
    cfg: WebSocketSection,
    *,
    started: asyncio.Future[int] | None = None,
    stats: WebSocketStats | None = None,
    security: Security | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve ``/stream`` and ``/events`` until cancelled.

    ``started`` gets the bound port (``cfg.port`` 0: an ephemeral one) once listening.
    ``stats`` (optional) is filled with the server's counters. On cancellation every
    stream is closed (its last events are sent to its client and to ``/events``), then
    every connection is closed with 1001, and ``CancelledError`` propagates. The hub is
    not closed: that is the caller's. ``security``: tokens, origins and TLS (None: no
    checks, plain ``ws://``; the daemon always passes one). ``sock``: a listening socket
    to accept on instead of binding ``cfg.host:cfg.port`` (worker processes share one).
    """
    await WebSocketServer(hub, cfg, stats, security).serve(started, sock)
