"""Structured logging: one JSON object per line (``log.json: true``), or plain text.

Context travels in ``extra=`` (``log.info("...", extra={"stream": name})``): the JSON
formatter copies every extra field whose value is a string, number, bool or None and
drops anything else, so audio (bytes, arrays) or embeddings (arrays, lists) handed to
a log call never reach the log. Messages are capped at :data:`MAX_MESSAGE` characters.
Under systemd, journald adds the time; ``voiceid run`` logs to stderr.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

MAX_MESSAGE = 2000  # characters; longer messages are cut (never meant to carry data)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_SCALARS = (str, int, float, bool, type(None))


def _clip(text: str) -> str:
    if len(text) <= MAX_MESSAGE:
        return text
    return f"{text[:MAX_MESSAGE]}… ({len(text) - MAX_MESSAGE} more characters cut)"


def context(record: logging.LogRecord) -> dict[str, Any]:
    """The record's ``extra=`` fields that are safe to log (JSON scalars only)."""
    out: dict[str, Any] = {}
    for key, value in vars(record).items():
        if key in _STANDARD or key.startswith("_"):
            continue
        if isinstance(value, _SCALARS):
            out[key] = _clip(value) if isinstance(value, str) else value
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": round(record.created, 3),
            "iso": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": _clip(record.getMessage()),
        }
        for key, value in context(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message [key=value ...]`` (the extra context at the end)."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ctx = context(record)
        record = logging.makeLogRecord({**vars(record), "msg": _clip(record.getMessage())})
        record.args = None
        text = super().format(record)
        if ctx:
            text += " [" + " ".join(f"{k}={v}" for k, v in ctx.items()) + "]"
        return text


def use_json_logs() -> None:
    """Switch the root logger's handlers to JSON lines."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter())


def use_text_logs() -> None:
    """Plain text with the extra context appended (the default of ``voiceid run``)."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(TextFormatter())
