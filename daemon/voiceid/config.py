"""config.yaml, validated by pydantic; ``VOICEID_*`` environment variables override it.

Nested keys in the environment use ``__``: ``VOICEID_WEBSOCKET__PORT=9000``.
Every option, its unit and default is documented in the shipped ``config.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from voiceid.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Section):
    name: str = "wespeaker-resnet34-lm"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    threads: int | None = Field(default=None, ge=1, le=256)  # CPU threads per inference
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")  # pin another build
    fetch: bool = True  # download/build the model at start when it is missing
    # auto: fp16 convolutions on CUDA (pooling head fp32), fp32 on CPU; int8: the quantized
    # variant made by `voiceid models quantize` (CPU, ~3x faster for ResNet34; its own
    # fingerprint: re-enroll)
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"


class LocalModel(_Section):
    """A user's own ONNX speaker model: input [B, T, num_bins] -> output [B, dim]."""

    path: Path
    dim: int = Field(gt=0)
    frontend: Literal["kaldi_fbank", "mel_power"] = "kaldi_fbank"
    num_bins: int = Field(default=80, gt=0)
    cmn: bool = True
    input_name: str = "feats"
    output_name: str = "embs"
    threshold: float = Field(default=0.5, ge=-1, le=1)
    description: str = ""


class StreamSection(_Section):
    hop_s: float = Field(default=0.5, ge=0.1, le=5.0)  # seconds of new audio between windows
    window_s: float = Field(default=2.0, ge=0.5, le=10.0)  # seconds of audio per embedding
    min_voiced_s: float = Field(default=1.0, ge=0.0, le=10.0)  # voiced seconds a window needs
    vad: Literal["webrtc", "energy"] = "webrtc"
    vad_mode: int = Field(default=2, ge=0, le=3)  # webrtcvad aggressiveness
    energy_dbfs: float = Field(default=-40.0, le=0.0)  # energy gate level
    # audio per front-end/VAD call; ≥ hop_s: once per hop (least CPU); smaller spreads the
    # work of streams whose hops end together (lower worst-case latency, more CPU)
    slice_s: float = Field(default=0.5, ge=0.02, le=5.0)


class DecisionSection(_Section):
    # cosine in [-1, 1]; with score_norm asnorm a z-score (required: measure it with eval)
    threshold: float | None = None  # None: stored per model, else the model default
    exit_margin: float = Field(default=0.05, ge=0, le=1)  # exit = threshold - margin
    smoothing: Literal["ema", "vote"] = "ema"
    alpha: float = Field(default=0.5, gt=0, le=1)  # EMA weight of the newest hop
    vote_k: int = Field(default=3, ge=1, le=50)
    min_dwell_hops: int = Field(default=2, ge=1, le=50)
    change_margin: float = Field(default=0.05, ge=0, le=1)
    end_silence_s: float = Field(default=1.0, gt=0, le=60)
    scores_interval_s: float = Field(default=1.0, gt=0)
    top_k: int = Field(default=3, ge=0, le=100)
    score_norm: Literal["none", "asnorm"] = "none"  # adaptive s-norm needs a cohort
    cohort: Path | None = None  # cohort file from `voiceid cohort build`
    cohort_top_n: int = Field(default=300, ge=1)  # AS-norm: top-N cohort scores

    @model_validator(mode="after")
    def _threshold_units(self) -> DecisionSection:
        t = self.threshold
        if self.score_norm == "none" and t is not None and not -1.0 <= t <= 1.0:
            raise ValueError("threshold is a cosine: it must be in [-1, 1]")
        if self.score_norm == "asnorm" and t is None:
            raise ValueError(
                "score_norm asnorm needs an explicit threshold (a z-score): measure it with "
                "`voiceid eval DIR --norm asnorm --cohort FILE --target-far 0.01`"
            )
        return self


class EngineSection(_Section):
    max_batch: int = Field(default=64, ge=1, le=4096)  # windows per inference call
    max_wait_ms: float = Field(default=5.0, ge=0, le=1000)  # wait for more windows
    max_pending: int = Field(default=256, ge=1, le=1 << 20)  # queued windows; more are skipped
    batch_buckets: bool = True  # GPU: pad batches to powers of two so shapes repeat


