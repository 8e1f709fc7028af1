"""The pure MQTT part: topics, payloads, Home Assistant discovery, state (no broker)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from voiceid.sinks.mqtt_topics import (
    HA_EVENT_TYPES,
    Command,
    Message,
    MqttState,
    Topics,
    dumps,
    slug,
    stats_payload,
    topic_level,
)
from voiceid.stream.events import (
    Scores,
    SpeakerChanged,
    SpeakerEnded,
    SpeakerStarted,
    UnknownSpeaker,
)

T = Topics()
DISCOVERY = "homeassistant/device/voiceid/config"


def stamp(stream: str, n: int, t: float = 1000.0) -> dict[str, Any]:
    return {
        "id": f"tok-{stream}:{n}",
        "stream": stream,
        "stream_time_s": n * 0.5,
        "wall_time": t + n,
        "latency_ms": 3.0,
    }


def by_topic(msgs: list[Message]) -> dict[str, list[Message]]:
    out: dict[str, list[Message]] = {}
    for m in msgs:
        out.setdefault(m.topic, []).append(m)
    return out


def discovery_docs(msgs: list[Message]) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in msgs if m.topic == DISCOVERY]


def walk_keys(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in walk_keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in walk_keys(v)}
    return set()


# -- names and topics ---------------------------------------------------------------------
def test_slug_is_stable_distinct_and_safe() -> None:
    assert slug("alice") == "alice"
    assert slug("Alice") == "alice"  # profile names ignore case anyway
    assert slug("Mary Ann") == slug("Mary Ann")
    names = ["Mary Ann", "mary_ann", "Mary-Ann", "Zoë", "Zoe", "李雷", "kitchen.2", "kitchen_2"]
    slugs = [slug(n) for n in names]
    assert len(set(slugs)) == len(names)
    assert all(re.fullmatch(r"[a-z0-9_]+", s) for s in slugs)


def test_topic_level_never_splits_or_wildcards() -> None:
    assert topic_level("kitchen") == "kitchen"
    assert topic_level("a/b+#\x00") == "a_b___"
    assert topic_level("") == "_"


def test_topic_parsing() -> None:
    assert T.command_level("voiceid/kitchen/enabled/set") == "kitchen"
    assert T.command_level("voiceid/a/b/enabled/set") is None
    assert T.command_level("voiceid//enabled/set") is None
    assert T.command_level("other/kitchen/enabled/set") is None
    assert T.stream_level_of("voiceid/kitchen/speaker") == "kitchen"
    assert T.stream_level_of("voiceid/kitchen/enabled/state") == "kitchen"
    assert T.stream_level_of("voiceid/stats") is None
    t = Topics("home/voice", "ha", "dev-1")
    assert t.speaker("x") == "home/voice/x/speaker"
    assert t.discovery == "ha/device/dev-1/config"
    assert t.ha_status == "ha/status"
    assert t.command_level("home/voice/x/enabled/set") == "x"


# -- events --------------------------------------------------------------------------------
def test_first_event_of_a_stream_brings_discovery_and_state() -> None:
    st = MqttState(threshold=0.62)
    ev = SpeakerStarted(**stamp("kitchen", 1), name="Alice", score=0.81)
    out = st.on_event(ev)
    # the event itself: <p>/events, the HA event entity, the person trigger; not retained
    assert [m.topic for m in out.events] == [
        "voiceid/events",
        "voiceid/kitchen/event",
        "voiceid/person/alice/identified",
    ]
    assert all(m.qos == 1 and not m.retain for m in out.events)
    assert json.loads(out.events[0].payload) == ev.to_dict()
    ha = json.loads(out.events[1].payload)
    assert ha["event_type"] == "identified" and ha["name"] == "Alice" and ha["id"] == ev.id
    assert json.loads(out.events[2].payload)["stream"] == "kitchen"
    # retained state: discovery (the stream is new), then the speaker and attributes
    topics = by_topic(out.state)
    assert all(m.retain for m in out.state)
    assert out.state[0].topic == DISCOVERY
    assert topics["voiceid/kitchen/speaker"][0].payload == "Alice"
    attrs = json.loads(topics["voiceid/kitchen/speaker/attributes"][0].payload)
    assert attrs == {
        "score": 0.81,
        "threshold": 0.62,
        "since": ev.wall_time,
        "stream": "kitchen",
        "event_id": ev.id,
    }
    assert topics["voiceid/kitchen/enabled/state"][0].payload == "ON"


def test_speaker_state_machine() -> None:
    st = MqttState(threshold=0.6)
    st.on_event(SpeakerStarted(**stamp("k", 1), name="Alice", score=0.8))
    out = st.on_event(SpeakerChanged(**stamp("k", 2), name="Bob", previous="Alice", score=0.7))
    assert by_topic(out.state)["voiceid/k/speaker"][0].payload == "Bob"
    assert json.loads(out.events[1].payload)["previous"] == "Alice"
    assert out.events[2].topic == "voiceid/person/bob/identified"
    # scores: the current speaker's score moves the attributes only
    out = st.on_event(Scores(**stamp("k", 3), top=(("Bob", 0.75), ("Alice", 0.3))))
    assert [m.topic for m in out.state] == ["voiceid/k/speaker/attributes"]
    assert json.loads(out.state[0].payload)["score"] == 0.75
    assert [m.topic for m in out.events] == ["voiceid/events"]
    out = st.on_event(Scores(**stamp("k", 4), top=(("Bob", 0.75),)))
    assert out.state == []  # unchanged score: nothing retained re-sent
    # the end of someone else does not end Bob
    alice_ended = SpeakerEnded(**stamp("k", 5), name="Alice", duration_s=1, reason="silence")
    assert st.on_event(alice_ended).state == []
    out = st.on_event(SpeakerEnded(**stamp("k", 6), name="Bob", duration_s=2, reason="silence"))
    assert by_topic(out.state)["voiceid/k/speaker"][0].payload == "none"
    out = st.on_event(UnknownSpeaker(**stamp("k", 7), score=0.2, best="Alice"))
    assert by_topic(out.state)["voiceid/k/speaker"][0].payload == "unknown"
    ha = json.loads(out.events[1].payload)
    assert ha["event_type"] == "unknown" and ha["best"] == "Alice"
    assert set(HA_EVENT_TYPES) == {"identified", "unknown"}


def test_unknown_expires_without_voice_and_closed_streams_go_to_none() -> None:
    st = MqttState(unknown_hold_s=3.0)
    st.on_event(UnknownSpeaker(**stamp("k", 1, t=100.0), score=None, best=None))  # wall 101
    assert st.sync([], [], set(), now=102.0) == []
    st.on_event(Scores(**stamp("k", 2, t=100.0), top=()))  # voice at 102 keeps it
    assert st.sync([], [], set(), now=104.5) == []
    out = st.sync([], [], set(), now=105.5)
    assert by_topic(out)["voiceid/k/speaker"][0].payload == "none"
    # an open stream that closes while someone speaks
    st.sync(["k"], [], set(), now=106.0)
    st.on_event(SpeakerStarted(**stamp("k", 10, t=100.0), name="Alice", score=0.9))
    out = st.sync([], [], set(), now=111.0)
    assert by_topic(out)["voiceid/k/speaker"][0].payload == "none"
    assert st.sync([], [], set(), now=112.0) == []


# -- discovery -----------------------------------------------------------------------------
def check_document(doc: dict[str, Any], *, prefix: str = "voiceid") -> None:
    assert {"dev", "o", "cmps", "availability_topic"} <= set(doc)
    assert doc["availability_topic"] == f"{prefix}/available"
    assert doc["dev"]["ids"] and doc["dev"]["name"] and doc["o"]["name"] == "voiceid"
    assert "object_id" not in walk_keys(doc) and "obj_id" not in walk_keys(doc)
    unique_ids = []
    for cid, comp in doc["cmps"].items():
        assert re.fullmatch(r"[A-Za-z0-9_-]+", cid), cid
        assert "p" in comp
        if comp["p"] == "device_automation":
            assert comp["automation_type"] == "trigger"
            assert {"topic", "type", "subtype"} <= set(comp)
            continue
        unique_ids.append(comp["unique_id"])
        platform, _, object_id = comp["default_entity_id"].partition(".")
        assert platform == comp["p"] and re.fullmatch(r"[a-z0-9_]+", object_id)
    assert len(unique_ids) == len(set(unique_ids))


def test_discovery_document_components() -> None:
    st = MqttState(threshold=0.6)
    out = st.sync(["kitchen", "Living Room"], ["Alice", "Mary Ann"], set(), now=1.0)
    docs = discovery_docs(out)
    assert len(docs) == 1
    doc = docs[0]
    check_document(doc)
    cmps = doc["cmps"]
    sensor = cmps["kitchen_speaker"]
    assert sensor["p"] == "sensor"
    assert sensor["state_topic"] == "voiceid/kitchen/speaker"
    assert sensor["json_attributes_topic"] == "voiceid/kitchen/speaker/attributes"
    assert sensor["default_entity_id"] == "sensor.voiceid_kitchen_speaker"
    event = cmps["kitchen_event"]
    assert event["p"] == "event" and event["event_types"] == ["identified", "unknown"]
    assert event["state_topic"] == "voiceid/kitchen/event"
    switch = cmps["kitchen_enabled"]
    assert switch["command_topic"] == "voiceid/kitchen/enabled/set"
    assert switch["state_topic"] == "voiceid/kitchen/enabled/state"
    living = slug("Living Room")
    assert cmps[f"{living}_speaker"]["state_topic"] == "voiceid/Living Room/speaker"
    trig = cmps[f"person_{slug('Mary Ann')}"]
    assert trig["topic"] == f"voiceid/person/{slug('Mary Ann')}/identified"
    assert trig["subtype"] == "Mary Ann" and trig["type"] == "identified"
    assert cmps["person_alice"]["topic"] == "voiceid/person/alice/identified"


def test_no_switch_without_commands_and_nothing_without_discovery() -> None:
    st = MqttState(commands=False)
    out = st.sync(["k"], [], set(), now=1.0)
    assert "k_enabled" not in discovery_docs(out)[0]["cmps"]
    assert "voiceid/k/enabled/state" not in by_topic(out)
    assert st.parse_command("voiceid/k/enabled/set", "OFF") is None
    quiet = MqttState(discovery=False)
    out = quiet.sync(["k"], ["Alice"], set(), now=1.0)
    assert discovery_docs(out) == [] and quiet.discovery_messages() == []
    assert quiet.on_ha_status("online") == []
    assert quiet.absorb_retained_discovery(dumps(st.discovery_document())) == []


def test_removed_person_is_deleted_then_left_out() -> None:
    st = MqttState()
    st.sync(["k"], ["Alice", "Bob"], set(), now=1.0)
    out = st.sync(["k"], ["Alice"], set(), now=2.0)
    removing, clean = discovery_docs(out)
    assert removing["cmps"]["person_bob"] == {"p": "device_automation"}
    assert removing["cmps"]["person_alice"]["subtype"] == "Alice"
    assert "person_bob" not in clean["cmps"]
    assert all(m.retain and m.qos == 1 for m in out if m.topic == DISCOVERY)
    # every later discovery repeats the removal (HA may have been offline) ...
    assert len(discovery_docs(st.on_ha_status(b"online"))) == 2
    # ... until Bob is enrolled again
    out = st.sync(["k"], ["Alice", "Bob"], set(), now=3.0)
    (doc,) = discovery_docs(out)
    assert doc["cmps"]["person_bob"]["subtype"] == "Bob"


def test_ha_birth_resends_discovery() -> None:
    st = MqttState()
    st.sync(["k"], ["Alice"], set(), now=1.0)
    assert len(discovery_docs(st.on_ha_status("online"))) == 1
    assert st.on_ha_status("offline") == []


def test_commands_and_enabled_state() -> None:
    st = MqttState()
    st.sync(["kitchen", "a/b"], [], set(), now=1.0)
    assert st.parse_command("voiceid/kitchen/enabled/set", b"OFF") == Command("kitchen", False)
    assert st.parse_command("voiceid/kitchen/enabled/set", " on\n") == Command("kitchen", True)
    assert st.parse_command("voiceid/a_b/enabled/set", "OFF") == Command("a/b", False)
    assert st.parse_command("voiceid/new/enabled/set", "OFF") == Command("new", False)
    assert st.parse_command("voiceid/kitchen/speaker", "OFF") is None
    with pytest.raises(ValueError, match="ON or OFF"):
        st.parse_command("voiceid/kitchen/enabled/set", "maybe")
    assert st.enabled_echo("kitchen", False) == [
        Message("voiceid/kitchen/enabled/state", "OFF", 1, True)
    ]
    # a change made elsewhere (hub.set_enabled) is echoed by the next sync
    out = st.sync(["kitchen", "a/b"], [], {"a/b"}, now=2.0)
    assert out == [
        Message("voiceid/kitchen/enabled/state", "ON", 1, True),
        Message("voiceid/a_b/enabled/state", "OFF", 1, True),
    ]
    assert st.sync(["kitchen", "a/b"], [], {"a/b"}, now=3.0) == []


def test_snapshot_order() -> None:
    st = MqttState()
    st.sync(["k"], ["Alice"], set(), now=1.0)
    snap = st.snapshot()
    assert snap[0] == Message("voiceid/available", "online", 1, True)
    assert snap[1].topic == DISCOVERY
    assert [m.topic for m in snap[2:]] == [
        "voiceid/k/speaker",
        "voiceid/k/speaker/attributes",
        "voiceid/k/enabled/state",
    ]
    assert st.offline() == Message("voiceid/available", "offline", 1, True)


def test_retained_discovery_from_an_earlier_run() -> None:
    before = MqttState()
    before.sync(["old", "k"], ["Alice", "Zed"], set(), now=1.0)
    retained = before.discovery_messages()[-1].payload
    now = MqttState()
    now.sync(["k"], ["Alice"], set(), now=2.0)
    out = now.absorb_retained_discovery(retained)
    removing, clean = discovery_docs(out)
    assert removing["cmps"]["person_zed"] == {"p": "device_automation"}
    assert "old_speaker" in clean["cmps"] and "person_zed" not in clean["cmps"]
    assert by_topic(out)["voiceid/old/speaker"][0].payload == "none"
    assert "old" in now.streams
    # our own config echoed back, garbage and an emptied topic change nothing
    assert now.absorb_retained_discovery(clean_payload := dumps(clean)) == []
    assert now.absorb_retained_discovery(dumps(removing)) == []
    assert now.absorb_retained_discovery(b"not json") == []
    assert now.absorb_retained_discovery(b"") == []
    assert clean_payload


def test_retained_switch_removed_when_commands_turned_off() -> None:
    before = MqttState()
    before.sync(["k"], [], set(), now=1.0)
    now = MqttState(commands=False)
    now.sync(["k"], [], set(), now=2.0)
    removing, clean = discovery_docs(
        now.absorb_retained_discovery(before.discovery_messages()[0].payload)
    )
    assert removing["cmps"]["k_enabled"] == {"p": "switch"}
    assert "k_enabled" not in clean["cmps"]


def test_stats_and_json() -> None:
    doc = stats_payload({"published": 3, "connected_since": 100.0}, ["b", "a"], now=160.0)
    assert doc["streams"] == 2 and doc["stream_names"] == ["a", "b"]
    assert doc["connected_for_s"] == 60.0 and doc["published"] == 3
    m = MqttState().stats_message(doc)
    assert m.topic == "voiceid/stats" and m.qos == 0 and not m.retain
    assert json.loads(dumps({"x": float("nan"), "y": [float("inf")]})) == {"x": None, "y": [None]}
