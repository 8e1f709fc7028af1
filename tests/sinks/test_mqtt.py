"""The MQTT sink against a real Mosquitto (tests/broker.py) and real aiomqtt subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiomqtt
import numpy as np
import pytest

from tests.broker import HOST, Broker, broker, persistent_broker  # noqa: F401
from voiceid.config import MqttSection
from voiceid.errors import ConfigError
from voiceid.frontend.base import FrontEndSpec
from voiceid.profiles.index import ProfileIndex
from voiceid.runtime.hub import EngineConfig, Hub
from voiceid.sinks.mqtt import MqttSink, MqttStats, backoff, read_password, tls_context
from voiceid.stream.decide import DecisionConfig
from voiceid.stream.events import Event, SpeakerEnded, SpeakerStarted, UnknownSpeaker
from voiceid.stream.pipeline import StreamConfig

REPO = Path(__file__).resolve().parents[2]
DISCOVERY = "homeassistant/device/voiceid/config"
EVENTS = "voiceid/events"


# -- a hub without a model: events go straight into hub.bus ------------------------------------
class StubEmbedder:
    """Enough of an Embedder for a Hub whose streams are never fed."""

    card = SimpleNamespace(frontend=FrontEndSpec(kind="kaldi_fbank", num_bins=80), dim=4)

    def embed_features(self, feats: np.ndarray) -> np.ndarray:
        out = np.zeros((len(feats), 4), np.float32)
        out[:, 0] = 1.0
        return out


def index(names: Sequence[str]) -> ProfileIndex:
    m = np.eye(len(names), 4, dtype=np.float32)
    return ProfileIndex.from_matrix("stub", names, [f"{i:032x}" for i in range(len(names))], m)


def stub_hub(names: Sequence[str] = ("Alice", "Bob")) -> Hub:
    cfg = StreamConfig(decision=DecisionConfig(enter=0.6))
    return Hub(StubEmbedder(), index(names), cfg, EngineConfig(max_batch=1))  # type: ignore[arg-type]


def settings(port: int, **kw: Any) -> MqttSection:
    base: dict[str, Any] = {
        "enabled": True,
        "host": HOST,
        "port": port,
        "client_id": f"voiceid-test-{uuid.uuid4().hex[:8]}",
        "keepalive_s": 5,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
        "stats_interval_s": 0.3,
    }
    return MqttSection(**(base | kw))


_n = 0


def stamp(stream: str) -> dict[str, Any]:
    global _n
    _n += 1
    return {
        "id": f"t-{stream}:{_n}",
        "stream": stream,
        "stream_time_s": _n * 0.5,
        "wall_time": time.time(),
        "latency_ms": 1.0,
    }


def conversation(stream: str, n: int) -> list[Event]:
    """n events: Alice starts, ends, Bob starts, ends, ..."""
    out: list[Event] = []
    for i in range(n):
        name = "Alice" if (i // 2) % 2 == 0 else "Bob"
        if i % 2 == 0:
            out.append(SpeakerStarted(**stamp(stream), name=name, score=0.8))
        else:
            out.append(SpeakerEnded(**stamp(stream), name=name, duration_s=1.0, reason="silence"))
    return out


# -- a real subscriber ---------------------------------------------------------------------------
@dataclass
class Got:
    topic: str
    payload: str
    retain: bool


class Recorder:
    """An aiomqtt subscriber that records every message in order and reconnects by itself.

    ``persistent``: a clean_session=False client (with a persistent broker it gets what
    was published while it was away).
    """

    def __init__(
        self,
        port: int,
        topics: Sequence[str] = ("#",),
        *,
        client_id: str | None = None,
        persistent: bool = False,
    ) -> None:
        self.port, self.topics, self.persistent = port, topics, persistent
        self.client_id = client_id or f"rec-{uuid.uuid4().hex[:8]}"
        self.msgs: list[Got] = []
        self.connections = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Recorder:
        self._task = asyncio.create_task(self._run())
        await until(lambda: self.connections > 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    HOST,
                    self.port,
                    identifier=self.client_id,
                    clean_session=not self.persistent,
                    timeout=5,
                ) as client:
                    await client.subscribe([(t, 1) for t in self.topics])
                    self.connections += 1
                    async for m in client.messages:
                        payload = m.payload
                        text = payload.decode() if isinstance(payload, bytes) else str(payload)
                        self.msgs.append(Got(m.topic.value, text, m.retain))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.02)

    def on(self, topic: str, start: int = 0) -> list[Got]:
        return [m for m in self.msgs[start:] if m.topic == topic]

    async def next(self, pred: Callable[[Got], bool], start: int = 0) -> Got:
        """The first message from ``start`` on that matches (waits for it)."""
        found: list[Got] = []

        def check() -> bool:
            found[:] = [m for m in self.msgs[start:] if pred(m)][:1]
            return bool(found)

        await until(check)
        return found[0]

    async def count(self, topic: str, n: int, start: int = 0) -> list[Got]:
        await until(lambda: len(self.on(topic, start)) >= n)
        return self.on(topic, start)


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.01)


async def send(port: int, topic: str, payload: str, *, retain: bool = False) -> None:
    async with aiomqtt.Client(HOST, port, identifier=f"pub-{uuid.uuid4().hex[:8]}") as c:
        await c.publish(topic, payload, qos=1, retain=retain)


@contextlib.asynccontextmanager
async def running(sink: MqttSink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(sink.run())
    try:
        yield task
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, "the sink did not stop within 5 s of its cancellation"
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run(coro: Any, timeout: float = 40.0, *, uvloop: bool = False) -> Any:
    main = asyncio.wait_for(coro, timeout)
    if uvloop:
        uv = pytest.importorskip("uvloop")
        return uv.run(main)
    return asyncio.run(main)


# -- configuration (no broker) -------------------------------------------------------------------
def test_password_sources(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    assert read_password(MqttSection(username="u", password_file=pw)) == "s3cret"
    assert read_password(MqttSection()) is None
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt").write_text("from-systemd")
    cfg = MqttSection(username="u", password_credential="mqtt")
    assert read_password(cfg, {"CREDENTIALS_DIRECTORY": str(creds)}) == "from-systemd"
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        read_password(cfg, {})
    with pytest.raises(ConfigError, match=r"mqtt.password_file: cannot read .*missing"):
        read_password(MqttSection(username="u", password_file=tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_password(MqttSection(username="u", password_file=tmp_path / "empty"))
    with pytest.raises(ConfigError, match="username"):
        read_password(MqttSection(password_file=pw))
    with pytest.raises(ConfigError, match="not both"):
        read_password(MqttSection(username="u", password_file=pw, password_credential="x"))
    # the sink refuses to start, before any connection attempt
    with pytest.raises(ConfigError):
        MqttSink(stub_hub(), MqttSection(username="u", password_file=tmp_path / "missing"))


def test_tls_settings(tmp_path: Path) -> None:
    assert tls_context(MqttSection()) is None
    with pytest.raises(ConfigError, match=r"mqtt\.tls is false"):
        tls_context(MqttSection(ca_file=tmp_path / "ca.pem"))
    with pytest.raises(ConfigError, match="TLS files"):
        tls_context(MqttSection(tls=True, ca_file=tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="cert_file"):
        tls_context(MqttSection(tls=True, key_file=tmp_path / "k.pem"))
    ctx = tls_context(MqttSection(tls=True, tls_insecure=True))
    assert ctx is not None and not ctx.check_hostname


def test_backoff_is_capped_jittered_exponential() -> None:
    lo, hi = 1.0, 60.0
    assert [backoff(a, lo, hi, lambda: 1.0) for a in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [backoff(a, lo, hi, lambda: 0.0) for a in range(3)] == [0.5, 1, 2]
    assert backoff(10_000, lo, hi, lambda: 0.5) <= hi


# -- against the broker ----------------------------------------------------------------------------
def test_events_state_discovery_and_commands(broker: Broker) -> None:  # noqa: F811
    async def main() -> None:
        port = broker.port
        hub = stub_hub(["Alice", "Bob"])
        stats = MqttStats()
        sink = MqttSink(hub, settings(port), stats=stats, poll_interval_s=0.05)
        async with Recorder(port) as rec, running(sink) as task:
            await rec.next(lambda m: m.topic == "voiceid/available" and m.payload == "online")
            doc = json.loads((await rec.next(lambda m: m.topic == DISCOVERY)).payload)
            assert {"dev", "o", "cmps", "availability_topic"} <= set(doc)
            assert doc["cmps"]["person_alice"]["subtype"] == "Alice"
            assert "object_id" not in json.dumps(doc)

            # events: in order, exact payloads, ids for de-duplication
            evs = conversation("kitchen", 6)
            evs.append(UnknownSpeaker(**stamp("kitchen"), score=0.2, best="Bob"))
            evs.append(SpeakerStarted(**stamp("kitchen"), name="Bob", score=0.9))
            hub.bus.publish(evs)
            got = await rec.count(EVENTS, len(evs))
            assert [json.loads(m.payload) for m in got] == [e.to_dict() for e in evs]
            assert not any(m.retain for m in got)
            await until(lambda: stats.events_published == len(evs))
            assert [m.payload for m in rec.on("voiceid/kitchen/speaker")][-1] == "Bob"
            attrs = json.loads(rec.on("voiceid/kitchen/speaker/attributes")[-1].payload)
            assert attrs["score"] == 0.9 and attrs["threshold"] == 0.6
            assert attrs["since"] == evs[-1].wall_time and attrs["event_id"] == evs[-1].id
            ha = [json.loads(m.payload) for m in rec.on("voiceid/kitchen/event")]
            assert [e["event_type"] for e in ha] == ["identified"] * 3 + ["unknown", "identified"]
            assert len(rec.on("voiceid/person/bob/identified")) == 2
            # the stream joined the discovery
            doc = json.loads(rec.on(DISCOVERY)[-1].payload)
            assert {"kitchen_speaker", "kitchen_event", "kitchen_enabled"} <= set(doc["cmps"])

            # retained: a late subscriber sees the current state at once
            async with Recorder(
                port, ["voiceid/available", "voiceid/kitchen/#", DISCOVERY]
            ) as late:
                speaker = await late.next(lambda m: m.topic == "voiceid/kitchen/speaker")
                assert speaker.retain and speaker.payload == "Bob"
                online = await late.next(lambda m: m.topic == "voiceid/available")
                assert online.retain and online.payload == "online"
                disc = await late.next(lambda m: m.topic == DISCOVERY)
                assert disc.retain and "kitchen_speaker" in json.loads(disc.payload)["cmps"]
                state = await late.next(lambda m: m.topic == "voiceid/kitchen/enabled/state")
                assert state.retain and state.payload == "ON"

            # Home Assistant restarts: discovery again
            mark = len(rec.msgs)
            await send(port, "homeassistant/status", "online")
            await rec.next(lambda m: m.topic == DISCOVERY, mark)

            # commands: OFF/ON change hub.disabled and are echoed
            mark = len(rec.msgs)
            await send(port, "voiceid/kitchen/enabled/set", "OFF")
            await until(lambda: "kitchen" in hub.disabled)
            m = await rec.next(lambda m: m.topic == "voiceid/kitchen/enabled/state", mark)
            assert m.payload == "OFF"
            mark = len(rec.msgs)
            await send(port, "voiceid/kitchen/enabled/set", "on")
            await until(lambda: "kitchen" not in hub.disabled)
            m = await rec.next(lambda m: m.topic == "voiceid/kitchen/enabled/state", mark)
            assert m.payload == "ON"
            await send(port, "voiceid/kitchen/enabled/set", "sideways")  # ignored, logged
            assert stats.commands == 2

            # a new live stream is discovered (polled) and starts as "none"
            mark = len(rec.msgs)
            hub.open_stream("garage", encoding=None)
            m = await rec.next(
                lambda m: (
                    m.topic == DISCOVERY and "garage_speaker" in json.loads(m.payload)["cmps"]
                ),
                mark,
            )
            m = await rec.next(lambda m: m.topic == "voiceid/garage/speaker", mark)
            assert m.payload == "none"
            stats_doc = json.loads(
                (
                    await rec.next(
                        lambda m: m.topic == "voiceid/stats" and '"streams":1' in m.payload, mark
                    )
                ).payload
            )
            assert stats_doc["stream_names"] == ["garage"] and stats_doc["connected"] is True
            assert stats_doc["events_published"] == len(evs)

            # Bob's profile is deleted: his trigger is removed, then left out
            mark = len(rec.msgs)
            hub.set_scorer(index(["Alice"]))
            removing = json.loads((await rec.next(lambda m: m.topic == DISCOVERY, mark)).payload)
            assert removing["cmps"]["person_bob"] == {"p": "device_automation"}
            disc = rec.on(DISCOVERY, mark)
            await until(lambda: len(rec.on(DISCOVERY, mark)) >= 2)
            clean = json.loads(rec.on(DISCOVERY, mark)[1].payload)
            assert "person_bob" not in clean["cmps"] and "person_alice" in clean["cmps"]
            assert disc

            # clean shutdown: offline, explicitly
            mark = len(rec.msgs)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            m = await rec.next(lambda m: m.topic == "voiceid/available", mark)
            assert m.payload == "offline"
            assert not stats.connected and stats.events_dropped == 0
            assert stats.reconnects == 0 and stats.connect_failures == 0

    run(main())


def test_bus_close_flushes_and_returns(broker: Broker) -> None:  # noqa: F811
    async def main() -> None:
        hub = stub_hub()
        stats = MqttStats()
        sink = MqttSink(hub, settings(broker.port), stats=stats, poll_interval_s=0.05)
        async with Recorder(broker.port) as rec:
            task = asyncio.create_task(sink.run())
            await rec.next(lambda m: m.topic == "voiceid/available" and m.payload == "online")
            evs = conversation("hall", 30)
            hub.bus.publish(evs)
            hub.bus.close()  # what hub.close() does after the streams' last events
            await asyncio.wait_for(task, 5)  # returns by itself, no exception
            got = await rec.count(EVENTS, len(evs))
            assert [json.loads(m.payload)["id"] for m in got] == [e.id for e in evs]
            await rec.next(lambda m: m.topic == "voiceid/available" and m.payload == "offline")
            assert stats.events_published == len(evs) and not stats.connected

    run(main())


CHILD = """
import asyncio, sys
from tests.sinks.test_mqtt import settings, stub_hub
from voiceid.sinks.mqtt import MqttSink
port, client_id = int(sys.argv[1]), sys.argv[2]
asyncio.run(MqttSink(stub_hub(), settings(port, client_id=client_id)).run())
"""


def test_last_will_when_the_daemon_dies(broker: Broker) -> None:  # noqa: F811
    async def main() -> None:
        async with Recorder(broker.port, ["voiceid/available"]) as rec:
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(broker.port), "voiceid-child"], cwd=REPO
            )
            try:
                await until(lambda: any(m.payload == "online" for m in rec.msgs), timeout=20)
                mark = len(rec.msgs)
                os.kill(child.pid, signal.SIGKILL)  # no clean shutdown: the broker speaks
                m = await rec.next(lambda m: True, mark)
                assert m.payload == "offline"
            finally:
                child.kill()
                child.wait()
        # and it is retained
        async with Recorder(broker.port, ["voiceid/available"]) as late:
            m = await late.next(lambda m: True)
            assert m.retain and m.payload == "offline"

    run(main(), timeout=30)


def test_broker_killed_and_restarted(persistent_broker: Broker) -> None:  # noqa: F811
    """The broker dies mid-stream and comes back on the same port.

    Buffer of 20: of the 50 events published while it is down, the oldest 30 are
    dropped (counted) and the newest 20 arrive in order after the reconnect, behind a
    fresh ``online``, discovery and speaker state.
    """
    b = persistent_broker
    buffer, before, during = 20, 10, 50

    async def main() -> dict[str, int]:
        port = b.port
        hub = stub_hub(["Alice", "Bob"])
        stats = MqttStats()
        sink = MqttSink(
            hub, settings(port, buffer_events=buffer), stats=stats, poll_interval_s=0.05
        )
        rest_of_hub = hub.bus.subscribe(maxsize=1000)
        async with (
            Recorder(port, persistent=True, client_id="rec-kill") as rec,
            running(sink) as task,
        ):
            await rec.next(lambda m: m.topic == "voiceid/available" and m.payload == "online")
            first = conversation("room", before)
            hub.bus.publish(first)
            await rec.count(EVENTS, before)
            await until(lambda: stats.events_published == before)

            b.kill()
            await until(lambda: not stats.connected, what="the sink to notice")
            second = conversation("room", during)
            for i in range(0, during, 10):  # spread over a little time
                hub.bus.publish(second[i : i + 10])
                await asyncio.sleep(0.02)
            assert stats.buffered == buffer and stats.events_dropped == during - buffer
            assert not task.done()
            hub.open_stream("meanwhile", encoding=None).close()  # the hub still works
            assert rest_of_hub.delivered + rest_of_hub._queue.qsize() == before + during

            mark = len(rec.msgs)
            seen = {json.loads(m.payload)["id"] for m in rec.on(EVENTS)}
            b.start()

            def new_ids() -> list[str]:
                # the persistent broker may redeliver a few old ones: consumers de-duplicate
                ids = [json.loads(m.payload)["id"] for m in rec.on(EVENTS, mark)]
                return [i for i in dict.fromkeys(ids) if i not in seen]

            await until(lambda: len(new_ids()) >= buffer)
            await until(lambda: stats.events_published == before + buffer)
            arrived = new_ids()
            assert arrived == [e.id for e in second[-buffer:]]
            assert stats.reconnects == 1 and stats.connected and stats.buffered == 0
            # after the reconnect: online, then discovery and state, then the events
            after = [m for m in rec.msgs[mark:] if not m.retain]  # live, not the broker's copy
            topics = [m.topic for m in after]
            first_new = next(
                i for i, m in enumerate(after) if m.topic == EVENTS and arrived[0] in m.payload
            )
            assert topics.index("voiceid/available") < topics.index(DISCOVERY) < first_new
            assert topics.index("voiceid/room/speaker") < first_new
            assert [m.payload for m in after if m.topic == "voiceid/available"][-1] == "online"
            # and it goes on
            last = SpeakerStarted(**stamp("room"), name="Alice", score=0.7)
            hub.bus.publish([last])
            m = await rec.next(lambda m: m.topic == EVENTS and last.id in m.payload, mark)
            assert json.loads(m.payload) == last.to_dict()
            return {
                "published": before + during + 1,
                "published_while_down": during,
                "buffered": buffer,
                "dropped": stats.events_dropped,
                "arrived_after_restart": len(arrived),
                "connect_failures": stats.connect_failures,
            }

    result = run(main(), uvloop=True)
    print("broker kill:", result)
    assert result["arrived_after_restart"] == during - result["dropped"]


def test_tls_and_password(tmp_path: Path) -> None:
    openssl, passwd = shutil.which("openssl"), shutil.which("mosquitto_passwd")
    if openssl is None or passwd is None:
        pytest.skip("needs openssl and mosquitto_passwd")
    cert, key, pwfile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "passwd"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run([passwd, "-b", "-c", pwfile, "voiceid", "right"], check=True)
    (tmp_path / "good").write_text("right\n")
    (tmp_path / "bad").write_text("wrong\n")
    conf = f"certfile {cert}\nkeyfile {key}\npassword_file {pwfile}\n"

    async def main(b: Broker) -> None:
        common = {"tls": True, "ca_file": cert, "username": "voiceid"}
        good, bad = MqttStats(), MqttStats()
        ok = MqttSink(
            stub_hub(), settings(b.port, password_file=tmp_path / "good", **common), stats=good
        )
        refused = MqttSink(
            stub_hub(), settings(b.port, password_file=tmp_path / "bad", **common), stats=bad
        )
        async with running(ok), running(refused) as refused_task:
            await until(lambda: good.connected and good.published >= 3)
            await until(lambda: bad.connect_failures >= 2)
            assert not bad.connected and not refused_task.done()  # retries, never raises
            assert bad.last_error is not None and "wrong" not in bad.last_error

    with Broker(tmp_path / "b", anonymous=False, extra_config=conf) as b:
        run(main(b))


def test_real_speech_through_a_live_stream(
    broker: Broker,  # noqa: F811
    ge2e_embedder: Any,
    speakers: dict[str, list[Path]],
) -> None:
    """End to end: a live stream of real speech → the enrolled name on MQTT."""
    from voiceid.audio.io import load_audio

    emb = ge2e_embedder
    (a, a_files), (b, b_files) = list(speakers.items())[:2]
    enrolled = np.stack([emb.embed(load_audio(a_files[0])), emb.embed(load_audio(b_files[0]))])
    profiles = ProfileIndex.from_matrix(
        emb.fingerprint, [a, b], [f"{1:032x}", f"{2:032x}"], enrolled
    )
    speech = load_audio(a_files[1])

    async def main() -> None:
        cfg = StreamConfig(decision=DecisionConfig(enter=emb.card.threshold))
        hub = Hub(emb, profiles, cfg, EngineConfig(max_batch=4))
        await hub.start()
        sink = MqttSink(hub, settings(broker.port), stats=MqttStats(), poll_interval_s=0.05)
        try:
            async with Recorder(broker.port) as rec, running(sink):
                await rec.next(lambda m: m.topic == "voiceid/available")
                live = hub.open_stream("lounge", encoding=None)
                await rec.next(lambda m: m.topic == "voiceid/lounge/speaker")
                step = 8000  # 0.5 s at a time, faster than real time
                for i in range(0, len(speech), step):
                    live.feed_samples(speech[i : i + step])
                    await asyncio.sleep(0.01)
                m = await rec.next(lambda m: m.topic == "voiceid/lounge/speaker" and m.payload == a)
                assert not m.retain
                started = await rec.next(
                    lambda m: m.topic == EVENTS and "speaker_started" in m.payload
                )
                assert json.loads(started.payload)["name"] == a
                await rec.next(lambda m: m.topic == f"voiceid/person/{a}/identified")
                mark = len(rec.msgs)
                live.close()
                m = await rec.next(lambda m: m.topic == "voiceid/lounge/speaker", mark)
                assert m.payload == "none"
        finally:
            await hub.close()

    run(main(), timeout=60)
