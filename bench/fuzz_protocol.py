"""Fuzz the WebSocket streaming protocol parser (not run in CI).

Usage::

    .venv/bin/python bench/fuzz_protocol.py [--runs 1000000] [--seed 1] [--engine atheris|random]

Each input is turned into one client conversation: a sequence of text and binary frames
fed to a fresh :class:`~voiceid.sources.protocol.StreamSession` (with the binary frames
of a successfully started stream going through the stream's
:class:`~voiceid.audio.convert.PcmDecoder`, as the hub does), or one call of
``parse_start`` / ``parse_control`` / ``parse_events_query`` / ``event_from_dict``.
Text frames are either raw (any Unicode, invalid UTF-8 as bytes) or structured: JSON
objects built from the protocol's field names and hostile values (huge and non-finite
numbers, deep nesting, wrong types, unknown fields, 0-length and 1 MiB strings).

The only exception allowed out of the parser is ``ProtocolError``: anything else is a
crash (atheris stops and writes the input to ``crash-*``; the random engine prints it and
exits 1). Memory must stay bounded: RSS is printed at the start, every 100,000 inputs and
at the end, with inputs per second.

``--engine atheris`` (default when ``atheris`` is installed) is libFuzzer's
coverage-guided mutation over the instrumented ``voiceid.sources.protocol``,
``voiceid.audio.convert`` and ``voiceid.stream.events``; ``random`` is a seeded
generator of the same structures (no coverage feedback).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

RSS_EVERY = 100_000


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


# The vocabulary of structured messages.
KEYS = [
    "type",
    "stream",
    "sample_rate",
    "encoding",
    "channels",
    "token",
    "",
    "TYPE",
    "type ",
    "\u0000",
    "stream\ud800",
]
TYPES = ["start", "stop", "START", "", "ready", "error", None, 1, ["start"]]
ENCODINGS = ["pcm_s16le", "f32le", "s16le", "", "PCM_S16LE", None, 0]
HOSTILE: list[Any] = [
    0,
    -1,
    1,
    7999,
    8000,
    16000,
    44100,
    192000,
    192001,
    2**31,
    2**63,
    -(2**63),
    10**30,
    1.5,
    16000.0,
    float("nan"),
    float("inf"),
    -float("inf"),
    True,
    False,
    None,
    "",
    "16000",
    "a",
    "room1",
    "x" * 64,
    "x" * 65,
    "bad name",
    "é",
    "\ud800",
    [],
    {},
    [16000],
    {"a": 1},
]


class Budget:
    def __init__(self) -> None:
        self.inputs = 0
        self.protocol_errors = 0
        self.ok = 0


def _value(rnd: Callable[[int], int], depth: int = 0) -> Any:
    pick = rnd(12)
    if pick < 7 or depth > 3:
        return HOSTILE[rnd(len(HOSTILE))]
    if pick == 7:
        return [_value(rnd, depth + 1) for _ in range(rnd(4))]
    if pick == 8:
        return {KEYS[rnd(len(KEYS))]: _value(rnd, depth + 1) for _ in range(rnd(4))}
    if pick == 9:
        return "s" * (rnd(4) * 300_000)  # up to ~1 MiB of string
    if pick == 10:
        n = 1 + rnd(3000)
        return json.loads("[" * n + "]" * n) if n < 900 else "[" * n
    return rnd(1 << 30) - (1 << 29)


def _valid_start(rnd: Callable[[int], int]) -> str:
    from voiceid.sources.protocol import StartMessage

    rates = (8000, 16000, 22050, 44100, 48000, 192000, 8000 + rnd(184001))
    start = StartMessage(
        stream=f"s{rnd(1000)}",
        sample_rate=rates[rnd(len(rates))],
        encoding="f32le" if rnd(2) else "pcm_s16le",
        channels=1 + rnd(8),
    )
    return str(start.to_json())


def _message(rnd: Callable[[int], int], raw: Callable[[int], bytes]) -> str | bytes:
    """One WebSocket frame: structured JSON text, raw text, raw bytes or audio bytes."""
    kind = rnd(8)
    if kind <= 2:  # a structured object, mostly a near-valid start or stop
        obj: dict[str, Any] = {}
        if rnd(4):
            obj["type"] = TYPES[rnd(len(TYPES))] if rnd(3) == 0 else ("start" if rnd(2) else "stop")
        if rnd(3):
            obj["stream"] = HOSTILE[rnd(len(HOSTILE))] if rnd(3) == 0 else f"s{rnd(100)}"
        if rnd(3):
            obj["sample_rate"] = HOSTILE[rnd(len(HOSTILE))] if rnd(2) else 16000
        if rnd(3) == 0:
            obj["encoding"] = ENCODINGS[rnd(len(ENCODINGS))]
        if rnd(3) == 0:
            obj["channels"] = HOSTILE[rnd(len(HOSTILE))] if rnd(2) else 1 + rnd(9)
        for _ in range(rnd(3) if rnd(4) == 0 else 0):
            obj[KEYS[rnd(len(KEYS))]] = _value(rnd)
        try:
            text = json.dumps(obj, allow_nan=bool(rnd(2)))
        except (ValueError, RecursionError):
            text = "{"
        if rnd(6) == 0 and text:  # cut or corrupt it
            cut = rnd(len(text) + 1)
            text = text[:cut] + raw(rnd(8)).decode("latin-1")
        return text
    if kind == 3:  # raw text (any code points, surrogates included)
        return raw(rnd(64)).decode("utf-8", errors="surrogateescape")
    if kind == 4:  # text bytes (possibly invalid UTF-8) given where text is expected
        return raw(rnd(64))
    if kind == 5:  # zero-length or huge binary
        return b"" if rnd(2) else b"\x00" * (rnd(4) * (1 << 18))
    return raw(rnd(4096))  # audio-sized binary frames


def one_input(rnd: Callable[[int], int], raw: Callable[[int], bytes], budget: Budget) -> None:
    """Run one conversation/call; only ProtocolError may leave the parser."""
    from voiceid.audio.convert import PcmDecoder
    from voiceid.errors import ProtocolError
    from voiceid.sources import protocol
    from voiceid.stream.events import event_from_dict

    budget.inputs += 1
    mode = rnd(16)
    try:
        if mode == 0:
            protocol.parse_start(_message(rnd, raw))
        elif mode == 1:
            protocol.parse_control(_message(rnd, raw))
        elif mode == 2:
            protocol.parse_events_query(raw(rnd(48)).decode("latin-1"))
        elif mode == 3:
            obj = _value(rnd)
            if isinstance(obj, dict):
                obj["type"] = ["scores", "speaker_started", "speaker_ended", "x"][rnd(4)]
                event_from_dict(obj)
            else:
                event_from_dict({"type": obj})
        else:
            session = protocol.StreamSession()
            decoder: PcmDecoder | None = None
            for i in range(1 + rnd(6)):
                # half the conversations open properly, so the later phases get fuzzed too
                first_ok = i == 0 and rnd(2) == 0
                cmd = session.receive(_valid_start(rnd) if first_ok else _message(rnd, raw))
                if isinstance(cmd, protocol.StartMessage) and rnd(2) == 0:
                    decoder = PcmDecoder(cmd.sample_rate, cmd.encoding, cmd.channels)
                elif isinstance(cmd, protocol.Audio) and decoder is not None:
                    out = decoder.decode(cmd.data)
                    if out.dtype.name != "float32" or out.ndim != 1:
                        raise AssertionError(f"decoder returned {out.dtype} {out.shape}")
        budget.ok += 1
    except ProtocolError:
        budget.protocol_errors += 1


def report(budget: Budget, t0: float, rss0: float, final: bool = False) -> None:
    dt = time.perf_counter() - t0
    print(
        f"{'done' if final else 'progress'}: {budget.inputs} inputs in {dt:.1f} s "
        f"({budget.inputs / max(dt, 1e-9):,.0f}/s); accepted {budget.ok}, "
        f"ProtocolError {budget.protocol_errors}, crashes 0; "
        f"RSS {rss0:.1f} -> {rss_mb():.1f} MiB",
        flush=True,
    )


def run_random(runs: int, seed: int) -> int:
    rng = random.Random(seed)

    def rnd(n: int) -> int:
        return rng.randrange(n) if n > 0 else 0

    def raw(n: int) -> bytes:
        return rng.randbytes(n)

    budget = Budget()
    import voiceid.sources.protocol  # noqa: F401  (warm imports before the first RSS)

    rss0 = rss_mb()
    t0 = time.perf_counter()
    print(f"engine random, seed {seed}: RSS at start {rss0:.1f} MiB", flush=True)
    for i in range(runs):
        state = rng.getstate()
        try:
            one_input(rnd, raw, budget)
        except Exception as exc:
            print(f"CRASH at input {i} (seed {seed}): {type(exc).__name__}: {exc}", flush=True)
            rng.setstate(state)
            import traceback

            traceback.print_exc()
            return 1
        if budget.inputs % RSS_EVERY == 0:
            report(budget, t0, rss0)
    report(budget, t0, rss0, final=True)
    return 0


def run_atheris(runs: int, seed: int) -> int:
    import atheris

    with atheris.instrument_imports():
        import voiceid.audio.convert
        import voiceid.sources.protocol
        import voiceid.stream.events  # noqa: F401

    budget = Budget()
    rss0 = rss_mb()
    t0 = time.perf_counter()
    print(f"engine atheris (libFuzzer), seed {seed}: RSS at start {rss0:.1f} MiB", flush=True)

    def test_one(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)

        def rnd(n: int) -> int:
            return fdp.ConsumeIntInRange(0, n - 1) if n > 1 else 0

        def raw(n: int) -> bytes:
            return bytes(fdp.ConsumeBytes(n))

        one_input(rnd, raw, budget)
        if budget.inputs % RSS_EVERY == 0 or budget.inputs == runs:
            report(budget, t0, rss0, final=budget.inputs == runs)

    atheris.Setup(
        [sys.argv[0], f"-runs={runs}", f"-seed={seed}", "-max_len=8192", "-rss_limit_mb=4096"],
        test_one,
    )
    atheris.Fuzz()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fuzz the streaming protocol parser.")
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    try:
        import atheris  # noqa: F401

        default = "atheris"
    except ImportError:
        default = "random"
    ap.add_argument("--engine", choices=["atheris", "random"], default=default)
    args = ap.parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if args.engine == "atheris":
        return run_atheris(args.runs, args.seed)
    return run_random(args.runs, args.seed)


if __name__ == "__main__":
    sys.exit(main())
