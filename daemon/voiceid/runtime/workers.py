"""The daemon side of ``websocket.workers``: N front-end processes, one model.

One daemon process holds a few hundred live streams: beyond that its one core is full
of per-stream work (WebSocket frames, PCM decoding, voice gate, fbank, decisions), while
the GPU idles. With ``websocket.workers: N`` the daemon process keeps the model, MQTT,
HTTP, the microphones and the profiles, and N worker processes (``runtime/remote.py``)
accept the WebSocket streams on one shared port (``SO_REUSEPORT``: the kernel spreads the
connections over the workers) and do that per-stream work.

:class:`WorkerPool`, on the daemon's event loop:

- serves embeddings: one thread per worker reads its feature blocks; one
  :class:`BlockBatcher` batches the blocks of all workers into each model call;
- relays events: each worker's events are published on the daemon's bus (MQTT, HTTP,
  metrics, stdout see every stream) and to the workers with an ``/events`` subscriber;
- keeps the registry of worker streams (``Hub.remote``): a stream name is claimed from
  it, so names stay unique across workers and the daemon's own sources;
- mirrors profile reloads and MQTT switches to every worker (it is a hub ``Follower``);
- sums the workers' counters and hop latencies into the hub and ``WebSocketStats``;
- restarts a worker that dies (capped, jittered backoff); its streams end (their
  clients see the connection drop and reconnect).

Bounded: each worker has at most ``inflight`` requests out and its own ``max_pending``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np
from numpy.typing import NDArray

from voiceid.config import Settings
from voiceid.errors import VoiceidError
from voiceid.runtime.blocks import BlockBatcher
from voiceid.runtime.embclient import DEFAULT_INFLIGHT
from voiceid.runtime.hub import EngineConfig, Hub, RemoteStream
from voiceid.runtime.pipes import BufferedReceiver
from voiceid.runtime.remote import WorkerSpec, worker_main
from voiceid.runtime.wire import WireError, pack_embs, pack_error, seq_of, unpack_feats
from voiceid.stream.pipeline import Scorer, StreamConfig

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0  # a worker must be listening within this (imports, warm-up)
STOP_TIMEOUT_S = 15.0  # a worker must have closed its streams within this
BACKOFF_S = (1.0, 30.0)  # restart delay of a dead worker: first, cap (doubling, jittered)


@dataclass(eq=False)
class _Worker:
    wid: int
    process: BaseProcess
    ctl: Connection
    emb: Connection
    ready: asyncio.Future[int]
    want: bool = False  # has an /events subscriber that needs the other workers' events
    gone: bool = False
    stopping: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # its pipe is closed
    stats: dict[str, Any] = field(default_factory=dict)  # its last stats message

    def send(self, *message: Any) -> None:
        if self.gone:
            return
        try:
            self.ctl.send(message)
        except (OSError, ValueError):
            self.gone = True


class Gather:
    """The answers to one request's groups (one per window length): one reply, in order."""

    def __init__(
        self,
        seq: int,
        groups: int,
        send: Callable[[bytes], None],
        release: Callable[[], None] | None = None,
    ) -> None:
        self.seq = seq
        self.release = release  # the request's buffer: every group has been copied
        self.parts: list[NDArray[np.float32] | None] = [None] * groups
        self.left = groups
        self.error: str | None = None
        self.send = send
        self.lock = threading.Lock()

    def got(self, i: int, embs: NDArray[np.float32] | None, error: str | None) -> None:
        with self.lock:
            if embs is None:
                self.error = self.error or error or "failed"
            else:  # a view of the model's output: copy before the next batch reuses it
                self.parts[i] = embs.copy() if self.left > 1 else embs
            self.left -= 1
            if self.left:
                return
        if self.release is not None:
            self.release()
        if self.error is not None:
            self.send(pack_error(self.seq, self.error))
        else:
            self.send(pack_embs(self.seq, np.concatenate([p for p in self.parts if p is not None])))


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, ``SO_REUSEPORT`` socket that holds the workers' port
    (``port`` 0: an ephemeral one) for as long as the daemon runs."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def listen_shared(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A worker's own listening socket on the shared port: the kernel spreads the
    connections evenly over the workers' sockets (``SO_REUSEPORT``), and a worker that
    dies takes only its own accept queue with it."""
    sock = reserve_port(host, port)
    try:
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class WorkerPool:
    """N worker processes around ``hub``; ``await start()``, then ``await run()``.

    ``port``: the port held by :func:`reserve_port`, where every worker listens.
    """

    def __init__(
        self,
        hub: Hub,
        settings: Settings,
        port: int,
        *,
        workers: int,
        websocket_stats: Any,
        ports: dict[str, int] | None = None,
        inflight: int = DEFAULT_INFLIGHT,
        switch_interval_s: float | None = None,
    ) -> None:
        self.hub = hub
        self.settings = settings
        self.port = port
        self.n = workers
        self.websocket_stats = websocket_stats
        self.ports = ports if ports is not None else {}
        self.inflight = inflight
        self.switch_interval_s = switch_interval_s
        self.restarts = 0
        ec = hub.engine_config
        self.batcher = BlockBatcher(
            hub.embedder.embed_features,
            max_batch=ec.max_batch,
            max_wait_ms=ec.max_wait_ms,
            pad_batches=hub.pad_batches,
            embed_lock=hub.engine.embed_lock,  # one model call at a time with the hub's own
            producers=workers,
        )
        self._ctx = mp.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lost: asyncio.Queue[int] = asyncio.Queue()
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker and wait until all listen (a failure raises)."""
        self._loop = asyncio.get_running_loop()
        self.hub.followers.append(self)
        for wid in range(self.n):
            self._spawn(wid)
        try:
            for w in list(self._workers.values()):
                await self._ready(w)
        except BaseException:
            await self.close()
            raise
        log.info("%d WebSocket worker processes ready", self.n)

    async def run(self) -> None:
        """Restart dead workers until cancelled; then stop them all (streams end cleanly)."""
        failures: dict[int, int] = {}
        try:
            while True:
                wid = await self._lost.get()
                if self._closing:
                    continue
                n = failures[wid] = failures.get(wid, 0) + 1
                first, cap = BACKOFF_S
                delay = min(cap, first * 2 ** (n - 1)) * random.uniform(0.5, 1.0)
                log.error("worker %d died: restarting it in %.1f s", wid, delay)
                await asyncio.sleep(delay)
                self._spawn(wid)
                try:
                    await self._ready(self._workers[wid])
                    self.restarts += 1
                    log.info("worker %d is back", wid)
                    failures[wid] = 0 if n > 5 else failures[wid]
                except VoiceidError as exc:
                    log.error("worker %d did not come back: %s", wid, exc)
                    self._lost.put_nowait(wid)
        finally:
            await self.close()

    async def close(self) -> None:
        """Ask every worker to end its streams and exit; kill those that do not."""
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(ValueError):
            self.hub.followers.remove(self)
        workers = list(self._workers.values())
        for w in workers:
            w.stopping = True
            w.send("stop")
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for w in workers:
            left = max(0.1, deadline - time.monotonic())
            await asyncio.to_thread(w.process.join, left)
            if w.process.is_alive():
                log.error("worker %d did not stop in %.0f s: killed", w.wid, STOP_TIMEOUT_S)
                w.process.kill()
                await asyncio.to_thread(w.process.join, 5)
        for w in workers:  # their last events: read until each pipe ends
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(w.finished.wait(), 2.0)
            self._forget_streams(w)
            w.ctl.close()
            w.emb.close()
        await asyncio.to_thread(self.batcher.close)

    def _spawn(self, wid: int) -> None:
        ctl_here, ctl_there = self._ctx.Pipe()
        emb_here, emb_there = self._ctx.Pipe()
        settings = self.settings
        spec = WorkerSpec(
            wid=wid,
            settings=settings,  # (max_streams is checked here, on each claim, for all workers)
            port=self.port,
            card=self.hub.embedder.card,
            fingerprint=self.hub.embedder.fingerprint,
            engine=EngineConfig(
                max_batch=self.hub.engine_config.max_batch,
                max_wait_ms=0.0,  # no wait here: the batcher above gathers the workers' blocks
                max_pending=self.hub.engine_config.max_pending,
                batch_buckets=False,
            ),
            ports=dict(self.ports),
            inflight=self.inflight,
            switch_interval_s=self.switch_interval_s,
        )
        process = self._ctx.Process(
            target=worker_main,
            args=(spec, ctl_there, emb_there),
            name=f"voiceid-worker-{wid}",
            daemon=True,
        )
        assert self._loop is not None
        w = _Worker(wid, process, ctl_here, emb_here, self._loop.create_future())
        self._workers[wid] = w
        process.start()
        log.info("worker %d started (pid %s)", wid, process.pid)
        ctl_there.close()
        emb_there.close()
        w.send("scorer", self.hub.scorer, self.hub.stream_config, sorted(self.hub.disabled))
        threading.Thread(
            target=self._read, args=(w,), name=f"voiceid-ctl-{wid}", daemon=True
        ).start()
        threading.Thread(
            target=self._serve_embeddings, args=(w,), name=f"voiceid-emb-{wid}", daemon=True
        ).start()

    async def _ready(self, w: _Worker) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(w.ready), START_TIMEOUT_S)
        except TimeoutError:
            raise VoiceidError(
                f"WebSocket worker {w.wid} did not start within {START_TIMEOUT_S:.0f} s",
                hint="see the log above; lower websocket.workers on a busy machine",
            ) from None

    # -- follower of the hub (loop thread) ------------------------------------------------
    def scorer_changed(self, scorer: Scorer, stream_config: StreamConfig) -> None:
        for w in self._workers.values():
            w.send("scorer", scorer, stream_config)

    def enabled_changed(self, name: str, enabled: bool) -> None:
        for w in self._workers.values():
            w.send("enabled", name, enabled)

    # -- threads --------------------------------------------------------------------------
    def _read(self, w: _Worker) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            try:
                message = w.ctl.recv()
            except (EOFError, OSError):
                with contextlib.suppress(RuntimeError):  # loop closed at exit
                    loop.call_soon_threadsafe(self._gone, w)
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._handle, w, message)

    def _serve_embeddings(self, w: _Worker) -> None:
        conn = w.emb
        lock = threading.Lock()  # replies come from the batcher thread and from here

        def send(data: bytes) -> None:
            with lock, contextlib.suppress(OSError, ValueError):  # the worker died meanwhile
                conn.send_bytes(data)

        inbox = BufferedReceiver(conn)
        try:
            while True:
                try:
                    buf, data = inbox.recv()
                except (EOFError, OSError):
                    return
                try:
                    seq, groups = unpack_feats(data)
                except WireError as exc:
                    log.error("worker %d sent a bad request: %s", w.wid, exc)
                    bad = seq_of(data)
                    inbox.release(buf)
                    if bad is not None:  # else the worker cannot be told which one (a bug)
                        send(pack_error(bad, str(exc)))
                    continue
                gather = Gather(seq, len(groups), send, partial(inbox.release, buf))
                for i, feats in enumerate(groups):
                    self.batcher.submit(feats, partial(gather.got, i), producer=w.wid)
        finally:
            inbox.close()

    # -- messages (loop thread) -----------------------------------------------------------
    def _handle(self, w: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        hub = self.hub
        if kind == "events":
            events = message[1]
            hub.bus.publish(events)
            for other in self._workers.values():
                if other is not w and other.want:
                    other.send("events", events)
        elif kind == "claim":
            req, name = message[1], message[2]
            if name in hub.streams or name in hub.remote:
                w.send("claimed", req, "taken")
            elif len(hub.remote) >= self.settings.websocket.max_streams:
                w.send("claimed", req, "full")
            else:
                hub.remote[name] = RemoteStream(w.wid, time.time())
                w.send("claimed", req, "ok")
        elif kind == "closed":
            got = hub.remote.get(message[1])
            if got is not None and got.worker == w.wid:
                del hub.remote[message[1]]
        elif kind == "want":
            w.want = bool(message[1])
        elif kind == "stats":
            self._add_stats(w, message[1])
        elif kind == "ready":
            if not w.ready.done():
                w.ready.set_result(int(message[1]))
        elif kind == "failed" and not w.ready.done():
            w.ready.set_exception(
                VoiceidError(f"WebSocket worker {w.wid} failed to start: {message[1]}")
            )

    def _add_stats(self, w: _Worker, stats: dict[str, Any]) -> None:
        hub = self.hub
        hub.hop_latency_ms.extend(stats["latency_ms"])
        for name, values in stats["stage_ms"].items():
            hub.stage_ms[name].extend(values)
        hub.skipped_hops += stats["skipped_hops"]
        hub.failed_windows += stats["failed_windows"]
        w.stats = stats
        self._sum_websocket_stats()

    def _sum_websocket_stats(self) -> None:
        total = self.websocket_stats
        if total is None:
            return
        snaps = [w.stats["websocket"] for w in self._workers.values() if w.stats]
        for f in fields(total):
            if f.name == "rejected":
                merged: dict[str, int] = {}
                for s in snaps:
                    for reason, n in s["rejected"].items():
                        merged[reason] = merged.get(reason, 0) + n
                total.rejected = merged
            else:
                setattr(total, f.name, sum(s[f.name] for s in snaps))

    def _gone(self, w: _Worker) -> None:
        """A worker's pipe closed: it exited (stopping) or died."""
        if w.finished.is_set():
            return
        w.gone = True
        w.finished.set()
        self._forget_streams(w)
        if not w.ready.done():
            w.ready.set_exception(VoiceidError(f"WebSocket worker {w.wid} exited while starting"))
        if not w.stopping and not self._closing:
            log.error(
                "WebSocket worker %d exited unexpectedly (exit code %s); its streams ended",
                w.wid,
                w.process.exitcode,
            )
            self._lost.put_nowait(w.wid)

    def _forget_streams(self, w: _Worker) -> None:
        hub = self.hub
        for name in [n for n, r in hub.remote.items() if r.worker == w.wid]:
            del hub.remote[name]

    # -- views ------------------------------------------------------------------------------
    def totals(self) -> dict[str, int]:
        """Windows asked for and scored by all workers' streams (open and closed)."""
        snaps = [w.stats for w in self._workers.values() if w.stats]
        return {k: sum(int(s[k]) for s in snaps) for k in ("windows", "scored", "streams")}

    def workers(self) -> Sequence[_Worker]:
        return list(self._workers.values())
