"""MQTT for voiceid, the pure part: topics, payloads, Home Assistant discovery, state.

No I/O here: :class:`MqttState` takes events, profile/stream snapshots, commands and
Home Assistant's birth message, and returns :class:`Message` tuples (topic, payload,
qos, retain) for the adapter (:mod:`voiceid.sinks.mqtt`) to publish. Everything can be
tested without a broker.

Topics (``<p>`` = ``mqtt.prefix``, ``<s>`` = a stream, see docs/mqtt.md):

* ``<p>/available`` - ``online`` / ``offline`` (retained; ``offline`` is the last will)
* ``<p>/events`` - every event as JSON (``Event.to_dict()``), qos 1, not retained
* ``<p>/<s>/speaker`` - current speaker: a name, ``none`` or ``unknown`` (retained)
* ``<p>/<s>/speaker/attributes`` - JSON: score, threshold, since (unix s), ... (retained)
* ``<p>/<s>/event`` - Home Assistant ``event`` entity: ``{"event_type": "identified"|...}``
* ``<p>/<s>/enabled/set`` (commands in) and ``<p>/<s>/enabled/state`` (retained ON/OFF)
* ``<p>/person/<slug>/identified`` - one person recognised (device trigger topic)
* ``<p>/stats`` - counters every ``stats_interval_s``
* ``<discovery_prefix>/device/<device_id>/config`` - Home Assistant device discovery
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from voiceid import __version__
from voiceid.stream.events import (
    Event,
    Scores,
    SpeakerChanged,
    SpeakerEnded,
    SpeakerStarted,
    UnknownSpeaker,
)

ONLINE: Final = "online"
OFFLINE: Final = "offline"
NO_SPEAKER: Final = "none"  # nobody is speaking (or the stream is closed)
UNKNOWN_SPEAKER: Final = "unknown"  # voice that matches nobody enrolled
ON: Final = "ON"
OFF: Final = "OFF"
HA_EVENT_TYPES: Final = ("identified", "unknown")  # the `event` entity's event types
TRIGGER_TYPE: Final = "identified"  # device_automation trigger type (subtype: the name)

_STREAM_PLATFORMS: Final = frozenset({"sensor", "event", "switch"})


class Message(NamedTuple):
    """One MQTT publication."""

    topic: str
    payload: str
    qos: int = 1
    retain: bool = False


class Outgoing(NamedTuple):
    """What one event produces.

    ``state``: retained state (speaker, attributes, discovery); only the latest matters
    and it is re-sent in full after every reconnect, so it is never buffered.
    ``events``: the event's own messages (``<p>/events``, the HA ``event`` entity, the
    person trigger), buffered while disconnected and published in order.
    """

    state: list[Message]
    events: list[Message]


class Command(NamedTuple):
    """``<p>/<s>/enabled/set``: identification of ``stream`` on (True) or off."""

    stream: str
    enabled: bool


def dumps(obj: Any) -> str:
    """Compact JSON; NaN/inf become null (JSON has no such numbers)."""
    return json.dumps(_finite(obj), separators=(",", ":"), ensure_ascii=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def topic_level(name: str) -> str:
    """``name`` as one topic level: ``/``, ``+``, ``#`` and control characters → ``_``."""
    level = "".join("_" if c in "/+#" or unicodedata.category(c) == "Cc" else c for c in name)
    return level or "_"


def slug(name: str) -> str:
    """A stable id made of ``[a-z0-9_]`` for component ids, entity ids and person topics.

    A name that already is one (ignoring case) is kept (``Alice`` → ``alice``); any other
    gets a short hash of the exact name so different names never share an id
    (``Mary Ann`` → ``mary_ann_<6 hex>``).
    """
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    base = re.sub(r"[^a-z0-9]+", "_", folded).strip("_")
    if base and base == name.lower():
        return base
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:6]
    return f"{base}_{digest}" if base else f"x{digest}"


