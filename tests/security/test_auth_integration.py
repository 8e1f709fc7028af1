"""Tokens, scopes, origins, lockout, rate limits and TLS on real loopback servers.

A real daemon (GE2E on the CPU, real speech) with ``auth.tokens`` serves REST; WebSocket
servers with a :class:`~voiceid.security.Security` run on the same daemon's loop and hub
(as the daemon runs its own). Clients are plain ``urllib``/``http.client`` and the
``websockets`` sync client, so every refusal is checked as a client sees it: status,
one-line reason, ``WWW-Authenticate``, ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.client
import ipaddress
import json
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import MODEL_CACHE
from tests.http import Reply, Running, files_of, multipart, request, running_daemon
from voiceid.config import Settings, WebSocketSection
from voiceid.errors import ConfigError
from voiceid.http.api import Guard
from voiceid.runtime import metrics
from voiceid.security import HTTP_REJECTED, Security, check_auth_config, tls_context
from voiceid.security.tokens import TokenStore, hash_token, new_token
from voiceid.sources.websocket import WebSocketStats, serve_websocket

API = "/api/v1"
DASHBOARD = "https://ha.example:8123"  # auth.allowed_origins of the secured daemon
STREAM, ENROLL, ADMIN = new_token(), new_token(), new_token()
TOKENS = [
    {"name": "satellite", "sha256": hash_token(STREAM), "scopes": ["stream"]},
    {"name": "enroller", "sha256": hash_token(ENROLL), "scopes": ["enroll"]},
    {"name": "operator", "sha256": hash_token(ADMIN), "scopes": ["admin"]},
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def rejected(reason: str) -> int:
    return int(HTTP_REJECTED.rejected.get(reason, 0))


# ----------------------------------------------------------------------------- servers


@dataclass
class WsServer:
    port: int
    stats: WebSocketStats
    task: asyncio.Task[None]
    scheme: str = "ws"

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"


@contextlib.contextmanager
def ws_server(running: Running, security: Security) -> Iterator[WsServer]:
    """A WebSocket server with ``security`` on the daemon's own loop and hub."""
    hub = running.daemon.hub
    assert hub is not None
    stats = WebSocketStats()

    async def start() -> tuple[asyncio.Task[None], int]:
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        cfg = WebSocketSection(host="127.0.0.1", port=0)
        task = asyncio.create_task(
            serve_websocket(hub, cfg, started=started, stats=stats, security=security)
        )
        return task, await asyncio.wait_for(started, 10)

    task, port = asyncio.run_coroutine_threadsafe(start(), running.loop).result(15)
    scheme = "wss" if security.ssl_context is not None else "ws"
    try:
        yield WsServer(port, stats, task, scheme)
    finally:

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run_coroutine_threadsafe(stop(), running.loop).result(20)


@pytest.fixture(scope="module")
def env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VOICEID_HOME", str(MODEL_CACHE))
        yield


