"""Enrolled profiles: SQLite store, in-memory 1:N index, enrollment sessions, scoring."""

from voiceid.profiles.index import ProfileIndex
from voiceid.profiles.model import Profile, ProfileSummary, Utterance, centroid
from voiceid.profiles.store import ProfileStore

__all__ = ["Profile", "ProfileIndex", "ProfileStore", "ProfileSummary", "Utterance", "centroid"]
