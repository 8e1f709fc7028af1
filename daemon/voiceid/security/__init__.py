"""Security: who may talk to the daemon, and how much (docs/security.md).

* :mod:`.tokens` - hashed, scoped API tokens; ``Authorization: Bearer`` / ``?token=``;
* :mod:`.origins` - which browser pages may connect (``Origin``, ``Host``);
* :mod:`.ratelimit` - a token bucket per client address for the REST API;
* :mod:`.lockout` - throttling of failed verifications per claimed name;
* :mod:`.templates` - encryption of voice templates at rest.

:class:`Security` bundles what both servers need (tokens, origin policy, TLS context);
:func:`check_auth_config` is the start-up rule: without tokens the daemon may only listen
on loopback addresses (else a :class:`~voiceid.errors.ConfigError`), and it says loudly
that it is open. Rejections of REST clients are counted in :data:`HTTP_REJECTED` (the
WebSocket server counts its own in ``WebSocketStats.rejected``).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from voiceid.errors import ConfigError
from voiceid.security.origins import OriginPolicy, is_loopback
from voiceid.security.tokens import (
    ANONYMOUS_OPEN,
    Identity,
    MalformedCredentials,
    TokenStore,
    presented_token,
)

if TYPE_CHECKING:
    from voiceid.config import Settings, TlsSection

log = logging.getLogger(__name__)

REALM: Final = "voiceid"
TOKEN_HINT: Final = (
    "send 'Authorization: Bearer <token>' (browsers' WebSockets: ?token=<token>); "
    "create a token with `voiceid token new NAME --scope SCOPE`"
)


@dataclass(frozen=True, slots=True)
class Denied:
    """Why a client is refused: HTTP status, metric reason, error code and text."""

    status: int  # 401, 403 or 429
    reason: str  # label of voiceid_rejected_clients
    code: str  # the REST error code
    message: str
    hint: str | None = None
    retry_after: int | None = None  # seconds (429)
    scope: str | None = None  # the scope(s) missing (403 insufficient_scope)

    def headers(self) -> dict[str, str]:
        """``WWW-Authenticate`` (RFC 6750) and ``Retry-After`` as they apply."""
        out: dict[str, str] = {}
        if self.status == 401:
            error = ', error="invalid_token"' if self.code == "invalid_token" else ""
            out["WWW-Authenticate"] = f'Bearer realm="{REALM}"{error}'
        elif self.code == "insufficient_scope":
            out["WWW-Authenticate"] = (
                f'Bearer realm="{REALM}", error="insufficient_scope", scope="{self.scope}"'
            )
        if self.retry_after is not None:
            out["Retry-After"] = str(self.retry_after)
        return out

    def line(self) -> str:
        """One line for a plain-text body (the WebSocket handshake's refusal)."""
        text = f"{self.message} ({self.hint})" if self.hint else self.message
        return text.replace("\n", " ") + "\n"


class Rejections:
    """Refused clients by reason (exported as ``voiceid_rejected_clients``)."""

    def __init__(self) -> None:
        self.rejected: dict[str, int] = {}

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


HTTP_REJECTED: Final = Rejections()
"""REST clients refused by this process (all HTTP servers of the process together)."""


def _denied_auth(
    store: TokenStore, token: str | None, needed: Collection[str]
) -> Identity | Denied:
    if token is None:
        return Denied(401, "unauthorized", "unauthorized", "an API token is required", TOKEN_HINT)
    identity = store.authenticate(token)
    if identity is None:
        return Denied(
            401,
            "unauthorized",
            "invalid_token",
            "the token is not valid here (it matches none of auth.tokens)",
            "check the token; a token is shown only once when created: make a new one "
            "with `voiceid token new NAME --scope SCOPE` if it is lost",
        )
    if not identity.allows(needed):
        scopes = " or ".join(sorted(needed))
        return Denied(
            403,
            "forbidden",
            "insufficient_scope",
            f"token {identity.name!r} lacks the scope {scopes}",
            f"its scopes: {', '.join(sorted(identity.scopes)) or 'none'}; give it "
            f"--scope {sorted(needed)[0]} (a new token) in auth.tokens",
            scope=" ".join(sorted(needed)),
        )
    return identity


@dataclass
class Security:
    """What the WebSocket and HTTP servers check (tokens, origins) and their TLS."""

    tokens: TokenStore
    origins: OriginPolicy = field(default_factory=OriginPolicy)
    ssl_context: ssl.SSLContext | None = None
    # ports of the daemon's own web page (http.port, bound): origins the WebSocket takes
    page_ports: Callable[[], Collection[int]] = lambda: ()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, ports: Mapping[str, int] | None = None
    ) -> Security:
        """From the config; ``ports``: the daemon's bound ports (read at each check, so
        an ephemeral ``http.port: 0`` is known once the HTTP server listens)."""
        http = settings.http
        try:
            origins = OriginPolicy(settings.auth.allowed_origins)
        except ValueError as exc:
            raise ConfigError(str(exc), hint="e.g. https://home.example:8123") from None

        def page_ports() -> Collection[int]:
            if not http.enabled:
                return ()
            bound = ports.get("http") if ports is not None else None
            if bound is not None:
                return (bound,)
            return (http.port,) if http.port else ()

        return cls(
            tokens=TokenStore(settings.auth.tokens),
            origins=origins,
            ssl_context=tls_context(settings.tls),
            page_ports=page_ports,
        )

    @property
    def open(self) -> bool:
        """No tokens configured: every request is allowed (loopback-only daemon)."""
        return not self.tokens.enabled

    @property
    def scheme_suffix(self) -> str:
        """``"s"`` with TLS (``https``/``wss``), else ``""``."""
        return "s" if self.ssl_context is not None else ""

    def authorize(
        self, authorization: str | None, query_token: str | None, needed: Collection[str]
    ) -> Identity | Denied:
        """The caller's identity if it holds one of ``needed`` (empty: any valid token).

        ``authorization``: the ``Authorization`` header; ``query_token``: ``?token=``
        (WebSocket only; pass None for REST).
        """
        if self.open:
            return ANONYMOUS_OPEN
        try:
            token = presented_token(authorization, query_token)
        except MalformedCredentials as exc:
            return Denied(401, "unauthorized", "invalid_token", f"malformed credentials: {exc}")
        return _denied_auth(self.tokens, token, needed)

    def check_browser(
        self,
        origin: str | None,
        host: str | None,
        *,
        page_ports: Collection[int] = (),
        what: str = "request",
    ) -> Denied | None:
        """None when ``Origin``/``Host`` may go ahead, else why not (403)."""
        if self.open and not self.origins.host_allowed(host):
            return Denied(
                403,
                "bad_host",
                "bad_host",
                f"Host {str(host)[:100]!r} is not a loopback name: this daemon has no tokens "
                "and serves only this machine",
                "open it as http://127.0.0.1:PORT/ or http://localhost:PORT/ (a DNS name "
                "pointing here needs auth.tokens, or its origin in auth.allowed_origins)",
            )
        if not self.origins.allows(origin, host, page_ports=page_ports):
            return Denied(
                403,
                "bad_origin",
                "cross_origin",
                f"{what} from another origin ({str(origin)[:100]}) refused",
                "use the web page this daemon serves, a client without an Origin header, "
                "or add the origin to auth.allowed_origins",
            )
        return None


