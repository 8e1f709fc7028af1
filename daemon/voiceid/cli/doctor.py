"""``voiceid doctor [--config FILE] [--json]``: check an installation and explain each finding.

Checks, in order: the config file; the model file and its hash; the inference provider
(and why CUDA is not used, when it is not); audio (PortAudio, capture devices); the MQTT
broker (TCP connect, password, TLS files; only when enabled); the profile database
(integrity, writable); the listening ports. Each check is ``ok``, ``warn`` (worth knowing,
does not fail), ``fail`` (the daemon would not work as configured) or ``skip``.
Exit status 1 when any check fails, else 0.

Run it as the user the daemon runs as (for the systemd unit, see docs/operations.md):
file permissions are part of what it checks.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from voiceid import __version__, paths
from voiceid.config import Settings, load_settings
from voiceid.errors import VoiceidError

Status = Literal["ok", "warn", "fail", "skip"]
TCP_TIMEOUT_S = 3.0


@dataclass
class Check:
    name: str
    status: Status
    message: str
    hint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What the checks share: the settings and what earlier checks found."""

    settings: Settings
    db: Path | None = None
    model_path: Path | None = None
    model: Any = None  # EmbeddingModel once loaded
    fingerprint: str | None = None


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check the installation: config, model, GPU, audio, ...")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config.yaml (default: $CONFIGURATION_DIRECTORY/config.yaml under systemd)",
    )
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=cmd_doctor)


# -- the checks -----------------------------------------------------------------------------
def check_config(path: Path | None) -> tuple[Check, Settings | None]:
    where = str(path) if path else "defaults + VOICEID_* environment (no --config)"
    try:
        settings = load_settings(path)
    except VoiceidError as exc:
        return Check(
            "config",
            "fail",
            str(exc),
            "fix the file; `voiceid run --config FILE "
            "--validate-config` prints every error with its line",
        ), None
    return Check("config", "ok", f"{where}: valid"), settings


def check_model(ctx: Context) -> Check:
    from voiceid.models import registry
    from voiceid.models.download import sha256_file
    from voiceid.runtime.daemon import register_local_models

    cfg = ctx.settings.model
    try:
        register_local_models(ctx.settings)
        card = registry.card(cfg.name)
        path = registry.model_path(cfg.name)
        present = path.is_file()
    except (VoiceidError, OSError) as exc:
        return Check("model", "fail", str(exc))
    details: dict[str, Any] = {"name": cfg.name, "path": str(path), "cache": str(path.parent)}
    fetch_hint = (
        f"run `voiceid models fetch {cfg.name}` as the daemon's user, or place the file at {path}"
    )
    if not present:
        if card.source == "local":
            return Check(
                "model",
                "fail",
                f"{cfg.name}: {path} does not exist",
                "fix the path under models: in the config",
                details,
            )
        if cfg.fetch:
            return Check(
                "model",
                "warn",
                f"{cfg.name} is not in the cache ({path}); the daemon "
                f"will fetch it at start from {card.source} (needs network)",
                fetch_hint,
                details,
            )
        return Check(
            "model",
            "fail",
            f"{cfg.name} is not in the cache ({path}) and model.fetch is false",
            fetch_hint,
            details,
        )
    ctx.model_path = path
    actual = sha256_file(path)
    details["sha256"] = actual
    expected = (cfg.sha256 or card.sha256 or "").lower() or None
    if card.source.startswith(("http://", "https://")):
        if expected and actual != expected:
            return Check(
                "model",
                "fail",
                f"{path}: sha256 {actual} does not match the pinned {expected}",
                f"delete it and run `voiceid models fetch {cfg.name}`; "
                f"if this build is intended, pin it with model.sha256: {actual}",
                details,
            )
        return Check("model", "ok", f"{cfg.name}: {path}, sha256 verified", None, details)
    if card.source.startswith("pypi:"):
        weights = path.parent / "pretrained.pt"
        if weights.is_file() and expected:
            got = sha256_file(weights)
            if got != expected:
                return Check(
                    "model",
                    "fail",
                    f"{weights}: sha256 {got} does not match the pinned {expected}",
                    f"delete {weights} and {path}, then run `voiceid models fetch {cfg.name}`",
                    details,
                )
            return Check(
                "model",
                "ok",
                f"{cfg.name}: {path} (converted; source weights sha256 verified)",
                None,
                details,
            )
        return Check(
            "model",
            "ok",
            f"{cfg.name}: {path} (converted; source weights not kept to re-verify)",
            None,
            details,
        )
    return Check(
        "model", "ok", f"{cfg.name}: {path} (no pinned hash: sha256 {actual})", None, details
    )


