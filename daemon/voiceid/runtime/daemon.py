"""``voiceid run``: the always-on daemon.

Start-up: config → model loaded → profiles indexed → every batch bucket warmed →
sources opened → *ready*: logged, ``READY=1`` sent to systemd (``Type=notify``; a no-op
outside systemd), ``on_ready`` called. Tasks are supervised in one ``asyncio.TaskGroup``:
if a source dies, the daemon stops with an error instead of limping on.

Signals: SIGTERM/SIGINT → ``STOPPING=1``; sources close (their streams publish their
last events), the engine drains, sinks flush, exit 0. SIGHUP (``systemctl reload``) →
``RELOADING=1``; profiles are re-read from the store (a new index swapped into the hub),
and the reloadable parts of the config file (``decision``: thresholds and smoothing for
streams opened from now on; ``log.level``) are applied; open streams are untouched;
then ``READY=1``. A reload that fails keeps everything as it was.

Watchdog: with ``WatchdogSec=`` set, ``WATCHDOG=1`` is sent from the event loop every
half period while the pipeline is healthy: the loop runs (the ping is a loop task) and
the inference engine makes progress (windows queued but no batch finished for
``stall_s`` means a stuck worker: pings stop and systemd restarts the service).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voiceid import __version__
from voiceid.app import App
from voiceid.config import Settings, load_settings
from voiceid.errors import ConfigError, VoiceidError
from voiceid.runtime import metrics, notify
from voiceid.runtime.hub import EngineConfig, Hub
from voiceid.security import Security, check_auth_config
from voiceid.security.templates import profile_key
from voiceid.sinks.stdout import write_events
from voiceid.stream.decide import DecisionConfig
from voiceid.stream.engine import EngineStats
from voiceid.stream.pipeline import Scorer, StreamConfig
from voiceid.stream.scheduler import SchedulerConfig
from voiceid.stream.vad import VadConfig

log = logging.getLogger(__name__)

ENGINE_STALL_S = 30.0  # windows queued and no batch finished for this long: unhealthy
STATUS_INTERVAL_S = 10.0  # refresh systemd's STATUS= line at most this often
COUNTER_QUEUE = 8192  # events buffered for the metrics counter (it never awaits)
RELOADABLE = ("decision", "log")  # config sections a SIGHUP applies


def stream_config(settings: Settings, threshold: float) -> StreamConfig:
    """The pure core's configuration from the validated settings."""
    s, d = settings.stream, settings.decision
    return StreamConfig(
        scheduler=SchedulerConfig(
            hop_s=s.hop_s,
            window_s=s.window_s,
            min_voiced_s=s.min_voiced_s,
            slice_s=s.slice_s,
            vad=VadConfig(kind=s.vad, mode=s.vad_mode, energy_dbfs=s.energy_dbfs),
        ),
        decision=DecisionConfig(
            enter=threshold,
            exit=threshold - d.exit_margin,
            smoothing=d.smoothing,
            alpha=d.alpha,
            vote_k=d.vote_k,
            min_dwell_hops=d.min_dwell_hops,
            change_margin=d.change_margin,
            end_silence_s=d.end_silence_s,
            scores_interval_s=d.scores_interval_s,
            top_k=d.top_k,
        ),
    )


def engine_config(settings: Settings) -> EngineConfig:
    e = settings.engine
    return EngineConfig(e.max_batch, e.max_wait_ms, e.max_pending, e.batch_buckets)


def register_local_models(settings: Settings) -> None:
    """Make the ``models:`` of the config known to the registry (idempotent)."""
    from voiceid.frontend.base import FrontEndSpec
    from voiceid.models import registry
    from voiceid.models.card import ModelCard

    for name, m in settings.models.items():
        card = ModelCard(
            name=name,
            description=m.description,
            dim=m.dim,
            frontend=FrontEndSpec(kind=m.frontend, num_bins=m.num_bins, cmn=m.cmn),
            input_name=m.input_name,
            output_name=m.output_name,
            source="local",
            filename=Path(m.path).name,
            threshold=m.threshold,
        )
        registry.register_local(card, Path(m.path).expanduser())


