"""``voiceid run``: the always-on daemon.

Start-up: config → model loaded → profiles indexed → every batch bucket warmed →
sources opened → *ready* (logged, ``on_ready`` called: sd_notify READY=1 plugs in here).
Tasks are supervised in one ``asyncio.TaskGroup``: if a source dies, the daemon stops
with an error instead of limping on. SIGTERM/SIGINT: sources close (their streams
publish their last events), the engine drains, sinks flush, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from voiceid.app import App
from voiceid.config import Settings
from voiceid.errors import ConfigError
from voiceid.runtime.hub import EngineConfig, Hub
from voiceid.sinks.stdout import write_events
from voiceid.stream.decide import DecisionConfig
from voiceid.stream.pipeline import Scorer, StreamConfig
from voiceid.stream.scheduler import SchedulerConfig
from voiceid.stream.vad import VadConfig

log = logging.getLogger(__name__)


def stream_config(settings: Settings, threshold: float) -> StreamConfig:
    """The pure core's configuration from the validated settings."""
    s, d = settings.stream, settings.decision
    return StreamConfig(
        scheduler=SchedulerConfig(
            hop_s=s.hop_s,
            window_s=s.window_s,
            min_voiced_s=s.min_voiced_s,
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


@dataclass
class Daemon:
    """One daemon instance; ``await run()`` until ``stop()`` (or a signal)."""

    settings: Settings
    on_ready: Callable[[Daemon], None] | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    app: App | None = None
    hub: Hub | None = None
    ports: dict[str, int] = field(default_factory=dict)  # bound ports by source

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        cfg = self.settings
        self.app = app = await asyncio.to_thread(
            App.open,
            cfg.model.name,
            db=cfg.db,
            device=cfg.model.device,
            threads=cfg.model.threads,
            sha256=cfg.model.sha256,
            fetch=cfg.model.fetch,
        )
        try:
            await self._serve(app)
        finally:
            app.close()

    async def _serve(self, app: App) -> None:
        cfg = self.settings
        # cosine: config, else stored per model, else the card; AS-norm: config (required)
        threshold = (
            cfg.decision.threshold
            if cfg.decision.score_norm == "asnorm" and cfg.decision.threshold is not None
            else app.stream_threshold(cfg.decision.threshold)
        )
        index = app.index()
        for foreign in index.foreign:
            log.warning(
                "profile %r was enrolled with model %s: ignored (re-enroll it)",
                foreign.name,
                foreign.model_name,
            )
        scorer: Scorer = index
        if cfg.decision.score_norm == "asnorm":
            from voiceid.profiles.asnorm import ASNormScorer, load_cohort

            if cfg.decision.cohort is None:
                raise ConfigError(
                    "decision.score_norm: asnorm needs decision.cohort",
                    hint="build one with `voiceid cohort build DIR`",
                )
            cohort = load_cohort(cfg.decision.cohort, app.fingerprint)
            scorer = ASNormScorer(index, cohort, top_n=cfg.decision.cohort_top_n)
        self.hub = hub = Hub(
            app.embedder,
            scorer,
            stream_config(cfg, threshold),
            engine_config(cfg),
            max_streams=cfg.websocket.max_streams,
        )
        await hub.start()
        log.info(
            "model %s on %s, %d profiles, threshold %.3f, warmed up",
            app.model_name,
            app.embedder.model.provider,
            len(index),
            threshold,
        )
        sink_task: asyncio.Task[int] | None = None
        if cfg.stdout_events:
            sink_task = asyncio.create_task(write_events(hub.bus.subscribe(maxsize=4096)))
        try:
            async with asyncio.TaskGroup() as tg:
                sources = await self._start_sources(tg, hub)
                log.info(
                    "ready: %s",
                    ", ".join(f"{k}:{v}" for k, v in self.ports.items()) or "no network sources",
                )
                if self.on_ready:
                    self.on_ready(self)
                stop_wait = tg.create_task(self.stopping.wait())
                await asyncio.wait([stop_wait, *sources], return_when=asyncio.FIRST_COMPLETED)
                for task in sources:
                    task.cancel()
                stop_wait.cancel()
        finally:
            await hub.close()  # closes remaining streams (final events) and the bus
            if sink_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(sink_task, timeout=5)
        log.info("stopped")

    async def _start_sources(self, tg: asyncio.TaskGroup, hub: Hub) -> list[asyncio.Task[None]]:
        cfg = self.settings
        tasks: list[asyncio.Task[None]] = []
        if cfg.websocket.enabled:
            from voiceid.sources.websocket import serve_websocket

            started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            tasks.append(tg.create_task(serve_websocket(hub, cfg.websocket, started=started)))
            self.ports["websocket"] = await started
        if cfg.http.enabled:
            from voiceid.http.server import serve_http

            http_started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            tasks.append(tg.create_task(serve_http(self, cfg.http, started=http_started)))
            self.ports["http"] = await http_started
        if cfg.mqtt.enabled:
            from voiceid.sinks.mqtt import run_mqtt

            tasks.append(tg.create_task(run_mqtt(hub, cfg.mqtt)))
        for mic in cfg.mics:
            from voiceid.sources.mic import run_microphone

            opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            tasks.append(tg.create_task(run_microphone(hub, mic, opened=opened)))
            await opened
        return tasks


def install_signal_handlers(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, daemon.stop)


async def _main(settings: Settings, on_ready: Callable[[Daemon], None] | None) -> None:
    daemon = Daemon(settings, on_ready=on_ready)
    install_signal_handlers(daemon)
    await daemon.run()


def run_daemon(settings: Settings, on_ready: Callable[[Daemon], None] | None = None) -> None:
    """Run on uvloop when available (the asyncio default loop otherwise)."""
    try:
        import uvloop
    except ImportError:  # e.g. Windows
        asyncio.run(_main(settings, on_ready))
        return
    uvloop.run(_main(settings, on_ready))
