"""Which browser pages may talk to the daemon (Origin), and the Host check of an open
(tokenless, loopback-only) daemon against DNS rebinding."""

from __future__ import annotations

import pytest

from voiceid.security.origins import (
    Origin,
    OriginPolicy,
    is_loopback,
    parse_host,
    parse_origin,
    same_host,
)

POLICY = OriginPolicy(["https://ha.example:8123", "http://Dash.Example"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:8766", Origin("http", "127.0.0.1", 8766)),
        ("HTTPS://Example.COM", Origin("https", "example.com", 443)),
        ("http://[::1]:8766", Origin("http", "::1", 8766)),
        ("http://example.com/", Origin("http", "example.com", 80)),
        ("null", None),
        ("", None),
        ("file://", None),
        ("ws://example.com", None),
        ("http://example.com/path", None),
        ("http://user@example.com", None),
        ("http://example.com:99999", None),
        ("http://", None),
    ],
)
def test_parse_origin(value: str, expected: Origin | None) -> None:
    assert parse_origin(value) == expected


def test_origin_str_round_trip() -> None:
    for text in ("http://127.0.0.1:8766", "https://example.com", "http://[::1]:80"):
        parsed = parse_origin(text)
        assert parsed is not None and parse_origin(str(parsed)) == parsed
    assert str(parse_origin("https://example.com:443")) == "https://example.com"


def test_parse_host() -> None:
    assert parse_host("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert parse_host("Example.com") == ("example.com", None)
    assert parse_host("[::1]:8765") == ("::1", 8765)
    assert parse_host("") is None and parse_host(None) is None
    assert parse_host("a/b") is None and parse_host("h:x") is None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("app.localhost", True),
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("192.168.1.5", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_loopback_names_are_one_host() -> None:
    assert same_host("localhost", "127.0.0.1") and same_host("[::1]", "localhost")
    assert same_host("Example.com.", "example.com")
    assert not same_host("example.com", "127.0.0.1")


def test_requests_without_origin_are_not_browsers() -> None:
    assert POLICY.allows(None, "anything:1")
    assert POLICY.allows(None, None)


def test_same_origin_rest() -> None:
    """The page and the API share an address (Host), reverse proxies included."""
    assert POLICY.allows("http://127.0.0.1:8766", "127.0.0.1:8766")
    assert POLICY.allows("http://localhost:8766", "127.0.0.1:8766")  # loopback equivalents
    assert POLICY.allows("https://voice.example", "voice.example")  # TLS proxy, Host kept
    assert POLICY.allows("https://voice.example", "voice.example:443")
    assert not POLICY.allows("http://127.0.0.1:9999", "127.0.0.1:8766")
    assert not POLICY.allows("http://evil.example", "127.0.0.1:8766")
    assert not POLICY.allows("http://evil.example:8766", "127.0.0.1:8766")
    assert not POLICY.allows("null", "127.0.0.1:8766")
    assert not POLICY.allows("http://127.0.0.1:8766", None)


def test_websocket_takes_the_daemons_page() -> None:
    """The page on the HTTP port connects to the WebSocket port of the same host."""
    ports = (8766,)
    assert POLICY.allows("http://127.0.0.1:8766", "127.0.0.1:8765", page_ports=ports)
    assert POLICY.allows("http://localhost:8766", "[::1]:8765", page_ports=ports)
    assert POLICY.allows("https://box.lan:8766", "box.lan:8765", page_ports=ports)
    assert not POLICY.allows("http://127.0.0.1:3000", "127.0.0.1:8765", page_ports=ports)
    assert not POLICY.allows("http://evil.example:8766", "127.0.0.1:8765", page_ports=ports)
    assert not POLICY.allows("http://box.lan:8766", "other.lan:8765", page_ports=ports)
    assert not POLICY.allows("http://127.0.0.1:8766", "127.0.0.1:8765")  # no page port known


def test_allowed_origins_exactly() -> None:
    assert POLICY.allows("https://ha.example:8123", "127.0.0.1:8765")
    assert POLICY.allows("http://dash.example", "127.0.0.1:8765")
    assert POLICY.allows("http://dash.example:80", "127.0.0.1:8765")
    assert not POLICY.allows("http://ha.example:8123", "127.0.0.1:8765")  # scheme differs
    assert not POLICY.allows("https://ha.example", "127.0.0.1:8765")  # port differs
    assert not POLICY.allows("https://sub.ha.example:8123", "127.0.0.1:8765")


@pytest.mark.parametrize("bad", ["*", "ha.example", "https://ha.example/path", "null"])
def test_bad_allowed_origins_are_config_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="allowed_origins"):
        OriginPolicy([bad])


def test_host_check_against_dns_rebinding() -> None:
    assert POLICY.host_allowed("127.0.0.1:8766")
    assert POLICY.host_allowed("localhost:8766")
    assert POLICY.host_allowed("[::1]:8766")
    assert POLICY.host_allowed("dash.example")  # the host of an allowed origin
    assert POLICY.host_allowed(None)  # not a browser
    assert not POLICY.host_allowed("evil.example:8766")  # rebound to 127.0.0.1
    assert not POLICY.host_allowed("192.168.1.5:8766")
    assert not POLICY.host_allowed("")
