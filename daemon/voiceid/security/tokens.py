"""API tokens: generated once, stored hashed, checked in constant time, scoped.

A token is ``vid_`` + 43 URL-safe base64 characters (256 random bits). The daemon keeps
only its SHA-256 (``auth.tokens[].sha256``): a leaked config file does not leak usable
tokens, and because the tokens are long random strings a plain (unsalted, fast) hash is
enough - there is nothing to brute-force. Presented tokens are hashed and compared with
every configured hash using :func:`hmac.compare_digest`, without stopping at the first
match, so the time taken says nothing about which hash (or which prefix) matched.

Where a client puts its token (:func:`presented_token`):

* ``Authorization: Bearer <token>`` (RFC 6750) - every non-browser client, and the web
  page's REST calls;
* ``?token=<token>`` in the URL - WebSocket only, because browsers cannot set headers on
  a WebSocket handshake. URLs end up in proxy logs: prefer the header where possible.

Scopes (``auth.tokens[].scopes``) are independent, none implies another:

* ``stream`` - send audio (``/stream``) and read events (``/events``);
* ``enroll`` - enroll, verify, identify, list profiles;
* ``admin`` - delete, export and import profiles, thresholds, remote ``/metrics``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, Protocol
from urllib.parse import parse_qsl, urlencode

Scope = Literal["stream", "enroll", "admin"]
SCOPES: Final[tuple[Scope, ...]] = ("stream", "enroll", "admin")
TOKEN_PREFIX: Final = "vid_"
TOKEN_BYTES: Final = 32
MAX_TOKEN_CHARS: Final = 512
QUERY_PARAM: Final = "token"
# RFC 6750 b64token: what a bearer token may look like on the wire
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")


class MalformedCredentials(ValueError):
    """An ``Authorization`` header or ``token`` parameter that cannot be a token."""


def new_token() -> str:
    """A fresh random token (shown to the user once, never stored by the daemon)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The SHA-256 hex digest that ``auth.tokens[].sha256`` stores for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_token_syntax(token: str) -> str:
    """``token`` if it looks like a bearer token, else :class:`MalformedCredentials`."""
    if not token or len(token) > MAX_TOKEN_CHARS or not _B64TOKEN.fullmatch(token):
        raise MalformedCredentials(
            "a token is 1-512 characters of A-Z a-z 0-9 - . _ ~ + / (then = padding)"
        )
    return token


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None: no header).

    Another scheme (``Basic ...``) or a malformed value raises :class:`MalformedCredentials`.
    """
    if authorization is None:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise MalformedCredentials(f"expected 'Authorization: Bearer <token>', got {scheme[:20]!r}")
    return check_token_syntax(value.strip())


def split_query_token(query: str) -> tuple[str | None, str]:
    """``(token, the query without it)`` of a URL query (``token`` at most once).

    The rest of the query is returned re-encoded, unchanged otherwise, for the route's own
    parser. A malformed query is returned as it is (the route's parser reports it).
    """
    if not query:
        return None, ""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return None, query
    tokens = [v for k, v in pairs if k == QUERY_PARAM]
    if not tokens:
        return None, query
    if len(tokens) > 1:
        raise MalformedCredentials(f"give {QUERY_PARAM}= at most once")
    rest = [(k, v) for k, v in pairs if k != QUERY_PARAM]
    return check_token_syntax(tokens[0]), urlencode(rest)


def presented_token(authorization: str | None, query_token: str | None) -> str | None:
    """The token a request carries: the ``Authorization`` header, else ``?token=``."""
    header = bearer_token(authorization)
    return header if header is not None else query_token


class TokenEntryLike(Protocol):
    """What :class:`TokenStore` reads of a ``config.TokenEntry``."""

    @property
    def name(self) -> str: ...

    @property
    def sha256(self) -> str: ...

    @property
    def scopes(self) -> Iterable[str]: ...


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request authenticated as: the token's name and its scopes."""

    name: str
    scopes: frozenset[str]

    def allows(self, needed: Iterable[str]) -> bool:
        """True when it holds one of ``needed`` (an empty ``needed``: any identity)."""
        wanted = frozenset(needed)
        return not wanted or bool(self.scopes & wanted)


ANONYMOUS_OPEN: Final = Identity("(no tokens configured)", frozenset(SCOPES))
"""The identity of every request when ``auth.tokens`` is empty (loopback-only daemon)."""


@dataclass(frozen=True, slots=True)
class _Hashed:
    digest: bytes
    identity: Identity


class TokenStore:
    """The configured tokens (hashes only). Empty: authentication is off."""

    def __init__(self, entries: Iterable[TokenEntryLike]) -> None:
        hashed = []
        for e in entries:
            digest = e.sha256.lower()
            if not _SHA256_HEX.fullmatch(digest):
                raise ValueError(f"token {e.name!r}: sha256 must be 64 hex digits")
            hashed.append(_Hashed(digest.encode("ascii"), Identity(e.name, frozenset(e.scopes))))
        self._entries = tuple(hashed)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def authenticate(self, token: str | None) -> Identity | None:
        """The identity of ``token``, None when it matches no configured hash.

        Every configured hash is compared (constant time each, no early exit).
        """
        if token is None:
            return None
        digest = hash_token(token).encode("ascii")
        found: Identity | None = None
        for entry in self._entries:
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry.identity
        return found
