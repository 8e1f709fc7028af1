"""One exception root for everything voiceid raises on purpose.

Every error says what happened, where, and what to do (``hint``). The CLI prints
``str(error)`` on one line and exits with ``error.exit_code`` (see docs/cli.md).
"""

from __future__ import annotations


class VoiceidError(Exception):
    """Root of all voiceid errors."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(VoiceidError):
    """Bad configuration or command-line usage."""

    exit_code = 2


class AudioError(VoiceidError):
    """Audio that is missing, unreadable, too short or silent."""

    exit_code = 3


class ModelError(VoiceidError):
    """Unknown model, model not available, or inference provider problem."""

    exit_code = 4


class DownloadError(ModelError):
    """A model file could not be fetched or failed its checksum."""


class ProfileError(VoiceidError):
    """Unknown profile, duplicate name, or a profile enrolled with another model."""

    exit_code = 5


class StoreError(VoiceidError):
    """The profile database is corrupt, locked or not writable."""

    exit_code = 6


class ProtocolError(VoiceidError):
    """A streaming client broke the protocol (bad message, bad audio)."""

    exit_code = 7