@pytest.fixture(scope="module")
def secured(env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    db = tmp_path_factory.mktemp("secured") / "profiles.db"
    auth = {
        "tokens": TOKENS,
        "verify_lockout_after": 5,
        "verify_lockout_base_s": 0.5,
        "allowed_origins": [DASHBOARD],
    }
    with running_daemon(db, auth=auth) as running:
        yield running


@pytest.fixture(scope="module")
def ws(secured: Running) -> Iterator[WsServer]:
    security = Security.from_settings(secured.daemon.settings, ports=secured.daemon.ports)
    with ws_server(secured, security) as server:
        yield server


def ws_connect(url: str, **kwargs: Any) -> ClientConnection:
    conn: ClientConnection = connect(url, proxy=None, compression=None, open_timeout=10, **kwargs)
    return conn


def ws_refused(url: str, **kwargs: Any) -> tuple[int, str, dict[str, str]]:
    """Status, body and headers of a refused handshake."""
    with pytest.raises(InvalidStatus) as info:
        ws_connect(url, **kwargs).close()
    response = info.value.response
    return response.status_code, response.body.decode(), dict(response.headers.raw_items())


def subscribed(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return message


# ---------------------------------------------------------------------------- WebSocket


def test_websocket_without_token_is_401(ws: WsServer) -> None:
    for path in ("/events", "/stream", "/events?stream=room1"):
        status, body, headers = ws_refused(ws.url(path))
        assert status == 401, path
        assert body.count("\n") == 1 and "API token is required" in body
        assert headers["WWW-Authenticate"] == 'Bearer realm="voiceid"'
    status, body, headers = ws_refused(ws.url("/events"), additional_headers=bearer("vid_nope"))
    assert status == 401 and "matches none of auth.tokens" in body
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    status, _, _ = ws_refused(ws.url("/events?token=a&token=b"))
    assert status == 401
    assert ws.stats.rejected.get("unauthorized", 0) >= 5
    assert ws.stats.connections == 0


def test_websocket_wrong_scope_is_403(ws: WsServer) -> None:
    for token in (ENROLL, ADMIN):
        status, body, headers = ws_refused(ws.url("/events"), additional_headers=bearer(token))
        assert status == 403 and "lacks the scope stream" in body
        assert 'error="insufficient_scope", scope="stream"' in headers["WWW-Authenticate"]
    status, body, _ = ws_refused(ws.url(f"/stream?token={ADMIN}"))
    assert status == 403 and "operator" in body
    assert ws.stats.rejected.get("forbidden", 0) >= 3


def test_websocket_right_token_header_and_query(ws: WsServer) -> None:
    with ws_connect(ws.url("/events"), additional_headers=bearer(STREAM)) as c:
        assert subscribed(c) == {"type": "subscribed", "stream": None}
    with ws_connect(ws.url(f"/events?stream=room1&token={STREAM}")) as c:
        assert subscribed(c) == {"type": "subscribed", "stream": "room1"}
    with ws_connect(ws.url(f"/events?token={STREAM}&stream=room2")) as c:
        assert subscribed(c) == {"type": "subscribed", "stream": "room2"}
    with ws_connect(ws.url(f"/stream?token={STREAM}")) as c:
        c.send(json.dumps({"type": "start", "stream": "sec-1", "sample_rate": 16000}))
        ready = json.loads(c.recv(timeout=10))
        assert ready["type"] == "ready" and ready["stream"] == "sec-1"
        c.send(json.dumps({"type": "stop"}))
    # the query is still validated once the token is taken out
    status, _, _ = ws_refused(ws.url(f"/events?token={STREAM}&x=1"))
    assert status == 400
    status, _, _ = ws_refused(ws.url(f"/stream?token={STREAM}&a=b"))
    assert status == 400


def test_websocket_origins(ws: WsServer, secured: Running) -> None:
    page = secured.http  # http://127.0.0.1:<http port>: the daemon's own web page
    with ws_connect(ws.url(f"/events?token={STREAM}"), origin=page) as c:
        assert subscribed(c)["type"] == "subscribed"
    localhost_page = page.replace("127.0.0.1", "localhost")
    with ws_connect(ws.url(f"/events?token={STREAM}"), origin=localhost_page) as c:
        assert subscribed(c)["type"] == "subscribed"
    before = ws.stats.rejected.get("bad_origin", 0)
    for origin in ("http://evil.example", "http://127.0.0.1:1", "null"):
        status, body, _ = ws_refused(ws.url(f"/events?token={STREAM}"), origin=origin)
        assert status == 403 and "another origin" in body, origin
    assert ws.stats.rejected["bad_origin"] == before + 3
    with ws_connect(ws.url(f"/events?token={STREAM}"), origin=DASHBOARD) as c:
        assert subscribed(c)["type"] == "subscribed"


def raw_handshake(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    """Send a WebSocket upgrade by hand (any Host): status and body."""
    lines = [
        f"GET {path} HTTP/1.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data or (b"101" not in data[:13] and not data.endswith(b"\n")):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def test_open_websocket_refuses_other_host_names(secured: Running) -> None:
    """Without tokens (loopback only): a DNS-rebinding page (Host: evil.example) is
    refused, a loopback Host is served."""
    with ws_server(secured, Security(TokenStore([]))) as open_ws:
        status, body = raw_handshake(open_ws.port, "/events", {"Host": "evil.example:8765"})
        assert status == 403 and "not a loopback name" in body
        status, _ = raw_handshake(open_ws.port, "/events", {"Host": f"127.0.0.1:{open_ws.port}"})
        assert status == 101
        status, _ = raw_handshake(
            open_ws.port,
            "/events",
            {"Host": f"localhost:{open_ws.port}", "Origin": "http://evil.example"},
        )
        assert status == 403
        with ws_connect(open_ws.url("/events")) as c:  # no token needed
            assert subscribed(c)["type"] == "subscribed"
        assert open_ws.stats.rejected == {"bad_host": 1, "bad_origin": 1}


# --------------------------------------------------------------------------------- REST


def test_rest_without_token_is_401(secured: Running) -> None:
    before = rejected("unauthorized")
    for method, path in [
        ("GET", f"{API}/profiles"),
        ("GET", f"{API}/version"),
        ("GET", f"{API}/config"),
        ("POST", f"{API}/verify"),
        ("DELETE", f"{API}/profiles/x"),
        ("GET", f"{API}/export"),
        ("GET", f"{API}/no-such-route"),
    ]:
        r = request(secured.http + path, method)
        assert r.status == 401, (method, path, r.body)
        assert r.headers["www-authenticate"] == 'Bearer realm="voiceid"'
        assert r.error["code"] == "unauthorized" and "voiceid token new" in r.error["hint"]
    r = request(secured.http + f"{API}/profiles", headers=bearer("vid_wrong"))
    assert r.status == 401 and r.error["code"] == "invalid_token"
    r = request(secured.http + f"{API}/profiles", headers={"Authorization": "Basic eDp5"})
    assert r.status == 401 and r.error["code"] == "invalid_token"
    assert rejected("unauthorized") == before + 9
    # open: health, the page and its files, the API description
    for path in ("/healthz", "/readyz", "/", "/static/app.js", "/openapi.json", "/docs"):
        assert request(secured.http + path).status == 200, path
    assert request(secured.http + "/nope").status == 404


def test_rest_scopes(secured: Running) -> None:
    url = secured.http
    before = rejected("forbidden")
    r = request(url + f"{API}/profiles", headers=bearer(STREAM))
    assert r.status == 403 and r.error["code"] == "insufficient_scope"
    assert "lacks the scope admin or enroll" in r.error["message"]
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    r = request(url + f"{API}/profiles/x", "DELETE", headers=bearer(ENROLL))
    assert r.status == 403 and 'scope="admin"' in r.headers["www-authenticate"]
    r = request(url + f"{API}/export", headers=bearer(ENROLL))
    assert r.status == 403
    r = request(url + f"{API}/profiles/x/export", headers=bearer(ENROLL))
    assert r.status == 403
    form = multipart({}, [("file", "a.wav", b"x")])
    r = request(url + f"{API}/identify", "POST", form=form, headers=bearer(ADMIN))
    assert r.status == 403 and 'scope="enroll"' in r.headers["www-authenticate"]
    assert rejected("forbidden") == before + 5
    # the right scopes get through to the routes
    for token in (STREAM, ENROLL, ADMIN):  # any valid token
        assert request(url + f"{API}/version", headers=bearer(token)).status == 200
        assert request(url + f"{API}/streams", headers=bearer(token)).status == 200
    assert request(url + f"{API}/profiles", headers=bearer(ENROLL)).status == 200
    assert request(url + f"{API}/profiles", headers=bearer(ADMIN)).status == 200
    r = request(url + f"{API}/profiles/nobody", "DELETE", headers=bearer(ADMIN))
    assert r.status == 404 and r.error["code"] == "profile_not_found"
    r = request(url + f"{API}/identify", "POST", form=form, headers=bearer(ENROLL))
    assert r.status == 409 and r.error["code"] == "no_profiles"


def test_rest_bad_origin_is_403_even_with_a_token(secured: Running) -> None:
    before = rejected("bad_origin")
    headers = {**bearer(ADMIN), "Origin": "http://evil.example"}
    r = request(secured.http + f"{API}/profiles/x", "DELETE", headers=headers)
    assert r.status == 403 and r.error["code"] == "cross_origin"
    headers = {**bearer(ADMIN), "Origin": secured.http}  # the daemon's own page
    r = request(secured.http + f"{API}/profiles/x", "DELETE", headers=headers)
    assert r.status == 404
    assert rejected("bad_origin") == before + 1
    # an allowed origin: CORS preflight answered, then the write goes through
    preflight = {
        "Origin": DASHBOARD,
        "Access-Control-Request-Method": "DELETE",
        "Access-Control-Request-Headers": "authorization",
    }
    r = request(secured.http + f"{API}/profiles/x", "OPTIONS", headers=preflight)
    assert r.status == 200 and r.headers["access-control-allow-origin"] == DASHBOARD
    headers = {**bearer(ADMIN), "Origin": DASHBOARD}
    r = request(secured.http + f"{API}/profiles/x", "DELETE", headers=headers)
    assert r.status == 404 and r.headers["access-control-allow-origin"] == DASHBOARD
    r = request(secured.http + f"{API}/profiles/x", "OPTIONS", headers={"Origin": "http://e.x"})
    assert "access-control-allow-origin" not in r.headers


def test_metrics_free_on_loopback_else_admin(secured: Running) -> None:
    r = request(secured.http + "/metrics")
    assert r.status == 200 and b"voiceid_" in r.body
    assert request(secured.http + "/metrics", headers=bearer("vid_wrong")).status == 401
    assert request(secured.http + "/metrics", headers=bearer(STREAM)).status == 403
    assert request(secured.http + "/metrics", headers=bearer(ADMIN)).status == 200


def test_openapi_documents_the_tokens(secured: Running) -> None:
    doc = request(secured.http + "/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    op = doc["paths"][f"{API}/profiles/{{name}}"]["delete"]
    assert op["security"] == [{"bearer": []}] and "`admin`" in op["description"]
    assert {"401", "403", "429"} <= set(op["responses"])
    assert "security" not in doc["paths"]["/healthz"]["get"]
    assert "429" not in doc["paths"]["/healthz"]["get"]["responses"]
    try:
        from openapi_spec_validator import validate
    except ImportError:
        return
    validate(doc)


def verify(running: Running, path: Path, **fields: str) -> Reply:
    form = multipart({"name": "Ann", **fields}, [("file", path.name, path.read_bytes())])
    return request(running.http + f"{API}/verify", "POST", form=form, headers=bearer(ENROLL))


def test_verify_lockout_after_five_failures(
    secured: Running, speakers: dict[str, list[Path]]
) -> None:
    a, b = (speakers[s] for s in sorted(speakers)[:2])
    r = request(
        secured.http + f"{API}/enroll",
        "POST",
        form=multipart({"name": "Ann"}, files_of(a[:3])),
        headers=bearer(ENROLL),
    )
    assert r.status == 201, r.body
    lockouts = metrics.sample("voiceid_verify_lockouts_total") or 0.0
    locked_before = rejected("locked_out")
    # five failures - with a client threshold of -1 that "accepts" them: the lockout
    # judges with the daemon's threshold, so they still count
    for _ in range(5):
        r = verify(secured, b[5], threshold="-1")
        assert r.status == 200 and r.json()["accepted"] is True
    r = verify(secured, a[5])  # the 6th, even the right person, waits
    assert r.status == 429 and r.error["code"] == "verify_locked"
    retry = int(r.headers["retry-after"])
    assert 1 <= retry <= 1  # base 0.5 s
    assert metrics.sample("voiceid_verify_lockouts_total") == lockouts + 1
    assert rejected("locked_out") == locked_before + 1
    # identify is not locked, other names are not locked
    form = multipart({}, [("file", a[6].name, a[6].read_bytes())])
    r = request(secured.http + f"{API}/identify", "POST", form=form, headers=bearer(ENROLL))
    assert r.status == 200 and r.json()["decision"] == "Ann"
    time.sleep(retry)
    r = verify(secured, a[5])  # allowed again: a success resets the count
    assert r.status == 200 and r.json()["accepted"] is True
    for _ in range(4):
        r = verify(secured, b[5])
        assert r.status == 200 and r.json()["accepted"] is False
    r = verify(secured, b[6])  # the 5th failure since the success is still answered
    assert r.status == 200
    r = verify(secured, b[6])
    assert r.status == 429 and r.headers["retry-after"] == "1"
    # cleanup for the other tests of the module
    r = request(secured.http + f"{API}/profiles/Ann", "DELETE", headers=bearer(ADMIN))
    assert r.status == 200


# ------------------------------------------------------------------- rate limit and TLS


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost/127.0.0.1 and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voiceid test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def https_get(port: int, path: str, ctx: ssl.SSLContext, token: str | None = None) -> Reply:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers=bearer(token) if token else {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def test_tls_round_trip_and_rate_limit(env: None, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    overrides: dict[str, Any] = {
        "auth": {"tokens": TOKENS},
        "tls": {"cert_file": str(cert), "key_file": str(key)},
        "security": {"http_rate_per_min": 4},
    }
    with running_daemon(tmp_path / "profiles.db", **overrides) as running:
        port = running.daemon.ports["http"]
        for _ in range(6):  # probes are not rate limited
            assert https_get(port, "/healthz", client_ctx).status == 200
        limited = rejected("rate_limited")
        for _ in range(4):
            r = https_get(port, f"{API}/version", client_ctx, ADMIN)
            assert r.status == 200 and r.json()["api"] == "v1"
        r = https_get(port, f"{API}/version", client_ctx, ADMIN)
        assert r.status == 429 and r.error["code"] == "rate_limited"
        assert r.headers["retry-after"] == "15"  # 4 per minute: one every 15 s
        assert rejected("rate_limited") == limited + 1
        assert https_get(port, "/readyz", client_ctx).status == 200
        # plain HTTP to the TLS port fails, an untrusting client fails
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            assert conn.getresponse().status != 200
        with pytest.raises(ssl.SSLError):
            https_get(port, "/healthz", ssl.create_default_context())

        security = Security.from_settings(running.daemon.settings, ports=running.daemon.ports)
        assert security.ssl_context is not None
        with ws_server(running, security) as wss:
            assert wss.url("/").startswith("wss://")
            url = wss.url(f"/events?token={STREAM}")
            with ws_connect(url, ssl=client_ctx) as c:
                assert subscribed(c) == {"type": "subscribed", "stream": None}
            with pytest.raises(InvalidStatus) as info:
                ws_connect(wss.url("/events"), ssl=client_ctx)
            assert info.value.response.status_code == 401


# ------------------------------------------------------------------ start-up and Guard


def test_open_daemon_on_loopback_starts_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="voiceid.security"):
        check_auth_config(Settings())
    assert "NO TOKENS CONFIGURED" in caplog.text
    check_auth_config(Settings(websocket={"host": "localhost"}, http={"host": "::1"}))


@pytest.mark.parametrize(
    ("section", "host"),
    [("websocket", "0.0.0.0"), ("http", "0.0.0.0"), ("http", ""), ("websocket", "box.lan")],
)
def test_no_tokens_and_a_public_address_refuses_to_start(section: str, host: str) -> None:
    with pytest.raises(ConfigError, match=rf"auth.tokens is empty but {section}.host") as info:
        check_auth_config(Settings(**{section: {"host": host}}))
    assert "voiceid token new" in str(info.value)
    # a disabled server does not count
    check_auth_config(Settings(**{section: {"host": host, "enabled": False}}))


def test_tokens_allow_public_addresses(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="voiceid.security"):
        check_auth_config(Settings(auth={"tokens": TOKENS}, http={"host": "0.0.0.0"}))
    assert "without TLS" in caplog.text


def test_public_wyoming_listener_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    asr = {"asr": {"enabled": True, "uri": "tcp://0.0.0.0:10310"}}
    with caplog.at_level(logging.WARNING, logger="voiceid.security"):
        check_auth_config(Settings(auth={"tokens": TOKENS}, wyoming=asr))
    assert "Wyoming protocol has no authentication" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="voiceid.security"):
        check_auth_config(Settings(auth={"tokens": TOKENS}, wyoming={"asr": {"enabled": True}}))
    assert "Wyoming" not in caplog.text


def test_tls_and_origin_config_errors(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    assert tls_context(Settings(tls={"cert_file": cert, "key_file": key}).tls) is not None
    with pytest.raises(ConfigError, match="go together"):
        check_auth_config(Settings(tls={"cert_file": cert}))
    with pytest.raises(ConfigError, match="no such file"):
        check_auth_config(Settings(tls={"cert_file": tmp_path / "x.pem", "key_file": key}))
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = self_signed(other)
    with pytest.raises(ConfigError, match="key must belong"):
        check_auth_config(Settings(tls={"cert_file": cert, "key_file": other_key}))
    with pytest.raises(ConfigError, match="allowed_origins"):
        check_auth_config(Settings(auth={"allowed_origins": ["*"]}))


async def call_guard(guard: Guard, path: str, headers: dict[str, str], client: str) -> int:
    """One request through the middleware alone: the status it answers."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": (client, 40000),
        "query_string": b"",
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await guard(scope, receive, send)
    return statuses[0]


def test_guard_host_check_and_remote_metrics() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main() -> None:
        open_guard = Guard(app, 1024, Security(TokenStore([])))
        host = {"host": "127.0.0.1:8766"}
        assert await call_guard(open_guard, f"{API}/profiles", host, "127.0.0.1") == 200
        evil = {"host": "evil.example:8766"}
        assert await call_guard(open_guard, f"{API}/profiles", evil, "127.0.0.1") == 403
        assert await call_guard(open_guard, "/", evil, "127.0.0.1") == 403
        secured = Guard(
            app, 1024, Security(TokenStore(Settings(auth={"tokens": TOKENS}).auth.tokens))
        )
        assert await call_guard(secured, "/metrics", evil, "192.0.2.1") == 401
        assert await call_guard(secured, "/metrics", {**evil, **bearer(ADMIN)}, "192.0.2.1") == 200
        assert await call_guard(secured, "/metrics", evil, "::1") == 200

    asyncio.run(main())
