"""The REST API (JSON under ``/api/v1``), health and metrics, and the web page at ``/``.

``create_app(daemon)`` builds the FastAPI application for one
:class:`~voiceid.runtime.daemon.Daemon`; every route reads ``daemon.app`` and
``daemon.hub`` at request time, so the application can be built (and answers
``/healthz``) before the model is loaded: everything else is ``503 not_ready`` until
then. Embedding and database work runs in worker threads (``asyncio.to_thread``): the
event loop that carries the live streams never waits for it. After an enrollment or a
deletion the hub's scorer is rebuilt from the store, so live streams see the change
from their next decision.

Errors are JSON ``{"error": {"code", "message", "hint"}}`` (see ``docs/rest.md``).

Access (``docs/security.md``) is checked by the :class:`Guard` middleware before a route
runs or a body is read: the per-address rate limit (429), the ``Host`` of a daemon
without tokens (403 ``bad_host``), the ``Origin`` of writes (403 ``cross_origin``), then
the bearer token and its scope from :func:`required_scopes` (401, 403). Verification
is throttled per claimed name after repeated failures (:mod:`voiceid.security.lockout`).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import soundfile as sf
import soxr
from fastapi import Body, FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from numpy.typing import NDArray
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from voiceid import __version__
from voiceid.audio.io import SUPPORTED_FORMATS
from voiceid.errors import (
    AudioError,
    ConfigError,
    ModelError,
    ProfileError,
    ProtocolError,
    StoreError,
    VoiceidError,
)
from voiceid.profiles.enroll import (
    ADVICE,
    AddResult,
    EnrollmentPolicy,
    EnrollmentSession,
    Feedback,
    Progress,
)
from voiceid.profiles.model import Profile, ProfileSummary, check_metadata, check_name
from voiceid.profiles.scoring import identify, require_profiles, require_same_model, score
from voiceid.runtime import metrics
from voiceid.security import HTTP_REJECTED, Denied, Security
from voiceid.security.lockout import VerifyLockout
from voiceid.security.origins import is_loopback
from voiceid.security.ratelimit import RateLimiter, client_key
from voiceid.security.tokens import Identity, TokenStore
from voiceid.security.tokens import Scope as TokenScope

if TYPE_CHECKING:
    from voiceid.app import App
    from voiceid.runtime.daemon import Daemon
    from voiceid.runtime.hub import Hub

log = logging.getLogger(__name__)

API = "/api/v1"
STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_UTTERANCE_S = 600.0  # longest upload accepted per file (seconds of audio)
ENROLLMENT_TTL_S = 300.0  # an enrollment session expires after this long without activity
MAX_ENROLLMENTS = 16  # open enrollment sessions at once
EMBED_CONCURRENCY = 2  # uploads embedded at the same time (the live streams come first)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ANY_TOKEN: frozenset[TokenScope] = frozenset()  # any valid token, whatever its scopes
ENROLL: frozenset[TokenScope] = frozenset({"enroll"})
ADMIN: frozenset[TokenScope] = frozenset({"admin"})
ENROLL_OR_ADMIN: frozenset[TokenScope] = frozenset({"enroll", "admin"})
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/openapi.json", "/docs"})
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz"})  # probes: never rate limited
METRICS_PATH = "/metrics"
ANONYMOUS = Identity("anonymous", frozenset())  # an open route, or /metrics from loopback
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; media-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)

Samples = NDArray[np.float32]
NameParam = Annotated[str, PathParam(description="profile name (ignoring case) or id")]
EidParam = Annotated[str, PathParam(description="enrollment session id")]
Threshold = Annotated[
    float | None,
    Form(ge=-1.0, le=1.0, description="cosine threshold (default: stored, else the card's)"),
]


# ------------------------------------------------------------------------ models


class ErrorInfo(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. `profile_not_found`")
    message: str = Field(description="what happened, in one line")
    hint: str | None = Field(default=None, description="what to do about it")
    details: dict[str, Any] | None = Field(
        default=None, description="structured context (e.g. the feedback of an enrollment)"
    )


class ErrorResponse(BaseModel):
    error: ErrorInfo


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    model: str
    profiles: int = Field(description="profiles usable with the loaded model")
    streams: int = Field(description="live audio streams")


class VersionInfo(BaseModel):
    name: Literal["voiceid"] = "voiceid"
    version: str
    api: Literal["v1"] = "v1"


class ModelInfo(BaseModel):
    name: str
    description: str
    dim: int = Field(description="embedding dimension")
    sample_rate: int = Field(description="Hz the model works at (uploads are resampled)")
    provider: str = Field(description="ONNX Runtime execution provider in use")
    fingerprint: str = Field(description="identity of the embedding space")
    threshold: float = Field(description="cosine threshold of verify/identify (utterances)")
    threshold_source: Literal["stored", "card"]
    stream_threshold: float = Field(description="enter threshold of the live streams")
    score_norm: Literal["none", "asnorm"]
    license: str
    source: str


class WebSocketInfo(BaseModel):
    enabled: bool
    port: int | None = Field(description="bound port of the WebSocket server")
    stream_path: str = "/stream"
    events_path: str = "/events"


class PolicyInfo(BaseModel):
    min_utterances: int
    min_total_speech_s: float
    min_utterance_speech_s: float


class ClientConfig(BaseModel):
    """What a client (the web page) needs to know to talk to this daemon."""

    websocket: WebSocketInfo
    max_upload_bytes: int
    enrollment: PolicyInfo
    enrollment_ttl_s: float
    sample_rate: int


class StreamInfo(BaseModel):
    name: str
    opened_at: float = Field(description="unix seconds")
    enabled: bool = Field(description="false while identification is paused (MQTT OFF)")


class StreamList(BaseModel):
    streams: list[StreamInfo]


class ProfileInfo(BaseModel):
    id: str
    name: str
    model: str = Field(description="name of the model it was enrolled with")
    fingerprint: str
    usable: bool = Field(description="enrolled with the loaded model (else: re-enroll it)")
    utterances: int
    speech_s: float
    created: float = Field(description="unix seconds")
    updated: float = Field(description="unix seconds")
    metadata: dict[str, str]


class Recording(BaseModel):
    speech_s: float
    source: str


class ProfileDetail(ProfileInfo):
    recordings: list[Recording]


class ProfileList(BaseModel):
    profiles: list[ProfileInfo]


class Deleted(BaseModel):
    deleted: str


class ProgressInfo(BaseModel):
    collected_s: float = Field(description="seconds of accepted speech")
    required_s: float
    utterances: int = Field(description="accepted utterances")
    required_utterances: int
    percent: int = Field(ge=0, le=100)
    complete: bool
    missing: str = Field(description='what is still needed, in words ("" when complete)')


class UtteranceResult(BaseModel):
    source: str = Field(description="the uploaded file's name")
    accepted: bool
    feedback: list[Feedback] = Field(description="`ok`, or why it was not counted")
    advice: list[str] = Field(description="one line of advice per feedback code")
    speech_s: float
    level_dbfs: float | None
    consistency: float | None = Field(description="cosine to the utterances so far")
    progress: ProgressInfo


class EnrollResult(BaseModel):
    name: str
    committed: bool
    utterances: list[UtteranceResult]
    progress: ProgressInfo
    profile: ProfileInfo | None


class EnrollmentRequest(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="the person's name")
    replace: bool = Field(default=False, description="re-enroll an existing profile")


class EnrollmentState(BaseModel):
    id: str
    name: str
    replace: bool
    attempts: int = Field(description="utterances uploaded (accepted or not)")
    progress: ProgressInfo
    expires_in_s: float = Field(description="seconds left without activity")


class FinishRequest(BaseModel):
    metadata: dict[str, str] | None = None


class VerifyResult(BaseModel):
    name: str
    score: float = Field(description="cosine to the profile's centroid")
    threshold: float
    accepted: bool


class MatchInfo(BaseModel):
    name: str
    score: float


class IdentifyResult(BaseModel):
    decision: str | None = Field(description="best name at or above threshold, else null")
    threshold: float
    matches: list[MatchInfo] = Field(description="best first")


# ------------------------------------------------------------------------ errors


class ApiError(Exception):
    """An error with its HTTP status and code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        hint: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.hint, self.details = hint, details
        self.headers = headers