def _cuda_library_error() -> str | None:
    """Why ONNX Runtime's CUDA provider library cannot load (the missing library), if so."""
    import onnxruntime as ort

    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if not lib.is_file():
        return None
    try:
        ctypes.CDLL(str(lib))
    except OSError as exc:
        return str(exc)
    return None


def check_provider(ctx: Context) -> Check:
    import numpy as np
    import onnxruntime as ort

    from voiceid.models import registry
    from voiceid.models.inference import CUDA, EmbeddingModel, cuda_listed

    cfg = ctx.settings.model
    if ctx.model_path is None:
        return Check("provider", "skip", "no model file to load")
    card = registry.card(cfg.name)
    gpu_nodes = [d for d in ("/dev/nvidiactl", "/dev/nvidia0") if os.path.exists(d)]
    details: dict[str, Any] = {
        "device": cfg.device,
        "onnxruntime": ort.__version__,
        "available": ort.get_available_providers(),
        "gpu_device_nodes": gpu_nodes,
    }
    quiet = logging.getLogger("voiceid.models.inference")  # we explain the fallback below
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        model = EmbeddingModel(ctx.model_path, card, device=cfg.device, intra_threads=cfg.threads)
        frames = card.segment_frames or 200
        model.embed(np.zeros((1, frames, card.frontend.num_bins), np.float32))
    except VoiceidError as exc:
        why = _cuda_library_error() if cfg.device == "cuda" else None
        return Check("provider", "fail", str(exc) + (f" ({why})" if why else ""), None, details)
    finally:
        quiet.setLevel(level)
    ctx.model = model
    details["provider"] = model.provider
    if model.provider == CUDA:
        return Check("provider", "ok", "CUDA (GPU) in use", None, details)
    if cfg.device == "cpu":
        return Check("provider", "ok", "CPU (model.device: cpu)", None, details)
    if not cuda_listed():
        return Check(
            "provider",
            "ok",
            "CPU: this onnxruntime build has no CUDA provider",
            "for an NVIDIA GPU install onnxruntime-gpu (Linux x86-64)",
            details,
        )
    why = _cuda_library_error()
    if why:
        reason = f"the CUDA provider cannot load: {why}"
        hint = (
            "install the CUDA 13 / cuDNN 9 runtime libraries (or pip nvidia-* wheels) "
            "so they are found by the dynamic loader"
        )
    elif not gpu_nodes:
        reason = "no GPU device nodes (/dev/nvidiactl, /dev/nvidia0)"
        hint = "check the NVIDIA driver (`nvidia-smi`); under systemd, DeviceAllow="
    else:
        reason = "CUDA did not initialise (driver/GPU problem)"
        hint = "check `nvidia-smi`"
    return Check("provider", "warn", f"CPU fallback: {reason}", hint, details)