def threshold_of(settings: Settings, app: App) -> float:
    """Enter threshold: cosine from config, else stored per model, else the card;
    AS-norm: the config's z-score (required by validation)."""
    d = settings.decision
    if d.score_norm == "asnorm" and d.threshold is not None:
        return d.threshold
    return app.stream_threshold(d.threshold)


def build_scorer(settings: Settings, app: App) -> tuple[Scorer, int]:
    """The profiles of the store as a scorer (AS-norm when configured) and their count.

    Blocking (reads the store and the cohort file): call it in a thread.
    """
    index = app.index()
    for foreign in index.foreign:
        log.warning(
            "profile %r was enrolled with model %s: ignored (re-enroll it)",
            foreign.name,
            foreign.model_name,
        )
    d = settings.decision
    if d.score_norm != "asnorm":
        return index, len(index)
    from voiceid.profiles.asnorm import ASNormScorer, load_cohort

    if d.cohort is None:
        raise ConfigError(
            "decision.score_norm: asnorm needs decision.cohort",
            hint="build one with `voiceid cohort build DIR`",
        )
    cohort = load_cohort(d.cohort, app.fingerprint)
    return ASNormScorer(index, cohort, top_n=d.cohort_top_n), len(index)


@dataclass
class EngineWatch:
    """Is the inference engine making progress? (the watchdog's view of the pipeline)"""

    stall_s: float = ENGINE_STALL_S
    _done: int = -1
    _since: float | None = None  # when windows were first seen waiting without progress

    def check(self, stats: EngineStats, now: float) -> str | None:
        """None when healthy, else why not."""
        done = stats.batches
        if stats.pending == 0:
            self._done, self._since = done, None
            return None
        if done != self._done or self._since is None:
            self._done, self._since = done, now
            return None
        stuck = now - self._since
        if stuck >= self.stall_s:
            return (
                f"inference engine stuck: {stats.pending} windows queued, "
                f"no batch finished for {stuck:.0f} s"
            )
        return None


