"""``voiceid run``, ``voiceid stream FILE``, ``voiceid devices``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from voiceid.app import App
from voiceid.audio.io import load_audio
from voiceid.cli.embed import add_model_args
from voiceid.cli.output import print_table
from voiceid.config import Settings, load_settings
from voiceid.errors import ConfigError
from voiceid.frontend import make_frontend
from voiceid.runtime.daemon import run_daemon, stream_config
from voiceid.security import check_auth_config
from voiceid.security.templates import profile_key
from voiceid.stream.pipeline import run_file


def register(sub: Any) -> None:
    r = sub.add_parser("run", help="run the daemon (microphones, WebSocket, events)")
    r.add_argument("--config", type=Path, default=None, help="config.yaml (default: none)")
    r.add_argument(
        "--validate-config",
        action="store_true",
        help="check the config file, print every error with its line, exit",
    )
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("stream", help="run the streaming core over a file, print its events")
    s.add_argument("file")
    add_model_args(s)
    s.add_argument(
        "--config",
        type=Path,
        default=None,
        help="take stream/decision settings from this config.yaml",
    )
    s.add_argument("--threshold", type=float, default=None)
    s.add_argument("--json", action="store_true", help="one JSON event per line")
    s.set_defaults(func=cmd_stream)

    d = sub.add_parser("devices", help="list capture devices (PortAudio)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_devices)


def _settings(path: Path | None) -> Settings:
    return load_settings(path)


def cmd_run(args: argparse.Namespace) -> int:
    if args.validate_config:
        if args.config is None:
            raise ConfigError("--validate-config needs --config FILE")
        check_auth_config(load_settings(args.config))
        print(f"{args.config}: ok")
        return 0
    settings = _settings(args.config)
    if args.db:
        settings = settings.model_copy(update={"db": Path(args.db)})
    logging.getLogger().setLevel(settings.log.level)
    if settings.log.json_format:
        from voiceid.runtime.logs import use_json_logs

        use_json_logs()
    run_daemon(settings, config_path=args.config)
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    app = App.open(
        args.model,
        db=args.db,
        device=args.device,
        threads=args.threads,
        key=profile_key(settings.security),
    )
    try:
        threshold = app.stream_threshold(
            args.threshold if args.threshold is not None else settings.decision.threshold
        )
        samples = load_audio(args.file, app.embedder.sample_rate)
        events = run_file(
            samples,
            make_frontend(app.embedder.card.frontend),
            app.embedder.embed_features,
            app.index(),
            stream_config(settings, threshold),
            stream=Path(args.file).stem,
        )
    finally:
        app.close()
    for event in events:
        d = event.to_dict()
        if args.json:
            print(json.dumps(d, separators=(",", ":")))
        else:
            extra = {
                k: v
                for k, v in d.items()
                if k not in ("type", "id", "stream", "stream_time_s", "wall_time", "latency_ms")
            }
            print(f"{d['stream_time_s']:8.2f} s  {d['type']:16} {extra}")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from voiceid.sources.mic import input_devices

    devices = input_devices()
    if args.json:
        print(json.dumps([d.__dict__ for d in devices]))
    else:
        print_table(
            ["index", "name", "channels", "rate", "default"],
            [
                [
                    d.index,
                    d.name,
                    d.channels,
                    int(d.default_samplerate),
                    "*" if d.is_default else "",
                ]
                for d in devices
            ],
        )
    return 0
