"""Tokens: generation, hashing, constant-time lookup, scopes, where clients put them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pytest

from voiceid.security.tokens import (
    ANONYMOUS_OPEN,
    SCOPES,
    TOKEN_PREFIX,
    Identity,
    MalformedCredentials,
    TokenStore,
    bearer_token,
    check_token_syntax,
    hash_token,
    new_token,
    presented_token,
    split_query_token,
)


@dataclass
class Entry:
    name: str
    sha256: str
    scopes: list[str] = field(default_factory=lambda: ["stream"])


def test_new_tokens_are_random_prefixed_and_valid_bearer_tokens() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    for t in tokens:
        assert t.startswith(TOKEN_PREFIX) and len(t) == len(TOKEN_PREFIX) + 43
        assert check_token_syntax(t) == t


def test_hash_is_sha256_hex_of_utf8() -> None:
    assert hash_token("foo") == hashlib.sha256(b"foo").hexdigest()
    assert hash_token("foo") == "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"


def test_store_finds_the_identity_and_nothing_else() -> None:
    a, b = new_token(), new_token()
    store = TokenStore(
        [Entry("kitchen", hash_token(a), ["stream"]), Entry("admin", hash_token(b), SCOPES)]
    )
    assert store.enabled and len(store) == 2
    assert store.authenticate(a) == Identity("kitchen", frozenset({"stream"}))
    who = store.authenticate(b)
    assert who is not None and who.name == "admin" and who.scopes == frozenset(SCOPES)
    assert store.authenticate(None) is None
    assert store.authenticate("") is None
    assert store.authenticate(a + "x") is None
    assert store.authenticate(hash_token(a)) is None  # the hash itself is not a token


def test_store_accepts_upper_case_hex_and_rejects_garbage() -> None:
    t = new_token()
    store = TokenStore([Entry("x", hash_token(t).upper())])
    assert store.authenticate(t) is not None
    with pytest.raises(ValueError, match="64 hex"):
        TokenStore([Entry("x", "abc")])
    assert not TokenStore([]).enabled


def test_every_hash_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the time taken does not say which entry matched."""
    import voiceid.security.tokens as mod

    calls: list[bytes] = []
    real = mod.hmac.compare_digest

    def spy(x: bytes, y: bytes) -> bool:
        calls.append(y)
        return bool(real(x, y))

    tokens = [new_token() for _ in range(4)]
    store = TokenStore([Entry(f"t{i}", hash_token(t)) for i, t in enumerate(tokens)])
    monkeypatch.setattr(mod.hmac, "compare_digest", spy)
    assert store.authenticate(tokens[0]) is not None
    assert len(calls) == 4
    calls.clear()
    assert store.authenticate("nope") is None
    assert len(calls) == 4


def test_scopes_are_independent() -> None:
    stream = Identity("s", frozenset({"stream"}))
    assert stream.allows(["stream"]) and not stream.allows(["admin"])
    assert stream.allows([])  # any valid token
    assert not stream.allows(["enroll", "admin"])
    assert Identity("a", frozenset({"admin"})).allows(["enroll", "admin"])
    assert ANONYMOUS_OPEN.allows(SCOPES)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER   abc  ", "abc"),
        ("Bearer vid_A-b_c.d~e+f/g==", "vid_A-b_c.d~e+f/g=="),
    ],
)
def test_bearer_header(header: str | None, expected: str | None) -> None:
    assert bearer_token(header) == expected


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer a b", "Bearer ä", "abc"]
)
def test_bad_authorization_headers(header: str) -> None:
    with pytest.raises(MalformedCredentials):
        bearer_token(header)


def test_token_syntax_limits() -> None:
    with pytest.raises(MalformedCredentials):
        check_token_syntax("a" * 513)
    with pytest.raises(MalformedCredentials):
        check_token_syntax("a=b")
    assert check_token_syntax("a" * 512)


def test_query_token_is_split_off() -> None:
    assert split_query_token("") == (None, "")
    assert split_query_token("stream=room1") == (None, "stream=room1")
    assert split_query_token("token=abc") == ("abc", "")
    assert split_query_token("stream=room1&token=abc") == ("abc", "stream=room1")
    assert split_query_token("token=a%2Bb&stream=x") == ("a+b", "stream=x")
    assert split_query_token("x") == (None, "x")  # malformed: left to the route's parser
    with pytest.raises(MalformedCredentials):
        split_query_token("token=a&token=b")
    with pytest.raises(MalformedCredentials):
        split_query_token("token=")
    with pytest.raises(MalformedCredentials):
        split_query_token("token=a%20b")


def test_header_wins_over_query() -> None:
    assert presented_token("Bearer head", "query") == "head"
    assert presented_token(None, "query") == "query"
    assert presented_token(None, None) is None
