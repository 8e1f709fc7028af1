"""Feature front-ends: samples in, feature frames out, incrementally."""

from voiceid.frontend.base import FrontEnd, FrontEndSpec

__all__ = ["FrontEnd", "FrontEndSpec"]
