"""JSON lines of every event on stdout (one line per event, flushed)."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from voiceid.runtime.bus import Subscription


async def write_events(sub: Subscription, out: TextIO | None = None) -> int:
    """Write events until the subscription ends; returns how many were written."""
    stream = out or sys.stdout
    n = 0
    async for event in sub:
        stream.write(json.dumps(event.to_dict(), separators=(",", ":")) + "\n")
        stream.flush()
        n += 1
    return n
