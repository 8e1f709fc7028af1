"""Small voiceid clients that use only the documented protocols (no ``voiceid`` import).

* ``python -m voiceid_clients.stream FILE`` - stream audio over WebSocket ``/stream``
  and print the events (docs/protocol.md);
* ``python -m voiceid_clients.enroll NAME FILE...`` - enroll a person over the REST API
  with per-recording feedback (docs/rest.md);
* ``python -m voiceid_clients.listen_mqtt`` - print the events the daemon publishes on
  MQTT (docs/mqtt.md).

Shared here: how an event is printed.
"""

from __future__ import annotations

import math
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "format_event"]


def _score(value: Any) -> str:
    if isinstance(value, int | float) and math.isfinite(value):
        return f"{value:.2f}"
    return "-"


def format_event(event: dict[str, Any], *, with_stream: bool = False) -> str:
    """One human-readable line for an event (``Event.to_dict()`` JSON of the daemon)."""
    kind = str(event.get("type", "?"))
    t = event.get("stream_time_s")
    when = f"{t:7.1f} s" if isinstance(t, int | float) else " " * 9
    where = f"{event.get('stream', '?')}  " if with_stream else ""
    name = event.get("name")
    if kind == "speaker_started":
        text = f"{name}  (score {_score(event.get('score'))})"
    elif kind == "speaker_changed":
        text = f"{event.get('previous')} -> {name}  (score {_score(event.get('score'))})"
    elif kind == "speaker_ended":
        text = f"{name}  after {_score(event.get('duration_s'))} s ({event.get('reason')})"
    elif kind == "unknown_speaker":
        best = event.get("best")
        text = f"closest {best} ({_score(event.get('score'))})" if best else "nobody enrolled"
    elif kind == "scores":
        top = event.get("top") or []
        text = ", ".join(f"{m.get('name')} {_score(m.get('score'))}" for m in top) or "-"
    else:
        text = ""
    return f"{where}{when}  {kind:<16} {text}".rstrip()