@dataclass(frozen=True)
class Topics:
    """Every topic name, from the configuration's prefixes and device id."""

    prefix: str = "voiceid"
    discovery_prefix: str = "homeassistant"
    device_id: str = "voiceid"

    @property
    def available(self) -> str:
        return f"{self.prefix}/available"

    @property
    def events(self) -> str:
        return f"{self.prefix}/events"

    @property
    def stats(self) -> str:
        return f"{self.prefix}/stats"

    @property
    def command_filter(self) -> str:
        """Subscription for every stream's enable command."""
        return f"{self.prefix}/+/enabled/set"

    @property
    def ha_status(self) -> str:
        """Home Assistant's birth/last-will topic."""
        return f"{self.discovery_prefix}/status"

    @property
    def discovery(self) -> str:
        return f"{self.discovery_prefix}/device/{self.device_id}/config"

    def speaker(self, stream: str) -> str:
        return f"{self.prefix}/{topic_level(stream)}/speaker"

    def attributes(self, stream: str) -> str:
        return f"{self.prefix}/{topic_level(stream)}/speaker/attributes"

    def stream_event(self, stream: str) -> str:
        return f"{self.prefix}/{topic_level(stream)}/event"

    def enabled_set(self, stream: str) -> str:
        return f"{self.prefix}/{topic_level(stream)}/enabled/set"

    def enabled_state(self, stream: str) -> str:
        return f"{self.prefix}/{topic_level(stream)}/enabled/state"

    def person(self, name: str) -> str:
        return f"{self.prefix}/person/{slug(name)}/identified"

    def command_level(self, topic: str) -> str | None:
        """The stream level of ``<p>/<level>/enabled/set``, else None."""
        head, tail = f"{self.prefix}/", "/enabled/set"
        if not (topic.startswith(head) and topic.endswith(tail)):
            return None
        level = topic[len(head) : len(topic) - len(tail)]
        return level if level and "/" not in level else None

    def stream_level_of(self, topic: str) -> str | None:
        """The stream level of one of this scheme's per-stream topics, else None."""
        head = f"{self.prefix}/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :]
        for tail in ("/speaker", "/event", "/enabled/state", "/enabled/set"):
            if rest.endswith(tail):
                level = rest[: len(rest) - len(tail)]
                return level if level and "/" not in level else None
        return None


@dataclass(frozen=True)
class DeviceInfo:
    """The Home Assistant device (``dev``) and discovery origin (``o``)."""

    name: str = "voiceid"
    manufacturer: str = "voiceid"
    model: str = "speaker verification daemon"
    sw_version: str = __version__

    def dev(self, device_id: str) -> dict[str, Any]:
        return {
            "ids": [device_id],
            "name": self.name,
            "mf": self.manufacturer,
            "mdl": self.model,
            "sw": self.sw_version,
        }

    def origin(self) -> dict[str, Any]:
        return {"name": "voiceid", "sw": self.sw_version}


@dataclass
class StreamState:
    """What Home Assistant knows about one stream."""

    name: str
    speaker: str = NO_SPEAKER  # a name, "none" or "unknown"
    score: float | None = None
    since: float | None = None  # unix s when ``speaker`` took this value
    event_id: str | None = None  # the event that set it
    last_voice: float | None = None  # unix s of the last voiced evidence while unknown
    enabled: bool = True
    open: bool = False  # in hub.streams right now


