from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import pytest

from voiceid.errors import ConfigError
from voiceid.stream.decide import Decider, DecisionConfig
from voiceid.stream.events import (
    Event,
    Scores,
    SpeakerChanged,
    SpeakerEnded,
    SpeakerStarted,
    Stamp,
    UnknownSpeaker,
)

NAMES = ["A", "B", "C"]
HOP = 0.5
SIL = None  # a silent hop in a script


class Script:
    """Drives a Decider hop by hop (hop k ends at k * 0.5 s) and collects its events."""

    def __init__(self, config: DecisionConfig) -> None:
        self.decider = Decider(config)
        self.ids = itertools.count(1)
        self.t = 0.0
        self.events: list[Event] = []

    def stamp(self) -> Stamp:
        return Stamp(
            id=f"s:{next(self.ids)}",
            stream="s",
            stream_time_s=self.t,
            wall_time=0.0,
            latency_ms=0.0,
        )

    def run(
        self, hops: Sequence[Sequence[float] | None], names: Sequence[str] = NAMES
    ) -> list[Event]:
        out: list[Event] = []
        for h in hops:
            self.t += HOP
            if h is None:
                out += self.decider.on_silence(self.t, self.stamp)
            else:
                out += self.decider.on_scores(h, names, self.t, self.stamp)
        self.events += out
        return out

    def close(self) -> list[Event]:
        out = self.decider.close(self.t, self.stamp)
        self.events += out
        return out