def check_audio(ctx: Context) -> Check:
    mics = ctx.settings.mics
    try:
        from voiceid.sources.mic import input_devices

        devices = input_devices()
    except VoiceidError as exc:  # PortAudio missing
        if mics:
            return Check("audio", "fail", str(exc), "install libportaudio2")
        return Check("audio", "ok", "PortAudio not installed (not needed: no mics configured)")
    except Exception as exc:  # PortAudioError: no sound system at all
        status: Status = "fail" if mics else "warn"
        return Check("audio", status, f"PortAudio cannot list devices: {exc}")
    names = [f"{d.index}: {d.name}" for d in devices]
    details: dict[str, Any] = {"inputs": names}
    if not mics:
        return Check(
            "audio", "ok", f"{len(devices)} capture device(s); no mics configured", None, details
        )
    wx = _callbacks_blocked()
    if wx:
        return Check(
            "audio",
            "fail",
            f"PortAudio callbacks cannot be created: {wx}",
            "the process may not map write+execute memory (systemd MemoryDenyWriteExecute=yes):"
            " set MemoryDenyWriteExecute=no for microphones",
            details,
        )
    missing = []
    for mic in mics:
        if mic.device is None:
            if not any(d.is_default for d in devices):
                missing.append(f"{mic.name}: no default input device")
        elif not any(mic.device in (d.index, d.name) for d in devices):
            missing.append(f"{mic.name}: device {mic.device!r} not found")
    if missing:
        return Check(
            "audio",
            "fail",
            "; ".join(missing),
            "list devices with `voiceid devices`; "
            "under systemd the service needs the audio group (SupplementaryGroups=)",
            details,
        )
    return Check(
        "audio",
        "ok",
        f"{len(mics)} mic(s) found among {len(devices)} capture device(s)",
        None,
        details,
    )


def _callbacks_blocked() -> str | None:
    """Why sounddevice's cffi callbacks (one per stream) cannot be made, if they cannot."""
    try:
        import cffi

        cffi.FFI().callback("int(int)", lambda v: v)
    except ImportError:
        return None
    except MemoryError as exc:
        return str(exc).split(".")[0]
    return None


