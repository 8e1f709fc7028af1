"""The pure streaming core: samples → frames → windows → embeddings → scores → events.

No sockets, no asyncio, no wall clock inside: time comes from an injected ``clock``.
Stages, each in its own module:

* :mod:`~voiceid.stream.ring` - bounded ring buffers (samples, frames, flags);
* :mod:`~voiceid.stream.vad` - :class:`VoiceGate`, one voice flag per 10 ms;
* :mod:`~voiceid.stream.scheduler` - :class:`HopScheduler`, a window every ``hop_s``;
* :mod:`~voiceid.stream.engine` - :class:`BatchEngine`, batched embedding on a thread;
* :mod:`~voiceid.stream.decide` - :class:`Decider`, smoothing + hysteresis → events;
* :mod:`~voiceid.stream.pipeline` - :class:`StreamCore` (one stream) and :func:`run_file`;
* :mod:`~voiceid.stream.events` - the typed events clients receive.
"""

from voiceid.stream.decide import Decider, DecisionConfig
from voiceid.stream.engine import BatchEngine, EmbedResult, EngineStats
from voiceid.stream.events import (
    Event,
    Scores,
    SpeakerChanged,
    SpeakerEnded,
    SpeakerStarted,
    Stamp,
    UnknownSpeaker,
    event_from_dict,
)
from voiceid.stream.pipeline import Scorer, StreamConfig, StreamCore, StreamStats, run_file
from voiceid.stream.ring import FrameRing, SampleRing
from voiceid.stream.scheduler import Hop, HopScheduler, SchedulerConfig, SilentHop, WindowRequest
from voiceid.stream.vad import VadConfig, VoiceGate

__all__ = [
    "BatchEngine",
    "Decider",
    "DecisionConfig",
    "EmbedResult",
    "EngineStats",
    "Event",
    "FrameRing",
    "Hop",
    "HopScheduler",
    "SampleRing",
    "SchedulerConfig",
    "Scorer",
    "Scores",
    "SilentHop",
    "SpeakerChanged",
    "SpeakerEnded",
    "SpeakerStarted",
    "Stamp",
    "StreamConfig",
    "StreamCore",
    "StreamStats",
    "UnknownSpeaker",
    "VadConfig",
    "VoiceGate",
    "WindowRequest",
    "event_from_dict",
    "run_file",
]