def brief(events: list[Event]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for e in events:
        if isinstance(e, SpeakerStarted):
            out.append(("start", e.name, e.stream_time_s))
        elif isinstance(e, SpeakerChanged):
            out.append(("change", e.previous, e.name, e.stream_time_s))
        elif isinstance(e, SpeakerEnded):
            out.append(("end", e.name, e.reason, e.stream_time_s, e.duration_s))
        elif isinstance(e, UnknownSpeaker):
            out.append(("unknown", e.best, e.stream_time_s))
        else:
            out.append(("scores", e.stream_time_s))
    return out


A, B, NOBODY = [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.3, 0.2, 0.1]

# Dwell/hysteresis semantics: every decision waits ``min_dwell_hops`` (no one-hop starts
# or unknowns, whatever the score). Exit threshold 0.55.
DWELL = DecisionConfig(enter=0.6, top_k=0, confident_margin=None)
# The daemon's default: confident_margin 0.05, so a smoothed score ≥ 0.65 starts a speaker
# after one hop, and a best score < 0.55 (enter − margin, here also the exit) is unknown
# after one hop.
CONFIDENT = DecisionConfig(enter=0.6, top_k=0)
# exit above enter − margin: between 0.55 and 0.58 "nobody" still dwells
HIGH_EXIT = DecisionConfig(enter=0.6, exit=0.58, top_k=0)


def test_enter_change_unknown_silence_end() -> None:
    s = Script(DWELL)
    s.run([SIL, SIL])  # t 0.5, 1.0: stream starts silent
    s.run([A, A, A])  # t 1.5, 2.0, 2.5
    s.run([B, B, B])  # 3.0, 3.5, 4.0
    s.run([NOBODY] * 4)  # 4.5 .. 6.0
    s.run([SIL] * 3)  # 6.5, 7.0, 7.5
    s.run([NOBODY] * 3)  # 8.0 .. 9.0: a new unknown segment after the silence
    s.close()
    assert brief(s.events) == [
        ("start", "A", 2.0),  # dwell 2: best and ≥ enter at 1.5 and 2.0
        # EMA 0.5: B's score 0.45 (3.0), 0.625 (3.5), 0.71 (4.0): best and ≥ enter at 3.5
        # and 4.0. A is < exit at 3.0 and 3.5, but its end waits for B's dwell.
        ("change", "A", "B", 4.0),
        # B's smoothed score < exit 0.55 at 4.5 (0.41) and 5.0 (0.25)
        ("end", "B", "low_score", 5.0, 1.0),
        ("unknown", "B", 5.0),  # best (B, 0.30) < exit for 2 hops: 4.5, 5.0
        ("unknown", "A", 8.5),  # silence ended the unknown segment
    ]


def test_silence_ends_a_speaker_after_end_silence() -> None:
    s = Script(DWELL)
    s.run([A, A, A, A])  # 0.5 .. 2.0, started at 1.0
    s.run([SIL])  # 2.5: 0.5 s since the last voiced hop
    assert brief(s.events) == [("start", "A", 1.0)]
    s.run([SIL])  # 3.0: 1.0 s → end; duration = 2.0 (last voice) − 1.0
    s.run([SIL, SIL])
    assert brief(s.events)[1:] == [("end", "A", "silence", 3.0, 1.0)]
    s.run([A])  # fresh smoothing: one hop is not enough
    assert len(s.events) == 2
    s.run([A])
    assert brief(s.events)[2:] == [("start", "A", 5.0)]


def test_a_short_pause_keeps_the_speaker() -> None:
    s = Script(DWELL)
    s.run([A, A, SIL, A, A, SIL, A])
    s.close()
    assert brief(s.events) == [("start", "A", 1.0), ("end", "A", "closed", 3.5, 2.5)]


@pytest.mark.parametrize("config", [DWELL, CONFIDENT], ids=["dwell", "confident"])
def test_silence_only_never_names_anyone(config: DecisionConfig) -> None:
    s = Script(config)
    s.run([SIL] * 50)
    s.close()
    assert s.events == []


def test_hysteresis_prevents_flapping_around_the_threshold() -> None:
    cfg = DecisionConfig(enter=0.6, alpha=1.0, top_k=0, confident_margin=None)  # no smoothing
    s = Script(cfg)
    s.run([[0.65, 0.0, 0.0]] * 2)  # start
    wobble = [[0.62, 0.0, 0.0], [0.57, 0.0, 0.0]] * 20  # around enter, above exit 0.55
    s.run(wobble)
    s.run([[0.54, 0.0, 0.0], [0.58, 0.0, 0.0]] * 10)  # dips below exit, never twice
    assert brief(s.events) == [("start", "A", 1.0)]
    s.run([[0.54, 0.0, 0.0]] * 2)
    assert [e.type for e in s.events] == ["speaker_started", "speaker_ended", "unknown_speaker"]


def test_no_flapping_between_two_close_speakers() -> None:
    cfg = DecisionConfig(enter=0.6, alpha=1.0, top_k=0, confident_margin=None)
    s = Script(cfg)
    s.run([[0.8, 0.78, 0.0]] * 2)
    s.run([[0.78, 0.81, 0.0], [0.81, 0.78, 0.0], [0.78, 0.81, 0.0], [0.78, 0.81, 0.0]] * 5)
    assert brief(s.events) == [("start", "A", 1.0)]  # B never beats A by change_margin


def test_dwell_is_respected() -> None:
    s = Script(
        DecisionConfig(enter=0.6, alpha=1.0, min_dwell_hops=3, top_k=0, confident_margin=None)
    )
    s.run([A, A, NOBODY, A, A, NOBODY])
    assert s.events == []  # never 3 hops in a row
    s.run([A, A, A])
    assert brief(s.events) == [("start", "A", 4.5)]
    s.run([B, A, B, B, A])
    assert len(s.events) == 1
    s.run([B, B, B])
    assert brief(s.events)[1:] == [("change", "A", "B", 8.5)]  # B best at 7.5, 8.0, 8.5


def test_unknown_once_per_segment() -> None:
    s = Script(DWELL)
    s.run([NOBODY] * 10 + [[0.5, 0.1, 0.1]] * 2 + [NOBODY] * 10)
    assert brief(s.events) == [("unknown", "A", 1.0)]
    s.run([A, A, A, NOBODY, NOBODY, NOBODY, NOBODY])
    assert [e.type for e in s.events] == [
        "unknown_speaker",
        "speaker_started",
        "speaker_ended",
        "unknown_speaker",
    ]


def test_scores_are_rate_limited_and_ranked() -> None:
    s = Script(DecisionConfig(enter=0.6, alpha=1.0, top_k=2, scores_interval_s=1.0))
    s.run([A, A, SIL, A, A, A])
    scores = [e for e in s.events if isinstance(e, Scores)]
    assert [e.stream_time_s for e in scores] == [0.5, 2.0, 3.0]  # voiced hops, ≥ 1 s apart
    assert scores[0].top == (("A", 0.8), ("B", 0.1))
    s = Script(DecisionConfig(enter=0.6, scores_interval_s=0.0, top_k=5))
    s.run([A, A, A])
    assert [len(e.top) for e in s.events if isinstance(e, Scores)] == [3, 3, 3]
    s = Script(DecisionConfig(enter=0.6, top_k=0))
    s.run([A] * 5)
    assert not [e for e in s.events if isinstance(e, Scores)]


def test_vote_smoothing() -> None:
    cfg = DecisionConfig(enter=0.6, smoothing="vote", vote_k=3, top_k=0, confident_margin=None)
    s = Script(cfg)
    odd, b_loud = [0.1, 0.75, 0.0], [0.1, 0.95, 0.1]
    s.run([A, A, odd, A])
    assert brief(s.events) == [("start", "A", 1.0)]  # the odd hop is outvoted
    s.run([b_loud, b_loud, b_loud])
    # 2.5: hops (odd, A, B) → B has 2 votes, mean 0.6 ≥ enter; 3.0: (A, B, B) → 0.67
    assert brief(s.events)[1:] == [("change", "A", "B", 3.0)]


def test_enrolled_names_can_change() -> None:
    s = Script(DWELL)
    s.run([A, A])
    s.run([[0.1, 0.8], [0.1, 0.8], [0.1, 0.8]], names=["B", "D"])  # A removed, D enrolled
    assert brief(s.events)[0] == ("start", "A", 1.0)
    assert brief(s.events)[1] == ("change", "A", "D", 2.0)


def test_nobody_enrolled_is_unknown_without_a_guess() -> None:
    s = Script(DWELL)
    s.run([[]] * 3, names=[])
    assert len(s.events) == 1
    e = s.events[0]
    assert isinstance(e, UnknownSpeaker) and e.best is None and e.score is None


def test_config_validation() -> None:
    assert DecisionConfig(enter=0.4).exit_threshold == pytest.approx(0.35)
    with pytest.raises(ConfigError):
        DecisionConfig(enter=0.5, exit=0.6)
    with pytest.raises(ConfigError):
        DecisionConfig(alpha=0.0)
    with pytest.raises(ConfigError):
        DecisionConfig(min_dwell_hops=0)
    with pytest.raises(ValueError):
        Decider().on_scores([0.1, 0.2], ["A"], 0.5, Script(DWELL).stamp)


def test_a_blocked_change_still_ends_the_low_speaker() -> None:
    cfg = DecisionConfig(
        enter=0.6, exit=0.58, alpha=1.0, change_margin=0.5, top_k=0, confident_margin=None
    )
    s = Script(cfg)
    s.run([A, A])  # A starts at 1.0
    s.run([[0.3, 0.65, 0.0]] * 4)  # B ≥ enter but not 0.5 above A; A < exit
    assert brief(s.events) == [
        ("start", "A", 1.0),
        ("end", "A", "low_score", 2.0, 1.0),  # B has dwelt 2 hops without a change: end
        ("start", "B", 2.5),
    ]


# -- confident one-hop decisions (confident_margin) ------------------------------------


def test_the_default_is_a_confident_margin_of_005() -> None:
    assert DecisionConfig().confident_margin == pytest.approx(0.05)


def test_a_confident_score_starts_after_one_hop() -> None:
    s = Script(CONFIDENT)
    s.run([SIL, [0.66, 0.1, 0.1]])  # 1.0: ≥ enter + margin (0.65) on the first voiced hop
    assert brief(s.events) == [("start", "A", 1.0)]
    (started,) = s.events
    assert isinstance(started, SpeakerStarted) and started.score == pytest.approx(0.66)
    s = Script(CONFIDENT)
    s.run([[0.64, 0.1, 0.1]])  # ≥ enter, < enter + margin: the dwell applies
    assert s.events == []
    s.run([[0.64, 0.1, 0.1]])
    assert brief(s.events) == [("start", "A", 1.0)]


def test_the_confident_bound_is_the_smoothed_score() -> None:
    # EMA 0.5. 0.56 (< exit 0.58, not below enter − margin: no unknown yet), then 0.76:
    # smoothed 0.66 ≥ 0.65, a start on the first hop A is ≥ enter
    s = Script(HIGH_EXIT)
    s.run([[0.56, 0.1, 0.1], [0.76, 0.1, 0.1]])
    assert brief(s.events) == [("start", "A", 1.0)]
    # 0.56 then 0.66: smoothed 0.61 ≥ enter but not confident, one hop of dwell only
    s = Script(HIGH_EXIT)
    s.run([[0.56, 0.1, 0.1], [0.66, 0.1, 0.1]])
    assert s.events == []


def test_a_confident_low_score_is_unknown_after_one_hop() -> None:
    s = Script(CONFIDENT)
    s.run([[0.45, 0.3, 0.1]])  # best 0.45 < enter − margin (0.55)
    assert brief(s.events) == [("unknown", "A", 0.5)]
    (unknown,) = s.events
    assert isinstance(unknown, UnknownSpeaker) and unknown.score == pytest.approx(0.45)
    s.run([[0.45, 0.3, 0.1]] * 4)
    assert len(s.events) == 1  # still once per segment
    s = Script(CONFIDENT)
    s.run([[0.54, 0.3, 0.1]])  # < 0.55: at once
    assert brief(s.events) == [("unknown", "A", 0.5)]
    s = Script(HIGH_EXIT)
    s.run([[0.56, 0.3, 0.1]])  # < exit (0.58) but not below enter − margin: the dwell applies
    assert s.events == []
    s.run([[0.56, 0.3, 0.1]])
    assert brief(s.events) == [("unknown", "A", 1.0)]


def test_nobody_enrolled_is_unknown_after_one_hop() -> None:
    s = Script(CONFIDENT)
    s.run([[]], names=[])
    (e,) = s.events
    assert isinstance(e, UnknownSpeaker) and e.best is None and e.score is None
    assert e.stream_time_s == 0.5


def test_a_change_between_speakers_always_dwells() -> None:
    cfg = DecisionConfig(enter=0.6, alpha=1.0, top_k=0, min_dwell_hops=3)
    s = Script(cfg)
    s.run([[1.0, 0.0, 0.0]])  # 0.5: confident start, no dwell
    s.run([[0.0, 1.0, 0.0]] * 2)  # 1.0, 1.5: B is perfect, A is far below exit
    assert brief(s.events) == [("start", "A", 0.5)]  # neither a change nor an end yet
    s.run([[0.0, 1.0, 0.0]])  # 2.0: B has been best for 3 hops
    assert brief(s.events) == [("start", "A", 0.5), ("change", "A", "B", 2.0)]


def test_a_low_score_end_always_dwells() -> None:
    s = Script(DecisionConfig(enter=0.6, alpha=1.0, top_k=0))
    s.run([[1.0, 0.0, 0.0]])  # 0.5: confident start
    s.run([[-1.0, -1.0, -1.0]])  # 1.0: far below exit, but the end waits for the dwell
    assert brief(s.events) == [("start", "A", 0.5)]
    s.run([[-1.0, -1.0, -1.0]])  # 1.5: ended, and unknown on the same hop
    assert brief(s.events)[1:] == [("end", "A", "low_score", 1.5, 1.0), ("unknown", "A", 1.5)]


def test_the_script_with_confident_decisions() -> None:
    # test_enter_change_unknown_silence_end's script at the default margin: starts and
    # unknowns come one hop sooner where the score is beyond the margin, the change does not
    s = Script(CONFIDENT)
    s.run([SIL, SIL, A, A, A, B, B, B])
    s.run([NOBODY] * 4 + [SIL] * 3 + [NOBODY] * 3)
    s.close()
    assert brief(s.events) == [
        ("start", "A", 1.5),  # 0.8 ≥ 0.65 on the first voiced hop
        ("change", "A", "B", 4.0),  # as with DWELL: B best at 3.5 and 4.0
        ("end", "B", "low_score", 5.0, 1.0),  # as with DWELL
        ("unknown", "B", 5.0),
        ("unknown", "A", 8.0),  # fresh after the silence: 0.3 < 0.50 at once
    ]


@pytest.mark.parametrize("smoothing", ["ema", "vote"])
def test_confident_margin_none_always_dwells(smoothing: Literal["ema", "vote"]) -> None:
    cfg = DecisionConfig(enter=0.6, top_k=0, smoothing=smoothing, confident_margin=None)
    s = Script(cfg)
    s.run([[1.0, 0.0, 0.0]])
    assert s.events == []
    s.run([[1.0, 0.0, 0.0]])
    assert brief(s.events) == [("start", "A", 1.0)]
    s = Script(cfg)
    s.run([[-1.0, -1.0, -1.0]])
    assert s.events == []
    s.run([[-1.0, -1.0, -1.0]])
    assert brief(s.events) == [("unknown", "A", 1.0)]


def test_a_larger_confident_margin_needs_a_larger_score() -> None:
    cfg = DecisionConfig(enter=0.6, top_k=0, confident_margin=0.3)
    s = Script(cfg)
    s.run([A])  # 0.8 < 0.9
    assert s.events == []
    s.run([A])
    assert brief(s.events) == [("start", "A", 1.0)]
    s = Script(cfg)
    s.run([[0.95, 0.0, 0.0]])
    assert brief(s.events) == [("start", "A", 0.5)]
    s = Script(cfg)
    s.run([NOBODY])  # 0.3 ≥ 0.55 − 0.3: not confident
    assert s.events == []
    s = Script(cfg)
    s.run([[0.2, 0.1, 0.0]])  # 0.2 < 0.25
    assert brief(s.events) == [("unknown", "A", 0.5)]