def check_mqtt(ctx: Context) -> Check:
    cfg = ctx.settings.mqtt
    if not cfg.enabled:
        return Check("mqtt", "skip", "disabled")
    from voiceid.sinks.mqtt import read_password

    problems = []
    try:
        read_password(cfg)
    except VoiceidError as exc:
        problems.append(str(exc))
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(cfg, key)
        if value is not None and not Path(value).expanduser().is_file():
            problems.append(f"mqtt.{key}: {value} is not a readable file")
    try:
        with socket.create_connection((cfg.host, cfg.port), timeout=TCP_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        problems.append(f"broker {cfg.host}:{cfg.port} unreachable: {reason}")
    if problems:
        return Check(
            "mqtt",
            "fail",
            "; ".join(problems),
            "check mqtt: in the config and that "
            "the broker runs (the daemon retries forever, but publishes nothing)",
        )
    return Check("mqtt", "ok", f"broker {cfg.host}:{cfg.port} reachable")


def check_database(ctx: Context) -> Check:
    from voiceid.profiles.store import DB_NAME, ProfileStore
    from voiceid.security.templates import profile_key

    db = ctx.db or ctx.settings.db or paths.state_dir() / DB_NAME
    db = Path(db).expanduser()
    details: dict[str, Any] = {"path": str(db)}
    if not db.exists():
        parent = next((p for p in [db.parent, *db.parent.parents] if p.exists()), None)
        if parent is not None and os.access(parent, os.W_OK | os.X_OK):
            return Check(
                "database", "ok", f"{db} does not exist yet; it will be created", None, details
            )
        return Check(
            "database",
            "fail",
            f"{db} does not exist and {parent} is not writable",
            "create the directory for the daemon's user (StateDirectory= under systemd)",
            details,
        )
    try:
        with ProfileStore.open(db, key=profile_key(ctx.settings.security)) as store:
            report = store.integrity_check()
            profiles = store.list()
    except VoiceidError as exc:
        return Check("database", "fail", str(exc), None, details)
    if report != "ok":
        return Check(
            "database",
            "fail",
            f"{db}: integrity check failed: " + "; ".join(report.splitlines()[:5]),
            "restore a backup or `voiceid profiles import` an export",
            details,
        )
    writable = os.access(db, os.R_OK | os.W_OK) and os.access(db.parent, os.W_OK | os.X_OK)
    if not writable:
        return Check(
            "database",
            "fail",
            f"{db} is not writable by uid {os.getuid()}",
            "fix the owner/permissions (WAL needs the directory writable too)",
            details,
        )
    details["profiles"] = len(profiles)
    message = f"{db}: integrity ok, writable, {len(profiles)} profile(s)"
    if ctx.fingerprint is not None:
        foreign = [p for p in profiles if p.fingerprint != ctx.fingerprint]
        if foreign:
            details["other_model_profiles"] = len(foreign)
            return Check(
                "database",
                "warn",
                message + f", {len(foreign)} enrolled with another model (ignored by the daemon)",
                f"re-enroll them with {ctx.settings.model.name}",
                details,
            )
    return Check("database", "ok", message, None, details)


def check_ports(ctx: Context) -> Check:
    s = ctx.settings
    wanted = [
        (name, sec.host, sec.port)
        for name, sec in (("websocket", s.websocket), ("http", s.http))
        if sec.enabled and sec.port != 0
    ]
    if not wanted:
        return Check("ports", "skip", "no fixed listening ports")
    busy, free = [], []
    for name, host, port in wanted:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, _, _, _, addr = infos[0]
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
        except OSError as exc:
            why = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            busy.append(f"{name} {host}:{port} {why}")
        else:
            free.append(f"{name} {host}:{port}")
    if busy:
        return Check(
            "ports",
            "fail",
            "; ".join(busy),
            "is voiceid already running (`systemctl status voiceid`)? else pick another port",
        )
    return Check("ports", "ok", "free: " + ", ".join(free))


def _fingerprint(ctx: Context) -> None:
    if ctx.model_path is None:
        return
    from voiceid.models import registry

    with contextlib.suppress(VoiceidError, OSError):
        ctx.fingerprint = registry.resolve(
            ctx.settings.model.name, sha256=ctx.settings.model.sha256
        ).fingerprint


def diagnose(config: Path | None, db: Path | None = None) -> list[Check]:
    first, settings = check_config(config)
    checks = [first]
    names = ("model", "provider", "audio", "mqtt", "database", "ports")
    if settings is None:
        return checks + [Check(n, "skip", "config invalid") for n in names]
    ctx = Context(settings, db=db)
    steps: list[Callable[[Context], Check]] = [
        check_model,
        check_provider,
        check_audio,
        check_mqtt,
        check_database,
        check_ports,
    ]
    for name, step in zip(names, steps, strict=True):
        if name == "database":
            _fingerprint(ctx)
        try:
            checks.append(step(ctx))
        except Exception as exc:  # a check must never crash the report
            checks.append(Check(name, "fail", f"check crashed: {type(exc).__name__}: {exc}"))
    return checks


# -- the command ----------------------------------------------------------------------------
MARK = {"ok": "ok", "warn": "warn", "fail": "FAIL", "skip": "skip"}


def cmd_doctor(args: argparse.Namespace) -> int:
    config = args.config
    if config is None and os.environ.get("CONFIGURATION_DIRECTORY"):
        candidate = Path(os.environ["CONFIGURATION_DIRECTORY"].split(":")[0]) / "config.yaml"
        config = candidate if candidate.is_file() else None
    checks = diagnose(config, Path(args.db) if args.db else None)
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    if args.json:
        doc = {
            "ok": fails == 0,
            "version": __version__,
            "problems": fails,
            "warnings": warns,
            "checks": [asdict(c) for c in checks],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(f"voiceid {__version__} doctor")
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"  {MARK[c.status]:4}  {c.name:{width}}  {c.message}")
            if c.hint and c.status != "ok":
                print(f"  {'':4}  {'':{width}}  -> {c.hint}")
        verdict = "no problems" if not fails else f"{fails} problem(s)"
        print(f"{verdict}, {warns} warning(s)")
    return 1 if fails else 0