class _TooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


def _error_response(
    status: int,
    code: str,
    message: str,
    hint: str | None = None,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorInfo(code=code, message=message, hint=hint, details=details))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


_BY_CLASS: tuple[tuple[type[VoiceidError], int, str], ...] = (
    (AudioError, 422, "bad_audio"),
    (ProtocolError, 422, "bad_request"),
    (ConfigError, 422, "invalid_argument"),
    (ProfileError, 422, "profile_error"),
    (StoreError, 503, "store_unavailable"),
    (ModelError, 503, "model_unavailable"),
)


def _status_of(exc: VoiceidError) -> tuple[int, str]:
    for cls, status, code in _BY_CLASS:
        if isinstance(exc, cls):
            return status, code
    return 500, "error"


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}

_E = {"model": ErrorResponse}
ERRORS_READY: dict[int | str, dict[str, Any]] = {503: _E | {"description": "not ready"}}
ERRORS_INPUT: dict[int | str, dict[str, Any]] = {
    **ERRORS_READY,
    422: _E | {"description": "invalid input or unreadable audio"},
}
ERRORS_UPLOAD: dict[int | str, dict[str, Any]] = {
    **ERRORS_INPUT,
    400: _E | {"description": "body not parseable as multipart/form-data"},
    413: _E | {"description": "upload larger than http.max_upload_bytes"},
}
ERR_422: dict[int | str, dict[str, Any]] = {422: _E | {"description": "invalid input"}}
ERR_400: dict[int | str, dict[str, Any]] = {
    400: _E | {"description": "body not parseable (e.g. JSON that is not UTF-8)"}
}
ERR_404: dict[int | str, dict[str, Any]] = {404: _E | {"description": "no such profile"}}
ERR_409: dict[int | str, dict[str, Any]] = {409: _E | {"description": "conflict"}}
ERR_SESSION: dict[int | str, dict[str, Any]] = {
    404: _E | {"description": "no such enrollment session (or it expired)"}
}


# --------------------------------------------------------------- audio and helpers


def decode_audio(data: bytes, source: str, rate: int) -> Samples:
    """Mono float32 samples at ``rate`` of an uploaded file (any format libsndfile reads)."""
    if not data:
        raise AudioError(f"{source}: the upload is empty (0 bytes)", hint="record it again")
    hint = f"supported formats: {SUPPORTED_FORMATS}"
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate_in = int(f.samplerate)
            if f.frames > MAX_UTTERANCE_S * rate_in:
                raise AudioError(
                    f"{source} is {f.frames / rate_in:.0f} s long, more than "
                    f"{MAX_UTTERANCE_S:.0f} s",
                    hint="upload shorter recordings (5-20 s of speech each is plenty)",
                )
            x = f.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError as err:
        raise AudioError(
            f"cannot read {source}: {err.error_string.rstrip('.')}", hint=hint
        ) from None
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as err:
        raise AudioError(f"cannot read {source}: {err}", hint=hint) from None
    if x.shape[0] == 0:
        raise AudioError(f"{source} holds no samples", hint="record it again")
    mono = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if not bool(np.isfinite(mono).all()):
        raise AudioError(f"{source} holds NaN or infinite samples")
    if rate_in != rate:
        mono = np.asarray(soxr.resample(mono, rate_in, rate, quality="HQ"), np.float32)
    return mono


