"""MQTT sink: identity events, per-stream state and Home Assistant discovery (aiomqtt 2.x).

The thin asyncio adapter around :mod:`voiceid.sinks.mqtt_topics` (which decides what
to publish). One client task that:

* reconnects forever with capped, jittered exponential backoff
  (``reconnect_min_s`` .. ``reconnect_max_s``) and never raises on broker trouble;
* keeps at most ``buffer_events`` events while disconnected (oldest dropped, counted);
* after every (re)connect publishes ``online``, the discovery config and every retained
  stream state, then the buffered events in order (at-least-once: consumers
  de-duplicate on the event ``id``);
* on cancellation publishes ``offline`` and disconnects cleanly (the broker publishes
  the ``offline`` last will if the process dies instead); when the hub's bus closes it
  flushes what is left, says ``offline`` and returns.

Counters live in :data:`STATS` (a :class:`MqttStats`), for metrics and ``<p>/stats``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from voiceid.config import MqttSection
from voiceid.errors import ConfigError
from voiceid.runtime.bus import Subscription
from voiceid.runtime.hub import Hub
from voiceid.sinks.mqtt_topics import (
    OFFLINE,
    DeviceInfo,
    Message,
    MqttState,
    Topics,
    stats_payload,
)
from voiceid.stream.events import Event

log = logging.getLogger(__name__)

SUBSCRIPTION_QUEUE = 4096  # bus events waiting for the sink (it drains them at once)
OFFLINE_TIMEOUT_S = 2.0  # wait this long for the broker to take `offline` at shutdown
FLUSH_TIMEOUT_S = 5.0  # after the bus closes: time to publish what is left
CLIENT_TIMEOUT_S = 10.0  # an unacknowledged publish/subscribe counts as a lost connection


@dataclass
class MqttStats:
    """Counters of the MQTT sink (one per process: :data:`STATS`).

    ``published``: MQTT messages the broker took (acknowledged for qos 1).
    ``events_published``/``events_dropped``: events fully delivered / dropped from the
    buffer (oldest first) while disconnected. ``buffered``: events waiting now.
    ``reconnects``: successful connections after the first. ``connect_failures``:
    failed attempts. ``commands``: ``enabled/set`` commands applied.
    """

    connected: bool = False
    connected_since: float | None = None  # unix s
    published: int = 0
    events_published: int = 0
    events_dropped: int = 0
    buffered: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    commands: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


STATS = MqttStats()


@dataclass
class _Pending:
    """One event's messages; ``sent`` survives a reconnect so nothing is sent twice."""

    event_id: str
    messages: list[Message]
    sent: int = 0


def read_password(cfg: MqttSection, environ: Mapping[str, str] | None = None) -> str | None:
    """The broker password from ``password_file`` or systemd's credential directory.

    ``ConfigError`` when the file is missing, unreadable or empty, or when
    ``password_credential`` is set outside systemd. The password is never logged.
    """
    env = os.environ if environ is None else environ
    if cfg.password_file is not None and cfg.password_credential is not None:
        raise ConfigError(
            "mqtt: set password_file or password_credential, not both",
            hint="password_credential is for systemd LoadCredential=",
        )
    path: Path | None = None
    key = "mqtt.password_file"
    if cfg.password_file is not None:
        path = Path(cfg.password_file).expanduser()
    elif cfg.password_credential is not None:
        key = "mqtt.password_credential"
        creds = env.get("CREDENTIALS_DIRECTORY")
        if not creds:
            raise ConfigError(
                f"{key} is {cfg.password_credential!r} but $CREDENTIALS_DIRECTORY is not set",
                hint="run under systemd with LoadCredential=, or use mqtt.password_file",
            )
        path = Path(creds) / cfg.password_credential
    if path is None:
        return None
    if cfg.username is None:
        raise ConfigError(f"{key} is set but mqtt.username is not", hint="set mqtt.username")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{key}: cannot read {path}: {exc.strerror or exc}",
            hint="check the path and that the daemon's user may read it",
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text") from None
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError(f"{key}: {path} is empty", hint="write the password into it")
    return password


