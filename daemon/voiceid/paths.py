"""Where voiceid keeps files: ``$VOICEID_HOME`` if set, else the XDG directories."""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / default


def home() -> Path | None:
    value = os.environ.get("VOICEID_HOME")
    return Path(value) if value else None


def cache_dir() -> Path:
    """Model cache: ``$VOICEID_HOME/models``, ``$CACHE_DIRECTORY/models`` (systemd) or
    ``$XDG_CACHE_HOME/voiceid/models``."""
    root = home()
    if root:
        return root / "models"
    systemd = os.environ.get("CACHE_DIRECTORY")  # CacheDirectory= (DynamicUser has no home)
    if systemd:
        return Path(systemd.split(":")[0]) / "models"
    return _xdg("XDG_CACHE_HOME", ".cache") / "voiceid" / "models"


def state_dir() -> Path:
    """Profiles database and other state: ``$VOICEID_HOME`` or ``$XDG_STATE_HOME/voiceid``.

    Under systemd, ``$STATE_DIRECTORY`` (StateDirectory=) wins.
    """
    root = home()
    if root:
        return root
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    return _xdg("XDG_STATE_HOME", ".local/state") / "voiceid"