async def _read_upload(upload: UploadFile, index: int) -> tuple[str, bytes]:
    name = Path(upload.filename or "").name or f"upload-{index}"
    return name, await upload.read()


def _progress(p: Progress) -> ProgressInfo:
    return ProgressInfo(
        collected_s=p.collected_s,
        required_s=p.required_s,
        utterances=p.utterances,
        required_utterances=p.required_utterances,
        percent=p.percent,
        complete=p.complete,
        missing=p.missing(),
    )


def _utterance(source: str, r: AddResult) -> UtteranceResult:
    return UtteranceResult(
        source=source,
        accepted=r.accepted,
        feedback=list(r.feedback),
        advice=[ADVICE[f] for f in r.feedback],
        speech_s=round(r.speech_s, 2),
        level_dbfs=None if r.level_dbfs is None else round(r.level_dbfs, 1),
        consistency=None if r.consistency is None else round(r.consistency, 4),
        progress=_progress(r.progress),
    )


def _profile_info(p: Profile | ProfileSummary, fingerprint: str) -> ProfileInfo:
    n = len(p.utterances) if isinstance(p, Profile) else p.n_utterances
    return ProfileInfo(
        id=p.id,
        name=p.name,
        model=p.model_name,
        fingerprint=p.fingerprint,
        usable=p.fingerprint == fingerprint,
        utterances=n,
        speech_s=round(p.speech_s, 2),
        created=round(p.created, 3),
        updated=round(p.updated, 3),
        metadata=dict(p.metadata),
    )


def _finite(x: float) -> float:
    return round(x, 6) if math.isfinite(x) else 0.0


def _who(request: Request) -> str:
    """Who made a request, for the log: the token's name."""
    identity = getattr(request.state, "identity", None)
    return f"by {identity.name}" if isinstance(identity, Identity) else "by ?"


def _document_security(app: FastAPI) -> None:
    """Bearer tokens in the OpenAPI document: the scheme, and per operation the scopes
    and the 401/403/429 answers, from :func:`required_scopes` (what the Guard applies)."""
    generate = app.openapi

    def answer(text: str) -> dict[str, Any]:
        schema = {"$ref": "#/components/schemas/ErrorResponse"}
        return {"description": text, "content": {"application/json": {"schema": schema}}}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = generate()
        doc.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "an API token (`voiceid token new NAME --scope SCOPE`); "
            "required when the daemon has auth.tokens",
        }
        for path, item in doc.get("paths", {}).items():
            for method, op in item.items():
                responses = op.setdefault("responses", {})
                if path not in UNLIMITED_PATHS:
                    limited = "too many requests (security.http_rate_per_min): see Retry-After"
                    if path == f"{API}/verify":
                        limited += "; or `verify_locked`: too many failed verifications of "
                        limited += "this name in a row"
                    responses.setdefault("429", answer(limited))
                needed = required_scopes(method, path)
                if needed is None:
                    continue
                op["security"] = [{"bearer": []}]
                responses.setdefault("401", answer("no valid token (when auth.tokens is set)"))
                if needed:
                    scopes = " or ".join(f"`{x}`" for x in sorted(needed))
                    responses.setdefault(
                        "403",
                        answer(f"the token lacks the scope {scopes}, or a cross-origin write"),
                    )
                    note = f"Token scope: {scopes}."
                else:
                    note = "Any valid token."
                if path == METRICS_PATH:
                    note += " Clients on loopback addresses need none."
                op["description"] = (op.get("description", "") + "\n\n" + note).strip()
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


# ------------------------------------------------------------ enrollment sessions