class WebSocketSection(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    max_message_bytes: int = Field(default=1 << 20, ge=1024)  # largest frame accepted
    max_streams: int = Field(default=64, ge=1)  # concurrent audio streams
    event_queue: int = Field(default=256, ge=1)  # events buffered per client before it is dropped
    start_timeout_s: float = Field(default=10.0, gt=0)  # time to send the start message
    # front-end worker processes for the streams (0: in the daemon process; see
    # runtime/workers.py): each takes a core's share of the per-stream work
    workers: int = Field(default=0, ge=0, le=256)


class HttpSection(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8766, ge=0, le=65535)  # REST API, web page, /metrics, /healthz
    max_upload_bytes: int = Field(default=20 << 20, ge=1024)  # enrollment audio per request


class MicSection(_Section):
    name: str = "mic"  # stream name in events
    device: str | int | None = None  # sounddevice name or index; None: the default input
    sample_rate: int = Field(default=16000, ge=8000, le=192000)
    channels: int = Field(default=1, ge=1, le=8)
    block_ms: int = Field(default=20, ge=5, le=500)
    queue_blocks: int = Field(default=100, ge=2)  # blocks buffered; older ones are dropped


class MqttSection(_Section):
    enabled: bool = False
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = None  # None: voiceid-<hostname>
    username: str | None = None
    password_file: Path | None = None  # file holding the password (never put it in YAML)
    password_credential: str | None = None  # systemd LoadCredential= name
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False  # skip hostname verification (self-signed brokers)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    prefix: str = Field(default="voiceid", pattern=r"^[^#+]+$")  # topic prefix
    discovery: bool = True  # Home Assistant MQTT device discovery
    discovery_prefix: str = "homeassistant"
    device_id: str = Field(default="voiceid", pattern=r"^[A-Za-z0-9_-]+$")
    buffer_events: int = Field(default=1000, ge=0)  # kept while disconnected; oldest dropped
    stats_interval_s: float = Field(default=60.0, gt=0)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    commands: bool = True  # accept <prefix>/<stream>/enabled/set ON|OFF


class TokenEntry(_Section):
    """One API token, stored hashed: ``voiceid token new NAME --scope stream`` prints both."""

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # sha256 hex of the token
    scopes: list[Literal["stream", "enroll", "admin"]] = ["stream"]


class AuthSection(_Section):
    # tokens required on WebSocket, REST and the web page. With no tokens configured the
    # daemon serves loopback only (and says so loudly); binding elsewhere needs tokens.
    tokens: list[TokenEntry] = []
    allowed_origins: list[str] = []  # extra browser origins besides the daemon's own
    verify_lockout_after: int = Field(default=5, ge=1)  # failed verifications of one name
    verify_lockout_base_s: float = Field(default=1.0, gt=0)  # delay doubles per failure after
    verify_lockout_max_s: float = Field(default=300.0, gt=0)


class TlsSection(_Section):
    cert_file: Path | None = None  # PEM; with key_file: wss:// and https://
    key_file: Path | None = None


class SecuritySection(_Section):
    # AES-GCM key for profiles at rest (32 bytes: raw, hex or base64 in the file); never
    # stored in the DB. None: profiles are stored in clear (a warning at start)
    profile_key_file: Path | None = None
    profile_key_credential: str | None = None  # systemd LoadCredential= name
    http_rate_per_min: int = Field(default=600, ge=1)  # REST requests per client address


def _wyoming_uri(cls: type[BaseModel], value: str, info: ValidationInfo) -> str:
    """A ``tcp://HOST:PORT`` Wyoming URI (the message says what is wrong)."""
    from voiceid.sources.wyoming_mic import parse_tcp_uri  # lazy: it pulls in numpy

    try:
        parse_tcp_uri(value, info.field_name or "uri")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return value.strip()


class WyomingMicSection(_Section):
    """A Wyoming mic program to identify from (docs/home-assistant.md)."""

    uri: str  # tcp://HOST:PORT of the mic program
    name: str = Field(default="wyoming_mic", pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # stream name
    connect_timeout_s: float = Field(default=5.0, gt=0)
    idle_timeout_s: float = Field(default=30.0, gt=0)  # no audio this long while streaming
    reconnect_min_s: float = Field(default=1.0, gt=0)  # backoff min * 2^n, jittered ...
    reconnect_max_s: float = Field(default=30.0, gt=0)  # ... capped here
    max_event_bytes: int = Field(default=1 << 20, ge=4096)  # one Wyoming event

    _uri = field_validator("uri")(_wyoming_uri)


class WyomingAsrSection(_Section):
    """The speaker-tagging Wyoming ASR proxy (docs/home-assistant.md)."""

    enabled: bool = False
    uri: str = "tcp://127.0.0.1:10310"  # where voiceid listens
    upstream: str = "tcp://127.0.0.1:10300"  # the real Wyoming ASR
    stream: str = Field(default="wyoming_asr", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    prefix_format: str = "[{name}] "  # "": enrolled speakers' transcripts unchanged
    reject_unknown: bool = False  # True: empty transcript unless an enrolled speaker
    threshold: float | None = Field(default=None, ge=-1, le=1)  # None: the app's
    top_k: int = Field(default=3, ge=1, le=100)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    transcribe_timeout_s: float = Field(default=30.0, gt=0)
    describe_timeout_s: float = Field(default=0.8, gt=0)  # Home Assistant waits 1 s
    max_utterance_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=16, ge=1)
    max_event_bytes: int = Field(default=1 << 20, ge=4096)
    fallback_languages: list[str] = ["en"]

    _uris = field_validator("uri", "upstream")(_wyoming_uri)

    @field_validator("prefix_format")
    @classmethod
    def _prefix(cls, value: str) -> str:
        try:
            value.format(name="alice")
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"not a valid format ({exc}); the only placeholder is {{name}}"
            ) from None
        return value


class WyomingSection(_Section):
    mics: list[WyomingMicSection] = []
    asr: WyomingAsrSection = WyomingAsrSection()


class LogSection(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = Field(default=False, alias="json")


class Settings(BaseSettings):
    """The whole configuration. Unknown keys are errors (typos must not pass silently)."""

    model_config = SettingsConfigDict(
        env_prefix="VOICEID_",
        env_nested_delimiter="__",
        extra="forbid",
        populate_by_name=True,
    )

    model: ModelSection = ModelSection()
    models: dict[str, LocalModel] = {}
    db: Path | None = None  # profiles database; None: STATE_DIR/profiles.db
    stream: StreamSection = StreamSection()
    decision: DecisionSection = DecisionSection()
    engine: EngineSection = EngineSection()
    websocket: WebSocketSection = WebSocketSection()
    mics: list[MicSection] = []
    mqtt: MqttSection = MqttSection()
    wyoming: WyomingSection = WyomingSection()
    http: HttpSection = HttpSection()
    auth: AuthSection = AuthSection()
    tls: TlsSection = TlsSection()
    security: SecuritySection = SecuritySection()
    stdout_events: bool = True  # JSON lines of every event on stdout
    log: LogSection = LogSection()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # environment first (wins), then the YAML passed as init kwargs
        return (env_settings, init_settings)


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (deepest existing ancestor)."""
    line = None if node is None else node.start_mark.line + 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == key), None)
            if nxt is None:
                key_node = next((k for k, _ in node.value if k.value == key), None)
                return key_node.start_mark.line + 1 if key_node else line
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            return line
        line = node.start_mark.line + 1
    return line


def format_errors(exc: ValidationError, path: Path | None, root: yaml.Node | None) -> list[str]:
    """One line per error: ``file:line: key.path: message``."""
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(root, loc) if root is not None else None
        where = f"{path}:{line}" if path and line else str(path or "config")
        out.append(f"{where}: {key}: {err['msg']}")
    return out


def load_settings(path: Path | None) -> Settings:
    """Read and validate ``path`` (None: defaults + environment only)."""
    data: dict[str, Any] = {}
    root: yaml.Node | None = None
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read config {path}: {exc.strerror}",
                hint="check the path given to --config",
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{path}: not UTF-8 text (byte {exc.start})", hint="save the file as UTF-8"
            ) from None
        try:
            root = yaml.compose(text)
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(
                f"{where}: invalid YAML: {exc}".splitlines()[0], hint="fix the YAML syntax"
            ) from exc
        except RecursionError:
            raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        odd = [k for k in loaded if not isinstance(k, str)]
        if odd:
            raise ConfigError(
                f"{path}: {odd[0]!r} is not a section name",
                hint="top-level keys are section names such as model, stream, websocket",
            )
        data = loaded
    try:
        return Settings(**data)
    except SettingsError as exc:  # a VOICEID_* variable that is not valid JSON
        raise ConfigError(
            f"invalid environment: {exc}", hint="check the VOICEID_* variables"
        ) from None
    except ValidationError as exc:
        lines = format_errors(exc, path, root)
        raise ConfigError(
            f"invalid configuration ({len(lines)} error(s)):\n" + "\n".join(lines)
        ) from exc
