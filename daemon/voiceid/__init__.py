"""voiceid: real-time streaming speaker verification.

The public surface is small and re-exported here; everything else is internal.
"""

from voiceid.errors import VoiceidError

__version__ = "0.1.0"

__all__ = ["VoiceidError", "__version__"]