def tls_context(cfg: MqttSection) -> ssl.SSLContext | None:
    """The client's TLS context (None without ``tls``); bad files are ``ConfigError``."""
    files = {"ca_file": cfg.ca_file, "cert_file": cfg.cert_file, "key_file": cfg.key_file}
    if not cfg.tls:
        given = [k for k, v in files.items() if v is not None]
        if given or cfg.tls_insecure:
            raise ConfigError(
                f"mqtt: {', '.join(given) or 'tls_insecure'} set but mqtt.tls is false",
                hint="set mqtt.tls: true",
            )
        return None
    if cfg.key_file is not None and cfg.cert_file is None:
        raise ConfigError("mqtt.key_file needs mqtt.cert_file (the client certificate)")
    try:
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        if cfg.cert_file is not None:
            ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file) if cfg.key_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"mqtt TLS files: {exc}",
            hint="check mqtt.ca_file, mqtt.cert_file and mqtt.key_file (PEM)",
        ) from None
    if cfg.tls_insecure:
        ctx.check_hostname = False  # the chain is still verified
    return ctx


def backoff(attempt: int, lo: float, hi: float, rng: Callable[[], float]) -> float:
    """Delay before retry ``attempt`` (0-based): ``min(hi, lo * 2**attempt)`` jittered
    into its upper half (never below half of it, never above ``hi``)."""
    hi = max(hi, lo)
    delay = min(hi, lo * 2.0 ** min(attempt, 60))
    return delay * (0.5 + 0.5 * rng())


def _text(payload: Any) -> str:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload).decode("utf-8", "replace")
    return "" if payload is None else str(payload)