@dataclass
class _Enrollment:
    id: str
    session: EnrollmentSession
    expires: float  # monotonic seconds
    attempts: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Enrollments:
    """Open enrollment sessions of the browser API: bounded in number, expiring."""

    def __init__(
        self,
        ttl_s: float = ENROLLMENT_TTL_S,
        max_sessions: int = MAX_ENROLLMENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._open: dict[str, _Enrollment] = {}

    def __len__(self) -> int:
        return len(self._open)

    def sweep(self) -> int:
        """Cancel and forget expired sessions (not one in use right now)."""
        now = self.clock()
        dead = [e for e in self._open.values() if e.expires <= now and not e.lock.locked()]
        for e in dead:
            e.session.cancel()
            del self._open[e.id]
        if dead:
            log.info("%d enrollment session(s) expired", len(dead))
        return len(dead)

    def add(self, session: EnrollmentSession) -> _Enrollment:
        self.sweep()
        if len(self._open) >= self.max_sessions:
            raise ApiError(
                429,
                "too_many_enrollments",
                f"{len(self._open)} enrollment sessions are open, the limit is {self.max_sessions}",
                hint=f"finish or cancel one, or wait: they expire after {self.ttl_s:.0f} s "
                "without activity",
            )
        entry = _Enrollment(secrets.token_hex(16), session, self.clock() + self.ttl_s)
        self._open[entry.id] = entry
        return entry

    def get(self, eid: str) -> _Enrollment:
        self.sweep()
        entry = self._open.get(eid)
        if entry is None:
            raise ApiError(
                404,
                "enrollment_not_found",
                "no such enrollment session (it may have expired)",
                hint=f"sessions expire {self.ttl_s:.0f} s after their last upload: "
                "start a new one with POST /api/v1/enrollments",
            )
        entry.expires = self.clock() + self.ttl_s
        return entry

    def state(self, entry: _Enrollment) -> EnrollmentState:
        s = entry.session
        return EnrollmentState(
            id=entry.id,
            name=s.name,
            replace=s.replace,
            attempts=entry.attempts,
            progress=_progress(s.progress()),
            expires_in_s=round(max(0.0, entry.expires - self.clock()), 1),
        )

    def remove(self, eid: str) -> None:
        entry = self._open.pop(eid, None)
        if entry is not None:
            entry.session.cancel()

    def clear(self) -> None:
        for eid in list(self._open):
            self.remove(eid)


# ----------------------------------------------------------------- middleware


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def required_scopes(method: str, path: str) -> frozenset[TokenScope] | None:
    """The token scopes a request needs (one of them), :data:`ANY_TOKEN` for any valid
    token, None for none (open). ``path`` may be a route template (``{name}``).

    Paths under ``/api/v1`` that are not listed need ``admin``: a route added later is
    closed until it is given its scope here.
    """
    if path in OPEN_PATHS or path.startswith(("/static/", "/docs/")):
        return None
    if path == METRICS_PATH:
        return ADMIN  # and loopback clients need none (Guard)
    if path != API and not path.startswith(API + "/"):
        return None  # not an API path: 404 for everybody
    parts = [p for p in path[len(API) :].split("/") if p]
    first = parts[0] if parts else ""
    safe = method.upper() in SAFE_METHODS
    if first in ("version", "config", "model", "streams") and safe:
        return ANY_TOKEN
    if first == "profiles":
        if safe and not (len(parts) == 3 and parts[2] == "export"):
            return ENROLL_OR_ADMIN
        return ADMIN  # delete, export
    if first in ("enroll", "enrollments", "verify", "identify"):
        return ENROLL
    return ADMIN  # export, import, thresholds, anything new


def _header_map(scope: Scope) -> dict[str, str]:
    """Request headers by lower-case name; a repeated Origin/Host/Authorization
    header becomes "" (invalid for every check that reads it)."""
    out: dict[str, str] = {}
    for k, v in scope["headers"]:
        name = k.decode("latin-1").lower()
        value = v.decode("latin-1")
        if name in out and name in ("origin", "host", "authorization"):
            value = ""
        out[name] = value
    return out


class Guard:
    """Pure ASGI middleware: rate limit (429), ``Host`` (403), same-origin writes (403),
    token and scope (401/403), upload size limit (413), headers.

    In this order, before a route runs or a body is read:

    * every client address (IPv6: its /64) gets ``security.http_rate_per_min``
      requests per minute (a bucket of that many, refilled continuously); beyond, 429
      with ``Retry-After`` (``/healthz`` and ``/readyz`` are not counted);
    * a daemon without tokens (loopback only) answers only requests whose ``Host`` is
      a loopback name: a DNS-rebinding page cannot reach it through the browser;
    * a request that changes something (not GET/HEAD/OPTIONS) from a browser page of
      another origin (its ``Origin`` differs from ``Host``, and is not in
      ``auth.allowed_origins``) is refused with 403 ``cross_origin``: a web site the
      user visits cannot enroll or delete profiles through the browser;
    * with tokens configured, :func:`required_scopes` says what the route needs: no
      token 401 (``WWW-Authenticate: Bearer``), a token without the scope 403;
      ``/metrics`` is free for loopback clients and needs ``admin`` from elsewhere;
    * a body larger than ``limit`` bytes is refused with 413: at once when
      ``Content-Length`` says so, else as soon as that many bytes have arrived.

    Every response gets ``nosniff``/``no-referrer``; the web page a strict CSP; the API
    ``Cache-Control: no-store`` (profiles are personal data). Refusals are counted in
    :data:`voiceid.security.HTTP_REJECTED` by reason.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        security: Security | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.app = app
        self.limit = limit
        self.security = security if security is not None else Security(TokenStore(()))
        self.limiter = limiter

    def check(self, scope: Scope, headers: dict[str, str]) -> Identity | Denied:
        """The caller's identity, or why it is refused."""
        method: str = scope["method"]
        path: str = scope["path"]
        client = scope.get("client")
        address = str(client[0]) if client else None
        if self.limiter is not None and path not in UNLIMITED_PATHS:
            wait = self.limiter.acquire(client_key(address))
            if wait > 0:
                retry = RateLimiter.retry_after(wait)
                return Denied(
                    429,
                    "rate_limited",
                    "rate_limited",
                    f"too many requests from {address}: the limit is "
                    f"{self.limiter.per_s * 60:g} per minute",
                    f"retry in {retry} s (security.http_rate_per_min)",
                    retry_after=retry,
                )
        security = self.security
        write = method not in SAFE_METHODS
        denied = security.check_browser(
            headers.get("origin") if write else None,
            headers.get("host"),
            what=method,
        )
        if denied is not None:
            return denied
        needed = required_scopes(method, path)
        if needed is None:
            return ANONYMOUS
        loopback = address is not None and is_loopback(address)
        if path == METRICS_PATH and loopback and "authorization" not in headers:
            return ANONYMOUS
        return security.authorize(headers.get("authorization"), None, needed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _header_map(scope)
        method = scope["method"]
        who = self.check(scope, headers)
        if isinstance(who, Denied):
            HTTP_REJECTED.reject(who.reason)
            client = scope.get("client")
            log.warning(
                "HTTP %s %s from %s refused (%d %s): %s",
                method,
                scope["path"][:200],
                client[0] if client else "?",
                who.status,
                who.code,
                who.message,
            )
            await _error_response(
                who.status, who.code, who.message, who.hint, headers=who.headers()
            )(scope, receive, send)
            return
        scope.setdefault("state", {})["identity"] = who
        if method not in SAFE_METHODS:
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.limit:
                await self._too_large(scope, receive, send)
                return
        path: str = scope["path"]
        extra: list[tuple[bytes, bytes]] = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]
        if path == "/" or path.startswith("/static/"):
            extra += [
                (b"content-security-policy", PAGE_CSP.encode()),
                (b"x-frame-options", b"DENY"),
            ]
        elif path.startswith(API):
            extra.append((b"cache-control", b"no-store"))
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge(self.limit)
            return message

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _TooLarge:
            if started:
                raise
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _error_response(
            413,
            "too_large",
            f"the request body is larger than {self.limit} bytes",
            hint="upload fewer or shorter recordings per request, or raise http.max_upload_bytes",
        )(scope, receive, send)


# --------------------------------------------------------------------- the app


def create_app(daemon: Daemon) -> FastAPI:
    """The FastAPI application of ``daemon`` (REST API, web page, metrics, health)."""
    cfg = daemon.settings.http
    app = FastAPI(
        title="voiceid",
        version=__version__,
        summary="Real-time streaming speaker verification: REST API",
        description=(
            "Enroll people, verify and identify speakers in recordings, manage profiles. "
            "Live streams use the WebSocket protocol (see `GET /api/v1/config` for its "
            'port and docs/protocol.md). Errors are `{"error": {"code", "message", '
            '"hint"}}`.'
        ),
        openapi_tags=[
            {"name": "profiles", "description": "Enrolled people"},
            {"name": "enrollment", "description": "Enroll from recordings, with feedback"},
            {"name": "scoring", "description": "Verify (1:1) and identify (1:N)"},
            {"name": "daemon", "description": "Health, version, model, configuration"},
        ],
        docs_url="/docs",
        redoc_url=None,
    )
    settings = daemon.settings
    security = Security.from_settings(settings, ports=daemon.ports)
    limiter = RateLimiter(settings.security.http_rate_per_min)
    lockout = VerifyLockout(
        settings.auth.verify_lockout_after,
        settings.auth.verify_lockout_base_s,
        settings.auth.verify_lockout_max_s,
    )
    app.add_middleware(Guard, limit=cfg.max_upload_bytes, security=security, limiter=limiter)
    if settings.auth.allowed_origins:  # pages of other origins may call the API (CORS)
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[str(o) for o in security.origins.allowed],
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.state.security = security
    app.state.limiter = limiter
    app.state.lockout = lockout
    _document_security(app)
    enrollments = Enrollments()
    app.state.enrollments = enrollments
    app.state.daemon = daemon
    embed_slots = asyncio.Semaphore(EMBED_CONCURRENCY)
    refresh_lock = asyncio.Lock()

    # -- errors --------------------------------------------------------------------
    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error_response(
            exc.status, exc.code, exc.message, exc.hint, exc.details, headers=exc.headers
        )

    async def on_voiceid_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, VoiceidError)
        status, code = _status_of(exc)
        if isinstance(exc, StoreError) and "locked" not in exc.message:
            status, code = 500, "store_error"  # corrupt, unwritable: not temporary
        return _error_response(status, code, exc.message, exc.hint)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for err in exc.errors()[:10]:
            loc = [str(p) for p in err.get("loc", ())]
            where = ".".join(loc[1:]) or ".".join(loc) or "request"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error_response(
            422,
            "validation_error",
            "; ".join(parts) or "invalid request",
            hint="see /docs for the parameters of this endpoint",
        )

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        hint = "see /docs for the endpoints" if exc.status_code in (404, 405) else None
        response = _error_response(exc.status_code, code, str(exc.detail), hint)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_crash(request: Request, exc: Exception) -> Response:
        # Starlette's ServerErrorMiddleware re-raises after this: uvicorn logs the traceback
        return _error_response(500, "internal_error", "internal error (see the daemon's log)")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(VoiceidError, on_voiceid_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_crash)

    # -- helpers ---------------------------------------------------------------------
    def ready() -> tuple[App, Hub]:
        a, h = daemon.app, daemon.hub
        if a is None or h is None:
            raise ApiError(
                503, "not_ready", "the model is still loading", hint="retry in a few seconds"
            )
        if daemon.stopping.is_set():
            raise ApiError(503, "not_ready", "the daemon is shutting down")
        return a, h

    async def refresh() -> None:
        """Rebuild the hub's scorer from the store (after enroll/delete)."""
        a, h = ready()
        async with refresh_lock:
            index = await asyncio.to_thread(a.index)
            scorer: Any = index
            from voiceid.profiles.asnorm import ASNormScorer

            if isinstance(h.scorer, ASNormScorer):
                scorer = ASNormScorer(index, h.scorer.cohort, top_n=h.scorer.top_n)
            h.set_scorer(scorer)
        log.info("profiles reloaded: %d usable", len(index))

    def not_found(name: str) -> ApiError:
        return ApiError(
            404,
            "profile_not_found",
            f"no profile named {name!r}",
            hint="GET /api/v1/profiles lists the enrolled names",
        )

    def exists(name: str) -> ApiError:
        return ApiError(
            409,
            "profile_exists",
            f"a profile named {name!r} already exists (names ignore case)",
            hint="choose another name, delete it first, or re-enroll with replace=true",
        )

    async def get_profile(a: App, name: str) -> Profile:
        try:
            return await asyncio.to_thread(a.store.get, name)
        except ProfileError:
            if not await asyncio.to_thread(a.store.__contains__, name):
                raise not_found(name) from None
            raise

    async def embed(a: App, data: bytes, source: str) -> Samples:
        async with embed_slots:
            samples = await asyncio.to_thread(decode_audio, data, source, a.embedder.sample_rate)
            return await asyncio.to_thread(a.embedder.embed, samples, where=source)

    def policy() -> EnrollmentPolicy:
        return EnrollmentPolicy()

    async def start_session(a: App, name: str, replace: bool) -> EnrollmentSession:
        name = check_name(name)
        if not replace and await asyncio.to_thread(a.store.__contains__, name):
            raise exists(name)
        threshold = await asyncio.to_thread(a.threshold)
        try:
            return await asyncio.to_thread(
                EnrollmentSession.start,
                name,
                a.store,
                a.embedder,
                threshold=threshold,
                policy=policy(),
                replace=replace,
            )
        except ProfileError:
            if not replace and await asyncio.to_thread(a.store.__contains__, name):
                raise exists(name) from None
            raise

    async def commit(
        a: App, session: EnrollmentSession, metadata: dict[str, str] | None
    ) -> Profile:
        try:
            profile = await asyncio.to_thread(session.finish, metadata)
        except ProfileError as exc:
            prog = session.progress()
            if not prog.complete:
                raise ApiError(
                    422,
                    "enrollment_incomplete",
                    exc.message,
                    hint=exc.hint,
                    details={"progress": _progress(prog).model_dump()},
                ) from None
            if not session.replace and await asyncio.to_thread(a.store.__contains__, session.name):
                raise exists(session.name) from None
            raise
        await refresh()
        return profile

    # -- health ------------------------------------------------------------------------
    @app.get("/healthz", tags=["daemon"], response_model=Health, summary="Process alive")
    async def healthz() -> Health:
        return Health()

    @app.get(
        "/readyz",
        tags=["daemon"],
        response_model=Readiness,
        responses=ERRORS_READY,
        summary="Model loaded and warm (503 before)",
    )
    async def readyz() -> Readiness:
        a, h = ready()
        if not getattr(daemon, "ready", True):  # sources still starting
            raise ApiError(503, "not_ready", "the daemon is still starting its sources")
        return Readiness(
            model=a.model_name, profiles=len(h.scorer.names), streams=len(h.stream_names())
        )

    @app.get(
        "/metrics",
        tags=["daemon"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "exposition text"}},
    )
    async def get_metrics() -> Response:
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get(f"{API}/version", tags=["daemon"], response_model=VersionInfo)
    async def version() -> VersionInfo:
        return VersionInfo(version=__version__)

    @app.get(
        f"{API}/model",
        tags=["daemon"],
        response_model=ModelInfo,
        responses=ERRORS_READY,
        summary="The loaded model: card, provider, fingerprint, thresholds",
    )
    async def model() -> ModelInfo:
        a, h = ready()
        card = a.embedder.card
        stored = await asyncio.to_thread(a.store.get_threshold, a.fingerprint)
        return ModelInfo(
            name=card.name,
            description=card.description,
            dim=card.dim,
            sample_rate=a.embedder.sample_rate,
            provider=str(a.embedder.model.provider),
            fingerprint=a.fingerprint,
            threshold=stored if stored is not None else card.threshold,
            threshold_source="stored" if stored is not None else "card",
            stream_threshold=float(h.stream_config.decision.enter),
            score_norm=daemon.settings.decision.score_norm,
            license=card.license,
            source=card.source,
        )

    @app.get(
        f"{API}/config",
        tags=["daemon"],
        response_model=ClientConfig,
        summary="What clients need: WebSocket port, upload limit, enrollment policy",
    )
    async def client_config() -> ClientConfig:
        ws = daemon.settings.websocket
        p = policy()
        return ClientConfig(
            websocket=WebSocketInfo(
                enabled=ws.enabled and "websocket" in daemon.ports,
                port=daemon.ports.get("websocket"),
            ),
            max_upload_bytes=cfg.max_upload_bytes,
            enrollment=PolicyInfo(
                min_utterances=p.min_utterances,
                min_total_speech_s=p.min_total_speech_s,
                min_utterance_speech_s=p.min_utterance_speech_s,
            ),
            enrollment_ttl_s=enrollments.ttl_s,
            sample_rate=daemon.app.embedder.sample_rate if daemon.app is not None else 16000,
        )

    @app.get(
        f"{API}/streams",
        tags=["daemon"],
        response_model=StreamList,
        responses=ERRORS_READY,
        summary="Live audio streams (their events: WebSocket /events)",
    )
    async def streams() -> StreamList:
        _, h = ready()
        return StreamList(
            streams=[
                StreamInfo(name=n, opened_at=round(at, 3), enabled=n not in h.disabled)
                for n, at in sorted(h.opened_at().items())
            ]
        )

    # -- profiles --------------------------------------------------------------------
    @app.get(
        f"{API}/profiles",
        tags=["profiles"],
        response_model=ProfileList,
        responses=ERRORS_READY,
        summary="All enrolled profiles (no embeddings)",
    )
    async def list_profiles() -> ProfileList:
        a, _ = ready()
        rows = await asyncio.to_thread(a.store.list)
        return ProfileList(profiles=[_profile_info(p, a.fingerprint) for p in rows])

    @app.get(
        f"{API}/profiles/{{name}}",
        tags=["profiles"],
        response_model=ProfileDetail,
        responses=ERRORS_INPUT | ERR_404,
        summary="One profile with its recordings (no embeddings)",
    )
    async def get_profile_route(name: NameParam) -> ProfileDetail:
        a, _ = ready()
        p = await get_profile(a, name)
        info = _profile_info(p, a.fingerprint)
        return ProfileDetail(
            **info.model_dump(),
            recordings=[
                Recording(speech_s=round(u.speech_s, 2), source=u.source) for u in p.utterances
            ],
        )

    @app.delete(
        f"{API}/profiles/{{name}}",
        tags=["profiles"],
        response_model=Deleted,
        responses=ERRORS_INPUT | ERR_404,
        summary="Delete a profile (its embeddings are erased from disk)",
    )
    async def delete_profile(name: NameParam, request: Request) -> Deleted:
        a, _ = ready()
        try:
            deleted = await asyncio.to_thread(a.store.delete, name)
        except ProfileError:
            if not await asyncio.to_thread(a.store.__contains__, name):
                raise not_found(name) from None
            raise
        await refresh()
        log.info("profile %r deleted (%s)", deleted, _who(request))
        return Deleted(deleted=deleted)

    export_doc = {
        200: {
            "description": "a `voiceid-profiles` document (docs/profiles-format.md)",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    }

    async def export(a: App, names: list[str] | None, filename: str) -> Response:
        def run() -> bytes:
            with tempfile.TemporaryDirectory(prefix="voiceid-export-") as tmp:
                target = Path(tmp) / "export.json"
                a.store.export_json(target, names)
                return target.read_bytes()

        body = await asyncio.to_thread(run)
        return Response(
            body,
            media_type="application/json",
            headers={"content-disposition": f'attachment; filename="{filename}"'},
        )

    @app.get(
        f"{API}/profiles/{{name}}/export",
        tags=["profiles"],
        response_class=Response,
        responses=export_doc | ERRORS_INPUT | ERR_404,
        summary="Download one profile as JSON (biometric data: keep it safe)",
    )
    async def export_one(name: NameParam, request: Request) -> Response:
        a, _ = ready()
        p = await get_profile(a, name)
        log.info("profile %r exported (%s)", p.name, _who(request))
        return await export(a, [p.id], f"voiceid-profile-{p.id}.json")

    @app.get(
        f"{API}/export",
        tags=["profiles"],
        response_class=Response,
        responses=export_doc | ERRORS_INPUT | ERR_404,
        summary="Download profiles as JSON: all, or those named (?name=a&name=b)",
    )
    async def export_many(
        request: Request,
        name: Annotated[list[str] | None, Query(description="profile names or ids")] = None,
    ) -> Response:
        a, _ = ready()
        if name:
            for n in name:
                if not await asyncio.to_thread(a.store.__contains__, n):
                    raise not_found(n)
        log.info("%s profiles exported (%s)", len(name) if name else "all", _who(request))
        return await export(a, name or None, "voiceid-profiles.json")

    # -- one-shot enrollment ---------------------------------------------------------
    @app.post(
        f"{API}/enroll",
        tags=["enrollment"],
        status_code=201,
        response_model=EnrollResult,
        responses=ERRORS_UPLOAD | ERR_409,
        summary="Enroll a person from one or more recordings (multipart)",
        description=(
            "Each file is judged (feedback codes) and counted if good. When the accepted "
            "speech meets the policy the profile is written (201); otherwise nothing is "
            "written and the answer is 422 `enrollment_incomplete` with the per-file "
            "feedback in `error.details`."
        ),
    )
    async def enroll(
        name: Annotated[str, Form(min_length=1, max_length=100)],
        files: Annotated[list[UploadFile], File(description="recordings, any common format")],
        replace: Annotated[bool, Form()] = False,
        metadata: Annotated[
            str | None, Form(description='JSON object of strings, e.g. {"room": "kitchen"}')
        ] = None,
    ) -> EnrollResult:
        a, _ = ready()
        meta: dict[str, str] | None = None
        if metadata:
            try:
                meta = check_metadata(json.loads(metadata))
            except (ValueError, ProfileError) as exc:
                raise ApiError(
                    422, "validation_error", f"metadata: {exc}", hint='e.g. {"lang": "en"}'
                ) from None
        session = await start_session(a, name, replace)
        uploads = [await _read_upload(f, i) for i, f in enumerate(files, 1)]
        rate = a.embedder.sample_rate
        async with embed_slots:
            clips = [
                (src, await asyncio.to_thread(decode_audio, data, src, rate))
                for src, data in uploads
            ]
            results = [
                _utterance(src, await asyncio.to_thread(session.add_audio, x, src))
                for src, x in clips
            ]
        prog = session.progress()
        result = EnrollResult(
            name=session.name,
            committed=False,
            utterances=results,
            progress=_progress(prog),
            profile=None,
        )
        if not prog.complete:
            session.cancel()
            rejected = sum(1 for r in results if not r.accepted)
            raise ApiError(
                422,
                "enrollment_incomplete",
                f"enrollment of {session.name!r} is incomplete: {prog.utterances}/"
                f"{prog.required_utterances} utterances and {prog.collected_s:.1f}/"
                f"{prog.required_s:g} s of speech accepted ({rejected} of {len(results)} "
                "files rejected); nothing was written",
                hint=f"add {prog.missing()}: longer sentences of the same person, in a quiet room",
                details=result.model_dump(mode="json"),
            )
        profile = await commit(a, session, meta)
        result.committed = True
        result.profile = _profile_info(profile, a.fingerprint)
        return result

    # -- session enrollment ------------------------------------------------------------
    @app.post(
        f"{API}/enrollments",
        tags=["enrollment"],
        status_code=201,
        response_model=EnrollmentState,
        responses=ERRORS_INPUT
        | ERR_400
        | ERR_409
        | {429: _E | {"description": "too many open sessions"}},
        summary="Start an enrollment session (upload utterances one by one)",
    )
    async def start_enrollment(body: EnrollmentRequest) -> EnrollmentState:
        a, _ = ready()
        session = await start_session(a, body.name, body.replace)
        entry = enrollments.add(session)
        log.info("enrollment %s of %r started", entry.id[:8], session.name)
        return enrollments.state(entry)

    @app.get(
        f"{API}/enrollments/{{eid}}",
        tags=["enrollment"],
        response_model=EnrollmentState,
        responses=ERR_SESSION | ERR_422,
        summary="Progress of an enrollment session",
    )
    async def enrollment_state(eid: EidParam) -> EnrollmentState:
        return enrollments.state(enrollments.get(eid))

    @app.post(
        f"{API}/enrollments/{{eid}}/utterances",
        tags=["enrollment"],
        response_model=UtteranceResult,
        responses=ERRORS_UPLOAD | ERR_SESSION,
        summary="Add one recorded utterance: feedback and progress",
    )
    async def add_utterance(
        eid: EidParam,
        file: Annotated[UploadFile, File(description="one utterance, any common format")],
    ) -> UtteranceResult:
        a, _ = ready()
        entry = enrollments.get(eid)
        source, data = await _read_upload(file, entry.attempts + 1)
        async with entry.lock:
            entry.attempts += 1
            async with embed_slots:
                x = await asyncio.to_thread(decode_audio, data, source, a.embedder.sample_rate)
                r = await asyncio.to_thread(entry.session.add_audio, x, source)
            entry.expires = enrollments.clock() + enrollments.ttl_s
        return _utterance(source, r)

    @app.post(
        f"{API}/enrollments/{{eid}}/finish",
        tags=["enrollment"],
        status_code=201,
        response_model=ProfileInfo,
        responses=ERRORS_INPUT | ERR_400 | ERR_SESSION | ERR_409,
        summary="Write the profile (422 enrollment_incomplete before the policy is met)",
    )
    async def finish_enrollment(
        eid: EidParam, body: Annotated[FinishRequest | None, Body()] = None
    ) -> ProfileInfo:
        a, _ = ready()
        entry = enrollments.get(eid)
        async with entry.lock:
            profile = await commit(a, entry.session, body.metadata if body else None)
            enrollments.remove(eid)
        log.info("enrollment %s: %r enrolled", eid[:8], profile.name)
        return _profile_info(profile, a.fingerprint)

    @app.delete(
        f"{API}/enrollments/{{eid}}",
        tags=["enrollment"],
        status_code=204,
        response_class=Response,
        responses=ERR_SESSION | ERR_422,
        summary="Cancel an enrollment session (nothing is written)",
    )
    async def cancel_enrollment(eid: EidParam) -> Response:
        entry = enrollments.get(eid)
        async with entry.lock:
            enrollments.remove(eid)
        return Response(status_code=204)

    # -- scoring ---------------------------------------------------------------------
    @app.post(
        f"{API}/verify",
        tags=["scoring"],
        response_model=VerifyResult,
        responses=ERRORS_UPLOAD | ERR_404 | ERR_409,
        summary="Is this recording the person NAME? (1:1)",
    )
    async def verify(
        name: Annotated[str, Form(min_length=1)],
        file: Annotated[UploadFile, File(description="a recording, any common format")],
        threshold: Threshold = None,
    ) -> VerifyResult:
        a, _ = ready()
        profile = await get_profile(a, name)
        try:
            require_same_model(profile, a.fingerprint, a.model_name)
        except ProfileError as exc:
            raise ApiError(409, "profile_other_model", exc.message, hint=exc.hint) from None
        key = profile.id  # one lockout per person, whatever name or id was claimed
        if lockout.begin(key) > 0:
            retry = lockout.retry_after(key)
            metrics.VERIFY_LOCKOUTS.inc()
            HTTP_REJECTED.reject("locked_out")
            log.warning(
                "verify %r refused: %d consecutive failures, retry in %d s",
                profile.name,
                lockout.failures(key),
                retry,
            )
            raise ApiError(
                429,
                "verify_locked",
                f"too many failed verifications of {profile.name!r} in a row: "
                f"the next one is answered in {retry} s",
                hint="wait Retry-After seconds; each further failure doubles the wait "
                "(auth.verify_lockout_*), a success resets it",
                headers={"Retry-After": str(retry)},
            )
        passed: bool | None = None  # None: no decision (bad audio...): not counted
        try:
            source, data = await _read_upload(file, 1)
            emb = await embed(a, data, source)
            default = await asyncio.to_thread(a.threshold)
            s = score(profile, emb)
            # the lockout judges with the daemon's threshold: a client's own (lower)
            # threshold must not turn failures into successes that reset it
            passed = bool(s >= default)
        finally:
            lockout.end(key, passed)
        thr = threshold if threshold is not None else default
        return VerifyResult(name=profile.name, score=_finite(s), threshold=thr, accepted=s >= thr)

    @app.post(
        f"{API}/identify",
        tags=["scoring"],
        response_model=IdentifyResult,
        responses=ERRORS_UPLOAD | {409: _E | {"description": "nobody enrolled"}},
        summary="Who is speaking in this recording? (1:N)",
    )
    async def identify_route(
        file: Annotated[UploadFile, File(description="a recording, any common format")],
        top_k: Annotated[int, Form(ge=1, le=100)] = 5,
        threshold: Threshold = None,
    ) -> IdentifyResult:
        a, _ = ready()
        index = await asyncio.to_thread(a.index)
        try:
            require_profiles(index)
        except ProfileError as exc:
            raise ApiError(409, "no_profiles", exc.message, hint=exc.hint) from None
        source, data = await _read_upload(file, 1)
        emb = await embed(a, data, source)
        thr = threshold if threshold is not None else await asyncio.to_thread(a.threshold)
        result = identify(index, emb, threshold=thr, top_k=top_k)
        return IdentifyResult(
            decision=result.decision,
            threshold=thr,
            matches=[MatchInfo(name=m.name, score=_finite(m.score)) for m in result.matches],
        )

    # -- the web page ----------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
