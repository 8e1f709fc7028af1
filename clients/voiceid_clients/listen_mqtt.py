"""Print the events a voiceid daemon publishes on MQTT.

    python -m voiceid_clients.listen_mqtt                         # localhost:1883
    python -m voiceid_clients.listen_mqtt --host broker --speakers
    python -m voiceid_clients.listen_mqtt --count 5 --json        # five events, raw JSON

Subscribes to ``<prefix>/events`` (every event as JSON, the same objects as on the
WebSocket, see docs/protocol.md and docs/mqtt.md); ``--speakers`` also prints the
retained current speaker of every stream (``<prefix>/<stream>/speaker``: a name,
``none`` or ``unknown``). Exit status: 0 after ``--count`` events or ``--timeout``
seconds (or Ctrl-C), 1 when the broker cannot be reached, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

import aiomqtt

from voiceid_clients import format_event


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m voiceid_clients.listen_mqtt",
        description="Print the speaker events a voiceid daemon publishes on MQTT.",
    )
    p.add_argument("--host", default="localhost", help="broker host (default localhost)")
    p.add_argument("--port", type=int, default=None, help="broker port (1883, or 8883 with --tls)")
    p.add_argument("--prefix", default="voiceid", help="the daemon's mqtt.prefix (default voiceid)")
    p.add_argument("--username", default=None)
    p.add_argument("--password-file", type=Path, default=None, help="file holding the password")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--ca-file", type=Path, default=None, help="CA certificate(s) for --tls")
    p.add_argument("--speakers", action="store_true", help="also print <prefix>/<stream>/speaker")
    p.add_argument("--json", action="store_true", help="print events as received (JSON)")
    p.add_argument("--no-scores", action="store_true", help="hide the periodic scores events")
    p.add_argument("--count", type=int, default=0, help="exit after this many events (0: never)")
    p.add_argument(
        "--timeout", type=float, default=0, help="exit after this many seconds (0: never)"
    )
    args = p.parse_args(argv)
    if "#" in args.prefix or "+" in args.prefix:
        p.error("--prefix must not contain MQTT wildcards (# +)")
    if args.count < 0 or args.timeout < 0:
        p.error("--count and --timeout must be >= 0")
    return args


def _password(args: argparse.Namespace) -> str | None:
    if args.password_file is None:
        return None
    try:
        path: Path = args.password_file
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SystemExit(
            f"listen_mqtt: error: cannot read {args.password_file}: {exc.strerror}"
        ) from None


async def listen(args: argparse.Namespace) -> int:
    tls = ssl.create_default_context(cafile=args.ca_file) if args.tls else None
    port = args.port or (8883 if args.tls else 1883)
    events_topic = f"{args.prefix}/events"
    speaker_topic = f"{args.prefix}/+/speaker"
    seen = 0
    async with aiomqtt.Client(
        args.host,
        port,
        username=args.username,
        password=_password(args),
        tls_context=tls,
        keepalive=30,
    ) as client:
        await client.subscribe(events_topic, qos=1)
        if args.speakers:
            await client.subscribe(speaker_topic, qos=1)
        print(
            f"-- listening on mqtt://{args.host}:{port}/{events_topic}", file=sys.stderr, flush=True
        )
        async for message in client.messages:
            payload = message.payload
            text = (
                payload.decode("utf-8", "replace")
                if isinstance(payload, bytes | bytearray)
                else str(payload)
            )
            if message.topic.matches(speaker_topic):
                stream = str(message.topic.value).split("/")[-2]
                print(f"{stream}  speaker = {text}", flush=True)
                continue
            try:
                event = json.loads(text)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            seen += 1
            if not (args.no_scores and event.get("type") == "scores"):
                print(text if args.json else format_event(event, with_stream=True), flush=True)
            if args.count and seen >= args.count:
                break
    return 0


async def run(args: argparse.Namespace) -> int:
    task = listen(args)
    if not args.timeout:
        return await task
    try:
        return await asyncio.wait_for(task, args.timeout)
    except TimeoutError:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0
    except aiomqtt.MqttError as exc:
        print(f"listen_mqtt: error: broker {args.host}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
