"""Streaming evaluation: each test file through the real stream core (``run_file``).

Every test file is streamed on its own, as a live stream of that audio would be (same
scheduler, VAD gate, windows, smoothing and hysteresis), against an index of the
enrolled speakers. From the events we rebuild who the stream says is speaking after each
hop (``speaker_started``/``speaker_changed`` name someone, ``speaker_ended`` clears;
the final ``closed`` end is not a decision) and measure, over every hop of each file:

* enrolled speakers: **hop accuracy** (hops naming the true speaker; the hops before the
  first decision count as wrong, so this includes the start-up latency), the same over
  the hops from the file's first decision on (``speaker_started`` or
  ``unknown_speaker``: *settled* accuracy), wrong-identity hops (hops naming someone
  else), **time to first correct identity** (stream seconds from the start of the file to
  the event first naming the true speaker; files where it never happens count as
  infinitely late), files where a wrong name was ever given;
* unenrolled speakers (held out of the index): **false identity rate** (files where any
  enrolled name was given), hops naming someone, files that got ``unknown_speaker``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from voiceid.frontend.base import FrontEnd
from voiceid.stream.engine import EmbedFn
from voiceid.stream.events import Event, SpeakerChanged, SpeakerEnded, SpeakerStarted
from voiceid.stream.pipeline import Scorer, StreamConfig, run_file

_EPS = 1e-6


@dataclass(frozen=True)
class StreamCase:
    """One test file; ``speaker`` is the enrolled name it should get, None if unenrolled."""

    path: Path
    speaker: str | None


@dataclass
class FileResult:
    path: Path
    speaker: str | None
    duration_s: float
    hops: int  # hops of the file (each hop_s of audio)
    correct_hops: int  # enrolled: the true name; unenrolled: nobody named
    settled_hops: int  # hops from the first decision event on
    settled_correct: int  # of those, hops naming the true speaker (or nobody if unenrolled)
    named_hops: int  # hops where someone is named
    wrong_hops: int  # hops naming someone other than ``speaker``
    first_correct_s: float | None  # stream time of the event first naming ``speaker``
    names: list[str] = field(default_factory=list)  # names given, in order
    unknown_events: int = 0

    @property
    def wrong_name(self) -> bool:
        return any(n != self.speaker for n in self.names)


def hop_identities(events: Sequence[Event], n_hops: int, hop_s: float) -> list[str | None]:
    """Who the stream names after each hop ``k = 1..n_hops`` (None: nobody)."""
    timeline = [e for e in events if not (isinstance(e, SpeakerEnded) and e.reason == "closed")]
    out: list[str | None] = []
    current: str | None = None
    i = 0
    for k in range(1, n_hops + 1):
        t = k * hop_s
        while i < len(timeline) and timeline[i].stream_time_s <= t + _EPS:
            e = timeline[i]
            if isinstance(e, SpeakerStarted | SpeakerChanged):
                current = e.name
            elif isinstance(e, SpeakerEnded):
                current = None
            i += 1
        out.append(current)
    return out


def score_file(
    case: StreamCase, events: Sequence[Event], n_samples: int, config: StreamConfig
) -> FileResult:
    """Per-hop figures of one streamed file."""
    sch = config.scheduler
    hop_s = sch.hop_samples / sch.sample_rate
    n_hops = n_samples // sch.hop_samples
    counted = hop_identities(events, n_hops, hop_s)
    decided = next(
        (e.stream_time_s for e in events if e.type in ("speaker_started", "unknown_speaker")),
        None,
    )
    settled = [] if decided is None else counted[max(0, round(decided / hop_s) - 1) :]
    names = [e.name for e in events if isinstance(e, SpeakerStarted | SpeakerChanged)]
    first_correct = next(
        (
            e.stream_time_s
            for e in events
            if isinstance(e, SpeakerStarted | SpeakerChanged) and e.name == case.speaker
        ),
        None,
    )
    return FileResult(
        path=case.path,
        speaker=case.speaker,
        duration_s=n_samples / sch.sample_rate,
        hops=len(counted),
        correct_hops=sum(1 for x in counted if x == case.speaker),
        settled_hops=len(settled),
        settled_correct=sum(1 for x in settled if x == case.speaker),
        named_hops=sum(1 for x in counted if x is not None),
        wrong_hops=sum(1 for x in counted if x is not None and x != case.speaker),
        first_correct_s=None if case.speaker is None else first_correct,
        names=names,
        unknown_events=sum(1 for e in events if e.type == "unknown_speaker"),
    )


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _quantile(values: NDArray[np.float64], q: float) -> float | None:
    """Quantile with never-reached values as +inf; None when it falls on one of them."""
    if values.size == 0:
        return None
    finite = bool(np.isfinite(values).all())
    v = float(np.quantile(values, q, method="linear" if finite else "inverted_cdf"))
    return v if math.isfinite(v) else None


@dataclass
class StreamingResult:
    files: list[FileResult]
    enrolled: list[str]
    unenrolled: list[str]
    threshold: float
    hop_s: float
    window_s: float
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        known = [f for f in self.files if f.speaker is not None]
        unknown = [f for f in self.files if f.speaker is None]
        hops = sum(f.hops for f in known)
        u_hops = sum(f.hops for f in unknown)
        ttfc = np.array(
            [math.inf if f.first_correct_s is None else f.first_correct_s for f in known],
            dtype=np.float64,
        )
        audio_s = sum(f.duration_s for f in self.files)
        return {
            "enrolled_speakers": self.enrolled,
            "unenrolled_speakers": self.unenrolled,
            "threshold": self.threshold,
            "hop_s": self.hop_s,
            "window_s": self.window_s,
            "files": len(self.files),
            "audio_s": round(audio_s, 2),
            "seconds": round(self.seconds, 2),
            "enrolled_files": len(known),
            "hops": hops,
            "hop_accuracy": _ratio(sum(f.correct_hops for f in known), hops),
            "settled_hop_accuracy": _ratio(
                sum(f.settled_correct for f in known), sum(f.settled_hops for f in known)
            ),
            "wrong_identity_hop_rate": _ratio(sum(f.wrong_hops for f in known), hops),
            "files_with_wrong_identity": _ratio(sum(f.wrong_name for f in known), len(known)),
            "first_correct_s": {
                "median": _quantile(ttfc, 0.5),
                "p90": _quantile(ttfc, 0.9),
                "never": int(np.sum(~np.isfinite(ttfc))),
            },
            "unenrolled_files": len(unknown),
            "unenrolled_hops": u_hops,
            "false_identity_rate": _ratio(sum(bool(f.names) for f in unknown), len(unknown)),
            "false_identity_hop_rate": _ratio(sum(f.named_hops for f in unknown), u_hops),
            "unknown_detected_rate": _ratio(
                sum(f.unknown_events > 0 for f in unknown), len(unknown)
            ),
        }


def evaluate_streaming(
    cases: Sequence[StreamCase],
    load: Callable[[Path], NDArray[np.float32]],
    make_frontend: Callable[[], FrontEnd],
    embed: EmbedFn,
    scorer: Scorer,
    config: StreamConfig,
    *,
    enrolled: Sequence[str],
    unenrolled: Sequence[str],
    progress: Callable[[int, int], None] | None = None,
) -> StreamingResult:
    """Stream every case through :func:`run_file` and score the decisions."""
    import time

    t0 = time.perf_counter()
    files: list[FileResult] = []
    for i, case in enumerate(cases):
        samples = load(case.path)
        events = run_file(samples, make_frontend(), embed, scorer, config, stream=case.path.stem)
        files.append(score_file(case, events, len(samples), config))
        if progress is not None:
            progress(i + 1, len(cases))
    sch = config.scheduler
    return StreamingResult(
        files=files,
        enrolled=list(enrolled),
        unenrolled=list(unenrolled),
        threshold=config.decision.enter,
        hop_s=sch.hop_s,
        window_s=sch.window_s,
        seconds=time.perf_counter() - t0,
    )