@dataclass
class Daemon:
    """One daemon instance; ``await run()`` until ``stop()`` (or a signal).

    ``config_path``: the file ``settings`` came from, re-read on reload (None: a reload
    only re-reads the profiles).
    """

    settings: Settings
    on_ready: Callable[[Daemon], None] | None = None
    config_path: Path | None = None
    stall_s: float = ENGINE_STALL_S
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    app: App | None = None
    hub: Hub | None = None
    ports: dict[str, int] = field(default_factory=dict)  # bound ports by source
    websocket_stats: Any = None  # WebSocketStats once the server runs
    mic_queues: dict[str, Any] = field(default_factory=dict)  # stream -> BlockQueue
    wyoming_mic_stats: dict[str, Any] = field(default_factory=dict)  # stream -> WyomingMicStats
    wyoming_asr_stats: Any = None  # WyomingAsrStats once the proxy runs
    pool: Any = None  # WorkerPool when websocket.workers > 0
    ready: bool = False
    reloads: int = 0  # successful reloads
    _reload: asyncio.Event = field(default_factory=asyncio.Event)
    _profiles: int = 0
    _status: str = ""

    # -- control (signal handlers call these; loop thread) ---------------------------------
    def stop(self) -> None:
        if not self.stopping.is_set():
            notify.stopping("stopping")
        self.stopping.set()

    def request_reload(self) -> None:
        """SIGHUP: reload as soon as the daemon is ready (requests coalesce)."""
        self._reload.set()

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self) -> None:
        cfg = self.settings
        check_auth_config(cfg)  # no tokens: loopback binds only (ConfigError); warns if open
        register_local_models(cfg)
        key = profile_key(cfg.security)  # a bad key file fails before the model loads
        if key is None:
            log.warning(
                "profiles are stored in clear: set security.profile_key_file to encrypt them "
                "(voiceid key new FILE; voiceid profiles encrypt --key-file FILE)"
            )
        notify.status("loading model")
        try:
            self.app = app = await asyncio.to_thread(
                App.open,
                cfg.model.name,
                db=cfg.db,
                device=cfg.model.device,
                threads=cfg.model.threads,
                sha256=cfg.model.sha256,
                fetch=cfg.model.fetch,
                precision=cfg.model.precision,
                key=key,
            )
            try:
                await self._serve(app)
            except BaseExceptionGroup as group:  # TaskGroup: report the cause, not a tree
                raise first_error(group) from group
            finally:
                app.close()
        finally:
            if not self.stopping.is_set():  # a failure, not a signal
                notify.stopping("stopping after an error")

    async def _serve(self, app: App) -> None:
        cfg = self.settings
        threshold = threshold_of(cfg, app)
        scorer, self._profiles = await asyncio.to_thread(build_scorer, cfg, app)
        embedder = metrics.MeteredEmbedder(app.embedder)
        self.hub = hub = Hub(
            embedder,
            scorer,
            stream_config(cfg, threshold),
            engine_config(cfg),
            max_streams=cfg.websocket.max_streams,
        )
        notify.status("warming up")
        await hub.start()
        embedder.active = True
        provider = app.embedder.model.provider
        log.info(
            "model %s on %s, %d profiles, threshold %.3f, warmed up",
            app.model_name,
            provider,
            self._profiles,
            threshold,
        )
        mqtt_sink = None
        if cfg.mqtt.enabled:
            from voiceid.sinks.mqtt import MqttSink

            mqtt_sink = MqttSink(hub, cfg.mqtt)  # a bad password/TLS file fails here: exit 2
        sink_task: asyncio.Task[int] | None = None
        if cfg.stdout_events:
            sink_task = asyncio.create_task(write_events(hub.bus.subscribe(maxsize=4096)))
        counter = asyncio.create_task(
            metrics.count_identifications(hub.bus.subscribe(maxsize=COUNTER_QUEUE))
        )
        # MQTT lives until the bus closes: the streams' last events and `offline` go out
        mqtt_task = asyncio.create_task(mqtt_sink.run()) if mqtt_sink is not None else None
        attachment: metrics.Attachment | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                sources = await self._start_sources(tg, hub)
                attachment = metrics.attach(
                    hub,
                    websocket=self.websocket_stats,
                    mqtt=self._mqtt_stats(),
                    mics=self.mic_queues,
                    version=__version__,
                    provider=provider,
                )
                where = ", ".join(f"{k}:{v}" for k, v in self.ports.items())
                log.info("ready: %s", where or "no network sources")
                self.ready = True
                notify.ready(self._status_line())
                if self.on_ready:
                    self.on_ready(self)
                helpers = [
                    tg.create_task(self._watchdog(hub)),
                    tg.create_task(self._reloader(app, hub)),
                ]
                stop_wait = tg.create_task(self.stopping.wait())
                await asyncio.wait([stop_wait, *sources], return_when=asyncio.FIRST_COMPLETED)
                if not self.stopping.is_set():
                    notify.stopping("a source ended")
                for task in [*sources, *helpers, stop_wait]:
                    task.cancel()
        finally:
            self.ready = False
            await hub.close()  # closes remaining streams (final events) and the bus
            for drain in (sink_task, counter, mqtt_task):
                if drain is not None:
                    await _finish(drain, timeout=10 if drain is mqtt_task else 5)
            if attachment is not None:
                attachment.detach()
        log.info("stopped")

    def _mqtt_stats(self) -> Any:
        if not self.settings.mqtt.enabled:
            return None
        from voiceid.sinks.mqtt import STATS

        return STATS

    async def _start_sources(self, tg: asyncio.TaskGroup, hub: Hub) -> list[asyncio.Task[None]]:
        cfg = self.settings
        tasks: list[asyncio.Task[None]] = []
        if cfg.websocket.enabled and cfg.websocket.workers:
            tasks.append(await self._start_workers(tg, hub))
        elif cfg.websocket.enabled:
            from voiceid.sources.websocket import WebSocketStats, serve_websocket

            self.websocket_stats = stats = WebSocketStats()
            started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            security = Security.from_settings(cfg, ports=self.ports)
            tasks.append(
                tg.create_task(
                    serve_websocket(
                        hub, cfg.websocket, started=started, stats=stats, security=security
                    )
                )
            )
            self.ports["websocket"] = await _listening("websocket", cfg.websocket, started)
        if cfg.http.enabled:
            from voiceid.http.server import serve_http

            http_started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            tasks.append(tg.create_task(serve_http(self, cfg.http, started=http_started)))
            self.ports["http"] = await _listening("http", cfg.http, http_started)
        for mic in cfg.mics:
            from voiceid.sources.mic import BlockQueue, run_microphone

            opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            queue = self.mic_queues[mic.name] = BlockQueue(mic.queue_blocks)  # overflow metric
            tasks.append(tg.create_task(run_microphone(hub, mic, opened=opened, queue=queue)))
            await opened
        for wmic in cfg.wyoming.mics:
            from voiceid.sources.wyoming_mic import (
                WyomingMicConfig,
                WyomingMicStats,
                run_wyoming_mic,
            )

            wmic_cfg = WyomingMicConfig(**wmic.model_dump())  # a bad URI: ConfigError, exit 2
            wstats = self.wyoming_mic_stats[wmic.name] = WyomingMicStats()
            tasks.append(tg.create_task(run_wyoming_mic(hub, wmic_cfg, stats=wstats)))
        if cfg.wyoming.asr.enabled:
            from voiceid.sources.wyoming_asr import (
                WyomingAsrConfig,
                WyomingAsrStats,
                serve_wyoming_asr,
            )

            asr_cfg = WyomingAsrConfig(**cfg.wyoming.asr.model_dump())
            self.wyoming_asr_stats = asr_stats = WyomingAsrStats()
            asr_started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            app = self.app
            tasks.append(
                tg.create_task(
                    serve_wyoming_asr(
                        hub,
                        asr_cfg,
                        threshold=app.threshold if app is not None else None,  # per utterance
                        started=asr_started,
                        stats=asr_stats,
                    )
                )
            )
            self.ports["wyoming-asr"] = await _listening("wyoming.asr", asr_cfg, asr_started)
        return tasks

    async def _start_workers(self, tg: asyncio.TaskGroup, hub: Hub) -> asyncio.Task[None]:
        """``websocket.workers`` front-end processes on one listening socket."""
        from voiceid.runtime.workers import WorkerPool, reserve_port
        from voiceid.sources.websocket import WebSocketStats

        ws = self.settings.websocket
        failed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        try:
            sock = reserve_port(ws.host, ws.port)  # held until the workers are gone
        except OSError as exc:
            failed.set_exception(exc)
            await _listening("websocket", ws, failed)  # raises the one-line error
            raise
        port = self.ports["websocket"] = int(sock.getsockname()[1])
        self.websocket_stats = WebSocketStats()
        self.pool = pool = WorkerPool(
            hub,
            self.settings,
            port,
            workers=ws.workers,
            websocket_stats=self.websocket_stats,
            ports=self.ports,
        )
        try:
            await pool.start()
        except BaseException:
            sock.close()
            raise

        async def supervise() -> None:
            try:
                await pool.run()
            finally:
                sock.close()

        return tg.create_task(supervise())

    # -- watchdog and status --------------------------------------------------------------
    def _status_line(self) -> str:
        hub = self.hub
        streams = len(hub.stream_names()) if hub else 0
        profiles = len(hub.scorer.names) if hub else self._profiles  # the API may enroll
        ports = " ".join(f"{k}:{v}" for k, v in self.ports.items())
        return f"ready: {profiles} profiles, {streams} streams" + (f"; {ports}" if ports else "")

    async def _watchdog(self, hub: Hub) -> None:
        """Ping systemd while healthy; keep STATUS= current."""
        interval = notify.watchdog_interval()
        period = min(interval, STATUS_INTERVAL_S) if interval else STATUS_INTERVAL_S
        watch = EngineWatch(self.stall_s)
        pool_watch = EngineWatch(self.stall_s)  # the workers' batches (websocket.workers)
        unhealthy: str | None = None
        last_status = 0.0
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            problem = watch.check(hub.engine.stats(), time.monotonic())
            if problem is None and self.pool is not None:
                problem = pool_watch.check(self.pool.batcher.stats(), time.monotonic())
            if problem != unhealthy:
                if problem:
                    log.error("%s: not pinging the watchdog", problem)
                    notify.status(problem)
                else:
                    log.info("pipeline healthy again")
                unhealthy = problem
            if problem is None:
                if interval:
                    notify.watchdog()
                status = self._status_line()
                if status != self._status or now - last_status >= STATUS_INTERVAL_S:
                    self._status, last_status = status, now
                    notify.status(status)
            await asyncio.sleep(period)

    # -- reload ---------------------------------------------------------------------------
    async def _reloader(self, app: App, hub: Hub) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            await self.reload(app, hub)

    async def reload(self, app: App, hub: Hub) -> bool:
        """Re-read profiles and the reloadable config; streams stay open. True on success."""
        notify.reloading("reloading")
        log.info("reload requested")
        try:
            new = await asyncio.to_thread(self._reread_settings)
            threshold = await asyncio.to_thread(threshold_of, new, app)
            scorer, profiles = await asyncio.to_thread(build_scorer, new, app)
        except VoiceidError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            notify.ready(f"reload failed: {exc}".splitlines()[0])
            return False
        hub.set_scorer(scorer, stream_config(new, threshold))  # config: streams opened from now
        logging.getLogger().setLevel(new.log.level)
        self.settings, self._profiles = new, profiles
        self.reloads += 1
        self._status = self._status_line()
        log.info("reloaded: %d profiles, threshold %.3f for new streams", profiles, threshold)
        notify.ready(self._status)
        return True

    def _reread_settings(self) -> Settings:
        """The running settings with the reloadable sections of the file applied."""
        old = self.settings
        if self.config_path is None:
            return old
        fresh = load_settings(self.config_path)
        changed = [
            name
            for name in Settings.model_fields
            if name not in RELOADABLE and getattr(fresh, name) != getattr(old, name)
        ]
        if changed and changed != ["db"]:  # db may come from --db
            log.warning(
                "config changes in %s need a restart (systemctl restart voiceid); applied now: %s",
                ", ".join(c for c in changed if c != "db"),
                ", ".join(RELOADABLE),
            )
        if fresh.log.json_format != old.log.json_format:
            log.warning("log.json needs a restart")
        update: Mapping[str, Any] = {
            "decision": fresh.decision,
            "log": old.log.model_copy(update={"level": fresh.log.level}),
        }
        return old.model_copy(update=dict(update))