class MqttSink:
    """The client task for one hub; ``await run()`` (or :func:`run_mqtt`).

    Configuration errors (password file, TLS files) raise ``ConfigError`` from the
    constructor; nothing after that raises on broker trouble.
    """

    def __init__(
        self,
        hub: Hub,
        cfg: MqttSection,
        *,
        stats: MqttStats | None = None,
        poll_interval_s: float = 1.0,
        rng: Callable[[], float] = random.random,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.hub = hub
        self.cfg = cfg
        self.stats = STATS if stats is None else stats
        self.poll_interval_s = poll_interval_s
        self._rng = rng
        self._password = read_password(cfg, environ)
        self._tls = tls_context(cfg)
        self.client_id = cfg.client_id or f"voiceid-{socket.gethostname()}"
        self.topics = Topics(cfg.prefix, cfg.discovery_prefix, cfg.device_id)
        d, sc = hub.stream_config.decision, hub.stream_config.scheduler
        scores_every = d.scores_interval_s if math.isfinite(d.scores_interval_s) else 0.0
        name = "voiceid" if cfg.device_id == "voiceid" else f"voiceid {cfg.device_id}"
        self.state = MqttState(
            self.topics,
            threshold=d.enter,
            discovery=cfg.discovery,
            commands=cfg.commands,
            unknown_hold_s=d.end_silence_s + scores_every + 2 * sc.hop_s,
            device=DeviceInfo(name=name),
        )
        self._latest: dict[str, list[Message]] = {}  # retained state, latest per topic
        self._outbox: deque[_Pending] = deque()  # events in order
        self._inflight: _Pending | None = None
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()  # the bus closed: flush, say offline, return
        self._next_stats = 0.0
        self._drop_logged = False
        self._cancelled = False

    # -- task ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Until cancelled (``offline`` first) or the hub's bus closes (flushed)."""
        sub = self.hub.bus.subscribe(maxsize=SUBSCRIPTION_QUEUE)
        feed = asyncio.create_task(self._feed(sub), name="mqtt-feed")
        watch = asyncio.create_task(self._watch(), name="mqtt-watch")
        try:
            await self._connection_loop()
        finally:
            feed.cancel()
            watch.cancel()
            await asyncio.gather(feed, watch, return_exceptions=True)
            self.stats.connected = False
            self.stats.connected_since = None

    async def _connection_loop(self) -> None:
        failures = 0
        connections = 0
        last_error = None
        while True:
            client = self._client()
            try:
                async with client:
                    connections += 1
                    if connections > 1:
                        self.stats.reconnects += 1
                    failures, last_error = 0, None
                    log.info(
                        "MQTT connected to %s:%d as %s",
                        self.cfg.host,
                        self.cfg.port,
                        self.client_id,
                    )
                    if await self._session(client):
                        return
            except (aiomqtt.MqttError, OSError) as exc:
                if self._cancelled:  # the disconnect failed while we were being cancelled
                    raise asyncio.CancelledError from exc
                error = str(exc) or type(exc).__name__
                self.stats.last_error = error
                if self.stats.connected:
                    log.warning(
                        "MQTT connection to %s:%d lost: %s", self.cfg.host, self.cfg.port, error
                    )
                else:
                    self.stats.connect_failures += 1
                    level = logging.WARNING if error != last_error else logging.DEBUG
                    log.log(
                        level,
                        "MQTT cannot connect to %s:%d: %s (retrying)",
                        self.cfg.host,
                        self.cfg.port,
                        error,
                    )
                last_error = error
            finally:
                self._on_disconnected()
            if self._closing.is_set():
                self._drop_all("the bus closed while the broker was unreachable")
                return
            delay = backoff(failures, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rng)
            failures += 1
            await _wait_event(self._closing, delay)

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.cfg.host,
            self.cfg.port,
            username=self.cfg.username,
            password=self._password,
            identifier=self.client_id,
            logger=logging.getLogger("voiceid.sinks.mqtt.paho"),
            will=aiomqtt.Will(self.topics.available, OFFLINE, qos=1, retain=True),
            clean_session=True,
            keepalive=self.cfg.keepalive_s,
            timeout=CLIENT_TIMEOUT_S,
            tls_context=self._tls,
            tls_insecure=self.cfg.tls_insecure if self._tls is not None else None,
        )

    async def _session(self, client: aiomqtt.Client) -> bool:
        """One connection; True when finished for good (bus closed, everything sent)."""
        subs = []
        if self.cfg.discovery:
            subs += [(self.topics.ha_status, 1), (self.topics.discovery, 1)]
        if self.cfg.commands:
            subs.append((self.topics.command_filter, 1))
        reader = writer = None
        try:
            if subs:
                await client.subscribe(subs)
            self._on_connected()
            reader = asyncio.create_task(self._read(client), name="mqtt-read")
            writer = asyncio.create_task(self._write(client), name="mqtt-write")
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._cancelled = True
            if reader is not None and writer is not None:
                await _cancel(reader, writer)
            await self._say_offline(client)
            raise
        await _cancel(reader, writer)
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc
        await self._say_offline(client)
        return True

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        m = self.state.offline()
        try:
            await asyncio.wait_for(
                client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain),
                OFFLINE_TIMEOUT_S,
            )
            self.stats.published += 1
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.debug("MQTT offline not published: %s", exc)

    # -- connection bookkeeping -------------------------------------------------------------
    def _on_connected(self) -> None:
        now = time.time()
        self.stats.connected, self.stats.connected_since = True, now
        self._drop_logged = False
        self._latest.clear()
        self._sync(now)  # the snapshot below carries what it found
        self._queue_state([*self.state.snapshot(), self._stats_message(now)])
        self._next_stats = now + self.cfg.stats_interval_s

    def _on_disconnected(self) -> None:
        self.stats.connected, self.stats.connected_since = False, None
        self._latest.clear()
        if self._inflight is not None:
            self._outbox.appendleft(self._inflight)
            self._inflight = None
        self._trim()

    # -- producers (loop thread, never block) -----------------------------------------------
    async def _feed(self, sub: Subscription) -> None:
        while True:
            async for event in sub:
                self._on_event(event)
            if not sub.overflowed:
                break
            log.warning("MQTT sink fell behind the event bus; events were lost")
            sub = self.hub.bus.subscribe(maxsize=SUBSCRIPTION_QUEUE)
        self._closing.set()
        self._wake.set()

    def _on_event(self, event: Event) -> None:
        try:
            out = self.state.on_event(event)
        except Exception:  # a bug must not stop the sink
            log.exception("MQTT: cannot handle event %s", event.id)
            return
        self._queue_state(out.state)
        if out.events:
            self._outbox.append(_Pending(event.id, out.events))
            self._trim()
            self._wake.set()

    async def _watch(self) -> None:
        """Poll the hub (streams, profiles, enabled flags); stats on time."""
        while True:
            now = time.time()
            msgs = self._sync(now)
            if self.stats.connected and now >= self._next_stats:
                self._next_stats = now + self.cfg.stats_interval_s
                msgs.append(self._stats_message(now))
            self._queue_state(msgs)
            wait = self.poll_interval_s
            if self.stats.connected:
                wait = min(wait, max(0.0, self._next_stats - now))
            await asyncio.sleep(wait)

    def _sync(self, now: float) -> list[Message]:
        hub = self.hub
        try:
            return self.state.sync(hub.stream_names(), hub.scorer.names, hub.disabled, now)
        except Exception:  # a bug must not stop the sink
            log.exception("MQTT: cannot compare with the hub")
            return []

    def _stats_message(self, now: float) -> Message:
        hub = self.hub
        counters = self.stats.as_dict()
        counters.pop("last_error", None)
        doc = stats_payload(counters, hub.stream_names(), now)
        doc["hub"] = {
            "events": hub.bus.published,
            "disabled": sorted(hub.disabled),
            "skipped_hops": hub.skipped_hops,
            "failed_windows": hub.failed_windows,
            "profiles": len(hub.scorer.names),
        }
        return self.state.stats_message(doc)

    def _queue_state(self, msgs: Sequence[Message]) -> None:
        """Latest retained state per topic; dropped while disconnected (the snapshot on
        the next connection carries it)."""
        if not msgs or not self.stats.connected:
            return
        groups: dict[str, list[Message]] = {}
        for m in msgs:
            groups.setdefault(m.topic, []).append(m)
        for topic, group in groups.items():
            self._latest.pop(topic, None)
            self._latest[topic] = group
        self._wake.set()

    def _trim(self) -> None:
        cap = self.cfg.buffer_events
        if self.stats.connected:
            cap = max(cap, 1)
        dropped = 0
        while len(self._outbox) > cap:
            self._outbox.popleft()
            dropped += 1
        if dropped:
            self.stats.events_dropped += dropped
            if not self._drop_logged:
                self._drop_logged = True
                log.warning("MQTT buffer full (%d events): dropping the oldest", cap)
        self.stats.buffered = len(self._outbox)

    def _drop_all(self, why: str) -> None:
        n = len(self._outbox)
        if n:
            self.stats.events_dropped += n
            log.warning("MQTT: %d buffered events dropped: %s", n, why)
        self._outbox.clear()
        self.stats.buffered = 0

    # -- the connection's two tasks ------------------------------------------------------------
    async def _write(self, client: aiomqtt.Client) -> None:
        """Publish retained state first, then events in order; returns once the bus has
        closed and everything is out (within ``FLUSH_TIMEOUT_S``)."""
        deadline: float | None = None
        while True:
            if self._closing.is_set() and deadline is None:
                deadline = time.monotonic() + FLUSH_TIMEOUT_S
            if deadline is not None and time.monotonic() > deadline:
                self._drop_all("the bus closed and the broker is too slow")
                return
            if self._latest:
                topic = next(iter(self._latest))
                for m in self._latest.pop(topic):
                    await self._publish(client, m)
                continue
            if self._outbox:
                item = self._inflight = self._outbox.popleft()
                self.stats.buffered = len(self._outbox)
                while item.sent < len(item.messages):
                    await self._publish(client, item.messages[item.sent])
                    item.sent += 1
                self._inflight = None
                self.stats.events_published += 1
                continue
            if self._closing.is_set():
                return
            self._wake.clear()
            await self._wake.wait()

    async def _publish(self, client: aiomqtt.Client, m: Message) -> None:
        try:
            await client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
        except (ValueError, TypeError) as exc:  # paho refuses this message: skip it
            log.error("MQTT: cannot publish to %r: %s", m.topic, exc)
            return
        self.stats.published += 1

    async def _read(self, client: aiomqtt.Client) -> None:
        """Home Assistant's birth, our retained discovery, commands. Raises
        ``MqttError`` when the connection drops."""
        async for msg in client.messages:
            topic = msg.topic.value
            payload = _text(msg.payload)
            try:
                if topic == self.topics.ha_status:
                    out = self.state.on_ha_status(payload)
                    if out:
                        log.info("Home Assistant is online: discovery sent again")
                    self._queue_state(out)
                elif topic == self.topics.discovery:
                    self._queue_state(self.state.absorb_retained_discovery(payload))
                elif (cmd := self.state.parse_command(topic, payload)) is not None:
                    self.hub.set_enabled(cmd.stream, cmd.enabled)
                    self.stats.commands += 1
                    log.info(
                        "MQTT: stream %s %s", cmd.stream, "enabled" if cmd.enabled else "disabled"
                    )
                    self._queue_state(self.state.enabled_echo(cmd.stream, cmd.enabled))
            except ValueError as exc:
                log.warning("MQTT: ignored command: %s", exc)
            except Exception:
                log.exception("MQTT: cannot handle a message on %s", topic)


async def _cancel(*tasks: asyncio.Task[None]) -> None:
    """Cancel and wait. Python 3.11's ``asyncio.wait_for`` (inside aiomqtt's publish)
    can swallow a cancellation that races with its result, so cancel until done."""
    for t in tasks:
        t.cancel()
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.5)
        for t in pending:
            t.cancel()


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    """``event.wait()`` for at most ``timeout`` s (no ``wait_for``: see ``_cancel``)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()


async def run_mqtt(hub: Hub, cfg: MqttSection) -> None:
    """The daemon's MQTT task: publish ``hub``'s events until cancelled.

    Raises ``ConfigError`` at once for a bad password or TLS file; never on broker
    trouble (it reconnects forever). Counters: :data:`STATS`.
    """
    await MqttSink(hub, cfg).run()
