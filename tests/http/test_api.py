"""The REST API of a real daemon (GE2E model, real speech) over real loopback sockets."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import MODEL_CACHE
from tests.http import (
    Running,
    files_of,
    multipart,
    request,
    running_daemon,
    settings,
    wav_bytes,
)
from voiceid.http.api import Enrollments
from voiceid.http.server import serve_http
from voiceid.profiles.enroll import EnrollmentSession
from voiceid.runtime.daemon import Daemon

API = "/api/v1"


@pytest.fixture(scope="module")
def env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VOICEID_HOME", str(MODEL_CACHE))
        yield


@pytest.fixture(scope="module")
def two(speakers: dict[str, list[Path]]) -> tuple[list[Path], list[Path]]:
    a, b = sorted(speakers)[:2]
    return speakers[a], speakers[b]


@pytest.fixture(scope="module")
def live(env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_daemon(tmp_path_factory.mktemp("api") / "profiles.db") as running:
        yield running


def get(running: Running, path: str) -> Any:
    reply = request(running.http + path)
    assert reply.status == 200, (path, reply.status, reply.body[:300])
    return reply.json()


def refs_resolve(doc: dict[str, Any]) -> list[str]:
    """Every ``$ref`` of the document, and those that point nowhere."""
    text = json.dumps(doc)
    missing = []
    for ref in set(re.findall(r'"\$ref": "([^"]+)"', text)):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            missing.append(ref)
    return missing


def test_daemon_endpoints_and_openapi(live: Running) -> None:
    assert get(live, "/healthz") == {"status": "ok"}
    ready = get(live, "/readyz")
    assert ready["status"] == "ready" and ready["model"] == "resemblyzer-ge2e"
    assert get(live, f"{API}/version")["api"] == "v1"
    model = get(live, f"{API}/model")
    app = live.daemon.app
    assert app is not None
    assert model["fingerprint"] == app.fingerprint and model["dim"] == 256
    assert model["provider"] == "CPUExecutionProvider"
    assert -1 <= model["threshold"] <= 1 and -1 <= model["stream_threshold"] <= 1
    config = get(live, f"{API}/config")
    assert config["websocket"] == {
        "enabled": True,
        "port": live.daemon.ports["websocket"],
        "stream_path": "/stream",
        "events_path": "/events",
    }
    assert config["enrollment"]["min_utterances"] >= 1
    assert get(live, f"{API}/streams") == {"streams": []}

    metrics = request(live.http + "/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert b"voiceid_" in metrics.body

    doc = get(live, "/openapi.json")
    assert doc["openapi"].startswith("3.") and doc["info"]["title"] == "voiceid"
    assert refs_resolve(doc) == []
    ops = [(p, m, op) for p, item in doc["paths"].items() for m, op in item.items()]
    assert len(ops) >= 18
    for path, method, op in ops:
        assert op.get("summary") and op.get("tags"), (path, method)
        ok = [c for c in op["responses"] if c.startswith("2")]
        assert ok, (path, method)
        if path.startswith(API) and path != f"{API}/version":
            errs = [c for c in op["responses"] if c[0] in "45"]
            for code in errs:  # every error is our envelope
                schema = op["responses"][code]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, code)
    try:
        from openapi_spec_validator import validate
    except ImportError:
        pass  # the structural checks above still ran
    else:
        validate(doc)
    assert request(live.http + "/docs").status == 200

    page = request(live.http + "/")
    assert page.status == 200 and b"<title>voiceid</title>" in page.body
    assert "script-src 'self'" in page.headers["content-security-policy"]
    js = request(live.http + "/static/app.js")
    assert js.status == 200 and b"/api/v1" in js.body
    assert request(live.http + "/static/capture.js").status == 200


def test_errors_are_json_envelopes(live: Running, two: tuple[list[Path], list[Path]]) -> None:
    r = request(live.http + "/nope")
    assert r.status == 404 and r.error["code"] == "not_found"
    r = request(live.http + f"{API}/profiles/nobody")
    assert r.status == 404 and r.error["code"] == "profile_not_found"
    assert "GET /api/v1/profiles" in r.error["hint"]
    r = request(live.http + f"{API}/profiles/nobody", "DELETE")
    assert r.status == 404 and r.error["code"] == "profile_not_found"
    r = request(live.http + f"{API}/verify", "POST", form=multipart({}, []))
    assert r.status == 422 and r.error["code"] == "validation_error"
    assert "name" in r.error["message"] and "file" in r.error["message"]
    r = request(live.http + f"{API}/healthz", "PATCH")
    assert r.status == 404
    r = request(live.http + "/healthz", "POST")
    assert r.status == 405 and r.error["code"] == "method_not_allowed"
    # a page of another origin cannot change anything (CSRF through the browser)
    body = multipart({"name": "x"}, files_of(two[0][:1]))
    r = request(
        live.http + f"{API}/enroll", "POST", form=body, headers={"Origin": "http://evil.example"}
    )
    assert r.status == 403 and r.error["code"] == "cross_origin"
    r = request(live.http + f"{API}/enrollments/x", "DELETE", headers={"Origin": live.http})
    assert r.status == 404 and r.error["code"] == "enrollment_not_found"
    # unreadable audio and nobody enrolled
    r = request(
        live.http + f"{API}/identify",
        "POST",
        form=multipart({}, [("file", "a.wav", b"not audio at all")]),
    )
    assert r.status == 409 and r.error["code"] == "no_profiles"


def test_enroll_verify_identify_export_delete(
    live: Running, two: tuple[list[Path], list[Path]]
) -> None:
    a, b = two
    r = request(
        live.http + f"{API}/enroll",
        "POST",
        form=multipart({"name": "Ann", "metadata": '{"room": "lab"}'}, files_of(a[:3])),
    )
    assert r.status == 201, r.body
    res = r.json()
    assert res["committed"] and res["profile"]["name"] == "Ann"
    assert [u["feedback"] for u in res["utterances"]] == [["ok"]] * 3
    assert res["utterances"][0]["source"] == a[0].name and res["progress"]["complete"]
    assert live.scorer_names() == ["Ann"]  # live streams see the new profile

    r = request(
        live.http + f"{API}/enroll", "POST", form=multipart({"name": "ann"}, files_of(a[:1]))
    )
    assert r.status == 409 and r.error["code"] == "profile_exists"

    profiles = get(live, f"{API}/profiles")["profiles"]
    assert [p["name"] for p in profiles] == ["Ann"] and profiles[0]["usable"]
    detail = get(live, f"{API}/profiles/ann")
    assert detail["metadata"] == {"room": "lab"}
    assert [x["source"] for x in detail["recordings"]] == [p.name for p in a[:3]]

    def verify(name: str, path: Path) -> Any:
        form = multipart({"name": name}, [("file", path.name, path.read_bytes())])
        return request(live.http + f"{API}/verify", "POST", form=form)

    same, other = verify("Ann", a[5]), verify("Ann", b[5])
    assert same.status == 200 and other.status == 200
    assert same.json()["accepted"] and not other.json()["accepted"]
    assert same.json()["score"] > other.json()["score"]
    assert verify("Bob", a[5]).error["code"] == "profile_not_found"

    form = multipart({"top_k": "3"}, [("file", a[6].name, a[6].read_bytes())])
    ident = request(live.http + f"{API}/identify", "POST", form=form).json()
    assert ident["decision"] == "Ann" and ident["matches"][0]["name"] == "Ann"

    one = request(live.http + f"{API}/profiles/Ann/export")
    assert one.status == 200 and "attachment" in one.headers["content-disposition"]
    assert one.headers["cache-control"] == "no-store"
    doc = one.json()
    assert doc["format"] == "voiceid-profiles" and doc["version"] == 1
    assert [p["name"] for p in doc["profiles"]] == ["Ann"]
    assert len(doc["profiles"][0]["utterances"]) == 3
    assert get(live, f"{API}/export")["profiles"][0]["id"] == detail["id"]
    assert request(live.http + f"{API}/export?name=zed").status == 404

    r = request(live.http + f"{API}/profiles/{detail['id']}", "DELETE")
    assert r.status == 200 and r.json() == {"deleted": "Ann"}
    assert live.scorer_names() == []
    assert request(live.http + f"{API}/profiles/Ann").status == 404


def test_enroll_incomplete_reports_feedback(
    live: Running, two: tuple[list[Path], list[Path]]
) -> None:
    a, _ = two
    rng = np.random.default_rng(0)
    silence = wav_bytes(np.zeros(16000 * 3, np.float32))
    hiss = wav_bytes(rng.normal(0, 0.02, 16000 * 3).astype(np.float32))
    form = multipart(
        {"name": "Cleo"},
        [
            ("files", "silence.wav", silence),
            ("files", "hiss.wav", hiss),
            ("files", a[3].name, a[3].read_bytes()),
        ],
    )
    r = request(live.http + f"{API}/enroll", "POST", form=form)
    assert r.status == 422 and r.error["code"] == "enrollment_incomplete"
    details = r.error["details"]
    assert not details["committed"]
    assert [u["feedback"] for u in details["utterances"]] == [["no_voice"], ["no_voice"], ["ok"]]
    assert details["utterances"][0]["advice"][0].startswith("no speech")
    assert "nothing was written" in r.error["message"]
    assert request(live.http + f"{API}/profiles/Cleo").status == 404

    form = multipart({"name": "Cleo"}, [("files", "junk.wav", b"RIFF....not a wav")])
    r = request(live.http + f"{API}/enroll", "POST", form=form)
    assert r.status == 422 and r.error["code"] == "bad_audio" and "junk.wav" in r.error["message"]
    form = multipart({"name": "Cleo"}, [("files", "empty.wav", b"")])
    r = request(live.http + f"{API}/enroll", "POST", form=form)
    assert r.status == 422 and r.error["code"] == "bad_audio"
    form = multipart({"name": "0123456789abcdef0123456789abcdef"}, files_of(a[:1]))
    r = request(live.http + f"{API}/enroll", "POST", form=form)
    assert r.status == 422 and "looks like a profile id" in r.error["message"]


def test_enrollment_session(live: Running, two: tuple[list[Path], list[Path]]) -> None:
    a, b = two
    url = live.http + f"{API}/enrollments"
    r = request(url, "POST", json_body={"name": "Dee"})
    assert r.status == 201
    state = r.json()
    eid = state["id"]
    assert state["progress"]["percent"] == 0 and 0 < state["expires_in_s"] <= 300

    def add(path: Path | None = None, data: bytes | None = None) -> Any:
        name = path.name if path else "clip.wav"
        body = data if data is not None else path.read_bytes()  # type: ignore[union-attr]
        return request(
            f"{url}/{eid}/utterances", "POST", form=multipart({}, [("file", name, body)])
        )

    r = add(data=wav_bytes(np.zeros(8000, np.float32)))
    assert r.status == 200 and r.json()["feedback"] == ["no_voice"] and not r.json()["accepted"]
    r = add(a[0])
    assert r.json()["accepted"] and r.json()["progress"]["utterances"] == 1
    early = request(f"{url}/{eid}/finish", "POST", json_body={})
    assert early.status == 422 and early.error["code"] == "enrollment_incomplete"
    assert early.error["details"]["progress"]["utterances"] == 1
    r = add(b[0])  # somebody else
    assert r.json()["feedback"] == ["inconsistent"]
    assert add(a[0]).json()["feedback"] == ["duplicate"]
    for p in a[1:3]:
        last = add(p).json()
    assert last["progress"]["complete"] and last["progress"]["percent"] == 100
    assert get(live, f"{API}/enrollments/{eid}")["attempts"] == 6
    r = request(f"{url}/{eid}/finish", "POST", json_body={"metadata": {"k": "v"}})
    assert r.status == 201 and r.json()["name"] == "Dee" and r.json()["metadata"] == {"k": "v"}
    assert "Dee" in live.scorer_names()
    assert request(f"{url}/{eid}").status == 404  # finished sessions are gone

    r = request(url, "POST", json_body={"name": "dee"})
    assert r.status == 409 and r.error["code"] == "profile_exists"
    r = request(url, "POST", json_body={"name": "dee", "replace": True})
    assert r.status == 201
    eid = r.json()["id"]
    assert request(f"{url}/{eid}", "DELETE").status == 204
    assert add(a[4]).error["code"] == "enrollment_not_found"
    assert request(url, "POST", json_body={"name": ""}).error["code"] == "validation_error"
    assert request(live.http + f"{API}/profiles/Dee", "DELETE").status == 200


def test_enrollment_sessions_expire_and_are_bounded() -> None:
    now = [0.0]
    box = Enrollments(ttl_s=10.0, max_sessions=2, clock=lambda: now[0])

    def session(name: str) -> EnrollmentSession:
        return EnrollmentSession(name, store=None, fingerprint="f", model_name="m", threshold=0.5)  # type: ignore[arg-type]

    first = box.add(session("a"))
    now[0] = 6.0
    box.add(session("b"))
    with pytest.raises(Exception, match="limit is 2") as err:
        box.add(session("c"))
    assert getattr(err.value, "status", None) == 429
    now[0] = 12.0  # "a" expired (idle 12 s), "b" has 4 s left
    third = box.add(session("c"))
    assert len(box) == 2 and first.session.closed
    with pytest.raises(Exception, match="expired") as err:
        box.get(first.id)
    assert getattr(err.value, "status", None) == 404
    now[0] = 21.0
    box.get(third.id)  # activity extends it
    now[0] = 30.0
    assert box.sweep() == 0 and len(box) == 1
    box.clear()
    assert len(box) == 0 and third.session.closed


def test_upload_limit(env: None, tmp_path: Path, two: tuple[list[Path], list[Path]]) -> None:
    a, _ = two
    with running_daemon(tmp_path / "p.db", http={"max_upload_bytes": 64 * 1024}) as d:
        big = a[0].read_bytes()
        assert len(big) > 64 * 1024
        r = request(
            d.http + f"{API}/enroll",
            "POST",
            form=multipart({"name": "Eve"}, [("files", "a.flac", big)]),
        )
        assert r.status == 413 and r.error["code"] == "too_large"
        # chunked (no Content-Length): refused once the limit is crossed
        body, ctype = multipart({}, [("file", "a.flac", big)])
        conn = http.client.HTTPConnection("127.0.0.1", d.daemon.ports["http"], timeout=30)
        conn.putrequest("POST", f"{API}/identify")
        conn.putheader("Content-Type", ctype)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        try:
            for i in range(0, len(body), 8192):
                part = body[i : i + 8192]
                conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed
        resp = conn.getresponse()
        assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "too_large"
        conn.close()
        small = multipart({"name": "Eve"}, [("files", "s.wav", wav_bytes(np.zeros(1600)))])
        assert request(d.http + f"{API}/enroll", "POST", form=small).status == 422


def test_not_ready_and_shutdown(tmp_path: Path) -> None:
    """Before the model is loaded: /healthz answers, the rest is 503; cancel stops cleanly."""

    async def main() -> None:
        daemon = Daemon(settings(tmp_path / "p.db"))
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve_http(daemon, daemon.settings.http, started=started))
        port = await asyncio.wait_for(started, 10)
        assert port > 0
        base = f"http://127.0.0.1:{port}"
        health = await asyncio.to_thread(request, base + "/healthz")
        assert health.status == 200
        for path in ("/readyz", f"{API}/profiles", f"{API}/model"):
            r = await asyncio.to_thread(request, base + path)
            assert r.status == 503 and r.error["code"] == "not_ready", path
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(OSError):
            await asyncio.to_thread(request, base + "/healthz", timeout=2)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    import socket

    from voiceid.errors import ConfigError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]

        async def main() -> None:
            daemon = Daemon(settings(tmp_path / "p.db", http={"port": port}))
            started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            with pytest.raises(ConfigError, match="cannot listen"):
                await serve_http(daemon, daemon.settings.http, started=started)
            with pytest.raises(ConfigError):
                started.result()

        asyncio.run(main())