async def _listening(name: str, section: Any, started: asyncio.Future[int]) -> int:
    """The bound port; a bind failure becomes a one-line error (exit 1: restartable)."""
    try:
        return await started
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use"
        raise VoiceidError(
            f"{name}: cannot listen on {section.host}:{section.port}: {reason}",
            hint=f"is voiceid already running? else change {name}.port",
        ) from None


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that explains a failed TaskGroup: a VoiceidError if there is one."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        elif not isinstance(exc, asyncio.CancelledError):
            leaves.append(exc)

    walk(group)
    return next((e for e in leaves if isinstance(e, VoiceidError)), leaves[0] if leaves else group)


async def _finish(task: asyncio.Task[Any], timeout: float) -> None:
    """Let a sink drain its subscription (the bus is closed), at most ``timeout``."""
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(task, timeout=timeout)


def install_signal_handlers(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, daemon.stop)
    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)


async def _main(
    settings: Settings,
    on_ready: Callable[[Daemon], None] | None,
    config_path: Path | None,
) -> None:
    daemon = Daemon(settings, on_ready=on_ready, config_path=config_path)
    install_signal_handlers(daemon)
    await daemon.run()


def run_daemon(
    settings: Settings,
    on_ready: Callable[[Daemon], None] | None = None,
    *,
    config_path: Path | None = None,
) -> None:
    """Run on uvloop when available (the asyncio default loop otherwise).

    ``config_path``: the config file, re-read on SIGHUP (None: SIGHUP reloads profiles only).
    """
    try:
        import uvloop
    except ImportError:  # e.g. Windows
        asyncio.run(_main(settings, on_ready, config_path))
        return
    uvloop.run(_main(settings, on_ready, config_path))