# -- configuration checks ---------------------------------------------------------------


def is_loopback_bind(host: str) -> bool:
    """Does listening on ``host`` reach this machine only? ("" and 0.0.0.0 do not)."""
    if not host.strip():
        return False
    try:
        ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        return host.strip().lower().rstrip(".") == "localhost"
    return is_loopback(host)


def tls_context(tls: TlsSection) -> ssl.SSLContext | None:
    """The server-side TLS context of ``tls`` (None: no TLS); ``ConfigError`` if the
    certificate or key is missing, unreadable or does not match."""
    cert, key = tls.cert_file, tls.key_file
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing = "tls.cert_file" if cert is None else "tls.key_file"
        raise ConfigError(
            f"{missing} is not set: tls.cert_file and tls.key_file go together",
            hint="give both PEM files, or neither (no TLS)",
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(Path(cert).expanduser(), Path(key).expanduser())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"tls: cannot read {exc.filename or cert}: no such file",
            hint="check tls.cert_file and tls.key_file",
        ) from None
    except PermissionError as exc:
        raise ConfigError(
            f"tls: cannot read {exc.filename or key}: permission denied",
            hint="the key must be readable by the user the daemon runs as",
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"tls: cannot load {cert} with {key}: {exc}",
            hint="both must be PEM, and the key must belong to the certificate",
        ) from None
    return ctx


def check_auth_config(settings: Settings) -> None:
    """The start-up rule: without ``auth.tokens``, every enabled server must bind a
    loopback address (``ConfigError`` otherwise), and the daemon warns that it is open.
    A public Wyoming ASR listener (no authentication in that protocol) is warned about.

    Also validates ``auth.allowed_origins`` and the TLS files (``ConfigError``).
    """
    binds = [
        (name, section.host)
        for name, section in (("websocket", settings.websocket), ("http", settings.http))
        if section.enabled
    ]
    security = Security.from_settings(settings)
    exposed = [f"{name}.host {host!r}" for name, host in binds if not is_loopback_bind(host)]
    if security.open:
        if exposed:
            raise ConfigError(
                f"auth.tokens is empty but {' and '.join(exposed)} "
                f"{'is not a loopback address' if len(exposed) == 1 else 'are not loopback'}"
                ": anyone on the network could listen in, enroll and delete profiles",
                hint="create a token with `voiceid token new NAME --scope stream --scope "
                "enroll` and paste its entry under auth.tokens, or listen on 127.0.0.1",
            )
        if binds:
            log.warning(
                "auth: NO TOKENS CONFIGURED - the WebSocket and REST API are open to every "
                "program and user of this machine (loopback only); set auth.tokens "
                "(`voiceid token new`) to require tokens"
            )
    elif exposed and security.ssl_context is None:
        log.warning(
            "auth: %s without TLS: tokens, audio and events cross the network in clear text;"
            " set tls.cert_file and tls.key_file (or put a TLS proxy in front)",
            " and ".join(exposed),
        )
    asr = settings.wyoming.asr
    if asr.enabled and not is_loopback_bind(urlsplit(asr.uri).hostname or ""):
        log.warning(
            "wyoming.asr.uri %s is not a loopback address: the Wyoming protocol has no "
            "authentication or TLS (auth.tokens do not apply): anyone who reaches it can "
            "send audio and read speaker names; allow only the Home Assistant host (firewall)",
            asr.uri,
        )