@dataclass
class MqttState:
    """Per-stream state, enrolled people and discovery, as messages.

    ``threshold``: the decision threshold shown in the attributes. ``unknown_hold_s``:
    an ``unknown`` speaker turns back to ``none`` when no voiced evidence (``scores``
    events) came for this long, because the core announces an unknown segment once
    and says nothing when it ends.
    """

    topics: Topics = field(default_factory=Topics)
    threshold: float | None = None
    discovery: bool = True
    commands: bool = True
    unknown_hold_s: float = 3.0
    device: DeviceInfo = field(default_factory=DeviceInfo)
    streams: dict[str, StreamState] = field(default_factory=dict)
    persons: tuple[str, ...] = ()
    # removed component id -> platform: sent as {"p": platform} so HA deletes it
    tombstones: dict[str, str] = field(default_factory=dict)

    # -- availability ---------------------------------------------------------------
    def online(self) -> Message:
        return Message(self.topics.available, ONLINE, 1, True)

    def offline(self) -> Message:
        return Message(self.topics.available, OFFLINE, 1, True)

    def snapshot(self) -> list[Message]:
        """Everything retained, for a fresh connection: availability, discovery, states."""
        out = [self.online(), *self.discovery_messages()]
        for st in self.streams.values():
            out += self._stream_state(st)
        return out

    # -- events -----------------------------------------------------------------------
    def on_event(self, event: Event) -> Outgoing:
        st, new = self._ensure(event.stream)
        events = [Message(self.topics.events, dumps(event.to_dict()), 1, False)]
        changed = rescored = False
        if isinstance(event, SpeakerStarted | SpeakerChanged):
            changed = self._set(st, event.name, event.score, event)
            extra: dict[str, Any] = (
                {"previous": event.previous} if isinstance(event, SpeakerChanged) else {}
            )
            payload = {
                "event_type": "identified",
                "name": event.name,
                "score": event.score,
                **extra,
                "stream": event.stream,
                "id": event.id,
                "wall_time": event.wall_time,
            }
            events.append(Message(self.topics.stream_event(st.name), dumps(payload), 1, False))
            person = {
                "name": event.name,
                "stream": event.stream,
                "score": event.score,
                "id": event.id,
                "wall_time": event.wall_time,
            }
            events.append(Message(self.topics.person(event.name), dumps(person), 1, False))
        elif isinstance(event, SpeakerEnded):
            if st.speaker == event.name:
                changed = self._set(st, NO_SPEAKER, None, event)
        elif isinstance(event, UnknownSpeaker):
            changed = self._set(st, UNKNOWN_SPEAKER, event.score, event)
            st.last_voice = event.wall_time
            payload = {
                "event_type": "unknown",
                "score": event.score,
                "best": event.best,
                "stream": event.stream,
                "id": event.id,
                "wall_time": event.wall_time,
            }
            events.append(Message(self.topics.stream_event(st.name), dumps(payload), 1, False))
        elif isinstance(event, Scores):
            if st.speaker == UNKNOWN_SPEAKER:
                st.last_voice = event.wall_time
            else:
                score = dict(event.top).get(st.speaker)
                if score is not None and (
                    st.score is None or round(score, 3) != round(st.score, 3)
                ):
                    st.score = score
                    rescored = True
        state: list[Message] = []
        if new:
            state += self.discovery_messages()
            state += self._stream_state(st)
        elif changed:
            state += [self._speaker(st), self._attributes(st)]
        elif rescored:
            state.append(self._attributes(st))
        return Outgoing(state, events)

    def _set(self, st: StreamState, speaker: str, score: float | None, event: Event) -> bool:
        changed = st.speaker != speaker or st.score != score
        if st.speaker != speaker:
            st.since = event.wall_time
        st.speaker, st.score, st.event_id = speaker, score, event.id
        return changed

    # -- hub snapshots ------------------------------------------------------------------
    def sync(
        self,
        open_streams: Iterable[str],
        persons: Iterable[str],
        disabled: Collection[str],
        now: float,
    ) -> list[Message]:
        """Compare with the hub (polled): new/closed streams, profile changes, enabled
        flags, expired ``unknown``; returns the state messages for what changed."""
        out: list[Message] = []
        discovery_changed = False
        opened = dict.fromkeys(open_streams)  # hub order, for stable discovery
        for name in opened:
            st, new = self._ensure(name)
            st.open = True
            if new:
                discovery_changed = True
                st.enabled = name not in disabled
                out += self._stream_state(st)
        for st in self.streams.values():
            if st.open and st.name not in opened:
                st.open = False
                if st.speaker != NO_SPEAKER:
                    out += self._reset(st, now)
            elif st.speaker == UNKNOWN_SPEAKER:
                last = st.last_voice if st.last_voice is not None else st.since or now
                if now - last > self.unknown_hold_s:
                    out += self._reset(st, now)
            enabled = st.name not in disabled
            if enabled != st.enabled:
                st.enabled = enabled
                if self.commands:
                    out.append(self._enabled(st.name, enabled))
        names = tuple(sorted(set(persons)))
        if names != self.persons:
            for gone in set(self.persons) - set(names):
                self.tombstones[self._person_cid(gone)] = "device_automation"
            for added in names:
                self.tombstones.pop(self._person_cid(added), None)
            self.persons = names
            discovery_changed = True
        if discovery_changed:
            out = self.discovery_messages() + out
        return out

    def _reset(self, st: StreamState, now: float) -> list[Message]:
        st.speaker, st.score, st.since = NO_SPEAKER, None, now
        st.event_id = st.last_voice = None
        return [self._speaker(st), self._attributes(st)]

    def _ensure(self, name: str) -> tuple[StreamState, bool]:
        st = self.streams.get(name)
        if st is not None:
            return st, False
        st = self.streams[name] = StreamState(name)
        self.tombstones = {
            k: v for k, v in self.tombstones.items() if k not in self._stream_components(st)
        }
        return st, True

    # -- commands and Home Assistant ------------------------------------------------------
    def parse_command(self, topic: str, payload: bytes | str) -> Command | None:
        """A command from ``<p>/<s>/enabled/set``; None for other topics.

        Raises ``ValueError`` for a payload other than ON/OFF (any case).
        """
        if not self.commands:
            return None
        level = self.topics.command_level(topic)
        if level is None:
            return None
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        value = text.strip().upper()
        if value not in (ON, OFF):
            raise ValueError(f"{topic}: expected ON or OFF, got {text[:40]!r}")
        stream = next((s for s in self.streams if topic_level(s) == level), level)
        return Command(stream, value == ON)

    def enabled_echo(self, stream: str, enabled: bool) -> list[Message]:
        """The retained ``enabled/state`` after a command (known stream or not)."""
        st = self.streams.get(stream)
        if st is not None:
            st.enabled = enabled
        return [self._enabled(stream, enabled)]

    def on_ha_status(self, payload: bytes | str) -> list[Message]:
        """Home Assistant (re)started (``online`` on ``<discovery_prefix>/status``)."""
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        return self.discovery_messages() if text.strip() == ONLINE else []

    def absorb_retained_discovery(self, payload: bytes | str) -> list[Message]:
        """Our discovery config as the broker kept it (from an earlier run, say).

        Streams it lists are kept (their speaker set to ``none``); any other component
        we no longer have (a person deleted while we were down, the switch after
        ``commands`` was turned off) is removed from Home Assistant. Returns the
        messages to publish (none when nothing differs, e.g. our own config echoed).
        """
        if not self.discovery:
            return []
        try:
            doc = json.loads(payload) if payload else None
        except ValueError:
            return []
        cmps = doc.get("cmps", doc.get("components")) if isinstance(doc, dict) else None
        if not isinstance(cmps, dict):
            return []
        live = self.components()
        stale: dict[str, tuple[str, dict[str, Any]]] = {}
        for cid, conf in cmps.items():
            if cid in live or cid in self.tombstones or not isinstance(conf, dict):
                continue
            platform = conf.get("p", conf.get("platform"))
            if isinstance(platform, str) and set(conf) - {"p", "platform"}:
                stale[cid] = (platform, conf)
        if not stale:
            return []
        out: list[Message] = []
        for platform, conf in stale.values():
            level = self._stream_level(conf) if platform in _STREAM_PLATFORMS else None
            if level is not None and not any(topic_level(s) == level for s in self.streams):
                st, _ = self._ensure(level)
                out += self._stream_state(st)
        live = self.components()
        for cid, (platform, _) in stale.items():
            if cid not in live:
                self.tombstones[cid] = platform
        return self.discovery_messages() + out

    def _stream_level(self, conf: Mapping[str, Any]) -> str | None:
        for key in ("state_topic", "stat_t", "command_topic", "cmd_t"):
            topic = conf.get(key)
            if isinstance(topic, str) and (level := self.topics.stream_level_of(topic)):
                return level
        return None

    # -- discovery ----------------------------------------------------------------------
    def discovery_messages(self) -> list[Message]:
        """The device config (retained); first with removed components as ``{"p": ...}``
        (Home Assistant deletes them), then without them, as HA's docs ask."""
        if not self.discovery:
            return []
        topic = self.topics.discovery
        clean = Message(topic, dumps(self.discovery_document()), 1, True)
        if not self.tombstones:
            return [clean]
        removing = Message(topic, dumps(self.discovery_document(removals=True)), 1, True)
        return [removing, clean]

    def discovery_document(self, *, removals: bool = False) -> dict[str, Any]:
        """Home Assistant device discovery: ``dev``, ``o``, shared availability, ``cmps``."""
        cmps: dict[str, dict[str, Any]] = dict(self.components())
        if removals:
            cmps.update({cid: {"p": p} for cid, p in self.tombstones.items()})
        return {
            "dev": self.device.dev(self.topics.device_id),
            "o": self.device.origin(),
            "availability_topic": self.topics.available,
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "qos": 1,
            "cmps": cmps,
        }

    def components(self) -> dict[str, dict[str, Any]]:
        """Live components by stable id: device diagnostics, per stream, per person."""
        dev = self.topics.device_id
        ent = _entity_part(dev)
        cmps: dict[str, dict[str, Any]] = {
            "streams": {
                "p": "sensor",
                "name": "Open streams",
                "unique_id": f"{dev}_streams",
                "default_entity_id": f"sensor.{ent}_open_streams",
                "state_topic": self.topics.stats,
                "value_template": "{{ value_json.streams }}",
                "state_class": "measurement",
                "entity_category": "diagnostic",
                "icon": "mdi:microphone-message",
            }
        }
        for st in self.streams.values():
            cmps.update(self._stream_components(st))
        for name in self.persons:
            cmps[self._person_cid(name)] = {
                "p": "device_automation",
                "automation_type": "trigger",
                "topic": self.topics.person(name),
                "type": TRIGGER_TYPE,
                "subtype": name,
            }
        return cmps

    def _stream_components(self, st: StreamState) -> dict[str, dict[str, Any]]:
        dev, s = self.topics.device_id, slug(st.name)
        ent = f"{_entity_part(dev)}_{s}"
        out: dict[str, dict[str, Any]] = {
            f"{s}_speaker": {
                "p": "sensor",
                "name": f"{st.name} speaker",
                "unique_id": f"{dev}_{s}_speaker",
                "default_entity_id": f"sensor.{ent}_speaker",
                "state_topic": self.topics.speaker(st.name),
                "json_attributes_topic": self.topics.attributes(st.name),
                "icon": "mdi:account-voice",
            },
            f"{s}_event": {
                "p": "event",
                "name": f"{st.name} identification",
                "unique_id": f"{dev}_{s}_event",
                "default_entity_id": f"event.{ent}_identification",
                "state_topic": self.topics.stream_event(st.name),
                "event_types": list(HA_EVENT_TYPES),
                "icon": "mdi:account-search",
            },
        }
        if self.commands:
            out[f"{s}_enabled"] = {
                "p": "switch",
                "name": f"{st.name} identification enabled",
                "unique_id": f"{dev}_{s}_enabled",
                "default_entity_id": f"switch.{ent}_enabled",
                "command_topic": self.topics.enabled_set(st.name),
                "state_topic": self.topics.enabled_state(st.name),
                "payload_on": ON,
                "payload_off": OFF,
                "state_on": ON,
                "state_off": OFF,
                "entity_category": "config",
                "icon": "mdi:microphone",
            }
        return out

    @staticmethod
    def _person_cid(name: str) -> str:
        return f"person_{slug(name)}"

    # -- per-stream messages ----------------------------------------------------------------
    def _stream_state(self, st: StreamState) -> list[Message]:
        out = [self._speaker(st), self._attributes(st)]
        if self.commands:
            out.append(self._enabled(st.name, st.enabled))
        return out

    def _speaker(self, st: StreamState) -> Message:
        return Message(self.topics.speaker(st.name), st.speaker, 1, True)

    def _attributes(self, st: StreamState) -> Message:
        attrs = {
            "score": None if st.score is None else round(st.score, 4),
            "threshold": self.threshold,
            "since": st.since,
            "stream": st.name,
            "event_id": st.event_id,
        }
        return Message(self.topics.attributes(st.name), dumps(attrs), 1, True)

    def _enabled(self, stream: str, enabled: bool) -> Message:
        return Message(self.topics.enabled_state(stream), ON if enabled else OFF, 1, True)

    # -- stats --------------------------------------------------------------------------
    def stats_message(self, payload: Mapping[str, Any]) -> Message:
        """``<p>/stats`` (qos 0, not retained)."""
        return Message(self.topics.stats, dumps(dict(payload)), 0, False)


def stats_payload(
    counters: Mapping[str, Any], open_streams: Collection[str], now: float
) -> dict[str, Any]:
    """The stats document: open streams first, then the sink's counters and uptime."""
    since = counters.get("connected_since")
    return {
        "streams": len(open_streams),
        "stream_names": sorted(open_streams),
        **counters,
        "connected_for_s": None if since is None else round(now - since, 1),
        "wall_time": now,
    }


def _entity_part(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "voiceid"
