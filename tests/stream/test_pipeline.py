from __future__ import annotations

import numpy as np
import pytest

from tests.stream.fakes import AB_SCORER, FakeClock, FakeFrontEnd, level_embed, noise, silence
from voiceid.errors import ProtocolError
from voiceid.stream.decide import DecisionConfig
from voiceid.stream.events import Event, Scores, SpeakerEnded, SpeakerStarted
from voiceid.stream.pipeline import StreamConfig, StreamCore, run_file
from voiceid.stream.scheduler import SchedulerConfig, SilentHop, WindowRequest
from voiceid.stream.vad import VadConfig

# Energy VAD so synthetic noise counts as voice; loud noise is "A", quieter is "B".
# Default decisions otherwise: a smoothed score ≥ enter + 0.05 = 0.85 starts a speaker on
# its first hop; exit 0.75. Windows: 1.0 s (T 98) at the stream start, then 1.5 s, 2.0 s.
CONFIG = StreamConfig(
    scheduler=SchedulerConfig(vad=VadConfig(kind="energy", energy_dbfs=-40.0)),
    decision=DecisionConfig(enter=0.8, top_k=0),
)


def kinds(events: list[Event]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for e in events:
        name = getattr(e, "name", getattr(e, "best", None))
        out.append((e.type, name, e.stream_time_s))
    return out


def test_run_file_a_then_b_then_unknown_then_silence() -> None:
    x = np.concatenate(
        [
            noise(4.0, -10, seed=1),  # A
            noise(4.0, -30, seed=2),  # B
            noise(4.0, -20, seed=3),  # between: cos 0.71 to both < exit 0.75
            silence(3.0),
        ]
    )
    events = run_file(x, FakeFrontEnd(), level_embed, AB_SCORER, CONFIG)
    assert kinds(events) == [
        ("speaker_started", "A", 1.0),  # the first (1.0 s) window: cos 1.0, no dwell
        # B from 4.0; windows are 2 s long and the EMA lags: B ≥ enter at 6.5 and 7.0 (a
        # change always dwells)
        ("speaker_changed", "B", 7.0),
        ("speaker_ended", "B", 11.0),  # the -20 dBFS voice: B's score sinks below exit
        # nobody ≥ exit (B 0.74, 0.72 at 10.5 and 11.0; A a bit lower): not by the
        # confident margin (< 0.70), so the dwell applies
        ("unknown_speaker", "B", 11.0),
        # the silence from 12.0 ends nothing: nobody is current
    ]
    assert [e.id for e in events] == [f"file:{i}" for i in range(1, 5)]


def test_run_file_silence_never_names_anyone() -> None:
    for x in (silence(10.0), noise(10.0, -60)):
        cfg = StreamConfig(decision=DecisionConfig(enter=-1.0))  # even a threshold of -1
        assert run_file(x, FakeFrontEnd(), level_embed, AB_SCORER, cfg) == []


def test_close_ends_the_current_speaker_and_silence_ends_it_live() -> None:
    events = run_file(noise(5.0, -10), FakeFrontEnd(), level_embed, AB_SCORER, CONFIG)
    assert kinds(events) == [("speaker_started", "A", 1.0), ("speaker_ended", "A", 5.0)]
    end = events[-1]
    assert isinstance(end, SpeakerEnded) and end.reason == "closed" and end.duration_s == 4.0

    x = np.concatenate([noise(5.0, -10), silence(3.0)])
    events = run_file(x, FakeFrontEnd(), level_embed, AB_SCORER, CONFIG)
    end = events[-1]
    # The last window ends at 5.0. At 5.5 and 6.0 the look-back still holds ≥ 1 s of voice
    # but the pause (from 5.0) leaves no audio for a window: no hop marker at all. Silent
    # hops from 6.5: 1.5 s after the last voiced hop → ended at 6.5; the duration runs
    # from the start (1.0) to the last voiced hop (5.0).
    assert kinds(events) == [("speaker_started", "A", 1.0), ("speaker_ended", "A", 6.5)]
    assert isinstance(end, SpeakerEnded) and end.reason == "silence"
    assert end.duration_s == 4.0


@pytest.mark.parametrize("gap_s", [0.6, 0.4])
def test_a_turn_across_a_pause_never_mixes_the_talkers(gap_s: float) -> None:
    x = np.concatenate([noise(3.0, -10, seed=1), silence(gap_s), noise(3.0, -30, seed=2)])
    b_part: list[tuple[int, float]] = []  # (T, the embedding's B component) per window

    def embed(feats: np.ndarray) -> np.ndarray:
        y = level_embed(feats)
        b_part.extend((feats.shape[1], round(float(v), 1)) for v in y[:, 1])
        return y

    events = run_file(x, FakeFrontEnd(), embed, AB_SCORER, CONFIG, batch=1)
    a_windows = [(98, 0.0), (148, 0.0)] + [(198, 0.0)] * 3  # hops 1.0-3.0 s
    if gap_s >= 0.5:  # a pause: B's windows start after it, pure B
        assert b_part == [*a_windows, (98, 1.0), (148, 1.0), (198, 1.0), (198, 1.0)]
        assert kinds(events) == [
            ("speaker_started", "A", 1.0),
            # EMA: A falls under exit (0.75) at 5.0 and 5.5 while B is not yet ≥ enter
            ("speaker_ended", "A", 5.5),
            ("speaker_started", "B", 6.0),  # B at 0.875: confident
            ("speaker_ended", "B", 6.6),  # closed
        ]
    else:  # too short for a pause: 2 s windows hold both talkers
        assert b_part == [*a_windows, (198, 0.1), (198, 0.2), (198, 0.4)] + [(198, 1.0)] * 3
        assert kinds(events) == [
            ("speaker_started", "A", 1.0),
            ("speaker_changed", "B", 6.0),
            ("speaker_ended", "B", 6.4),
        ]


def test_latency_comes_from_the_injected_clock() -> None:
    clock = FakeClock(100.0)
    core = StreamCore("mic", FakeFrontEnd(), CONFIG, clock=clock)
    reqs: list[WindowRequest] = []
    for i in range(7):  # 3.5 s in 0.5 s chunks, fed at 100, 101, ...
        clock.t = 100.0 + i
        reqs += [h for h in core.feed(noise(0.5, -10, seed=i)) if isinstance(h, WindowRequest)]
    # hop 1 is silent (0.5 s of voice); windows from hop 2 (1.0 s, fed at 101) on
    assert [r.seq for r in reqs] == [2, 3, 4, 5, 6, 7]
    assert [r.fed_at for r in reqs] == [101, 102, 103, 104, 105, 106]
    clock.t = 106.5
    (event,) = core.on_embedding(reqs[0], level_embed(reqs[0].feats[None])[0], AB_SCORER)
    assert isinstance(event, SpeakerStarted) and event.name == "A"  # confident: one hop
    assert event.latency_ms == pytest.approx(5500.0)  # hop 2 was fed at 101.0
    assert event.wall_time == 106.5 and event.stream_time_s == 1.0 and event.id == "mic:1"


def test_out_of_order_results_are_decided_in_order() -> None:
    core = StreamCore("s", FakeFrontEnd(), CONFIG, clock=FakeClock())
    hops = core.feed(np.concatenate([noise(4.0, -10), silence(0.1)]))
    reqs = {h.seq: h for h in hops if isinstance(h, WindowRequest)}
    assert list(reqs) == [2, 3, 4, 5, 6, 7, 8]
    emb = {k: level_embed(r.feats[None])[0] for k, r in reqs.items()}
    assert core.on_embedding(reqs[3], emb[3], AB_SCORER) == []  # waits for hop 2
    assert core.on_embedding(reqs[5], emb[5], AB_SCORER) == []
    events = core.on_embedding(reqs[2], emb[2], AB_SCORER)  # decides 2 and 3
    assert kinds(events) == [("speaker_started", "A", 1.0)]  # at hop 2, decided first
    assert core.unresolved == 5  # 4 (waiting), 5 (done, behind it), 6, 7, 8 (waiting)
    assert core.on_skipped(reqs[4]) == []  # engine refused 4: no scores, still voice
    assert core.unresolved == 3
    assert core.stats.skipped == 1 and core.stats.scored == 3
    assert core.on_embedding(reqs[4], emb[4], AB_SCORER) == []  # too late: ignored
    assert core.stats.late == 1


def test_silent_hops_wait_behind_pending_windows() -> None:
    core = StreamCore("s", FakeFrontEnd(), CONFIG, clock=FakeClock())
    held: WindowRequest | None = None
    events: list[Event] = []
    x = np.concatenate([noise(4.5, -10), silence(3.0)])
    hops = core.feed(x)
    # windows until 4.5 s; no marker at 5.0, 5.5 (≥ 1 s of voice in the look-back, but
    # nothing after the pause); silent hops from 6.0
    assert [(h.seq, isinstance(h, SilentHop)) for h in hops] == [(1, True)] + [
        (k, False) for k in range(2, 10)
    ] + [(k, True) for k in range(12, 16)]
    for h in hops:
        if isinstance(h, SilentHop):
            events += core.on_silent(h)
        elif h.seq == 8:  # the 4.0 s window: its result is slow
            held = h
        else:
            events += core.on_embedding(h, level_embed(h.feats[None])[0], AB_SCORER)
    # The speaker started at 1.0 but cannot end before the window held at 4.0 is decided.
    assert kinds(events) == [("speaker_started", "A", 1.0)]
    assert held is not None and core.unresolved == 6  # hops 8, 9 and four silent ones
    events = core.on_embedding(held, level_embed(held.feats[None])[0], AB_SCORER)
    # the first silent hop (6.0) is ≥ 1 s after the last voiced hop (4.5)
    assert kinds(events) == [("speaker_ended", "A", 6.0)]
    (end,) = events
    assert isinstance(end, SpeakerEnded) and end.reason == "silence" and end.duration_s == 3.5
    assert core.unresolved == 0


def test_max_unresolved_gives_up_on_lost_results() -> None:
    cfg = StreamConfig(scheduler=CONFIG.scheduler, decision=CONFIG.decision, max_unresolved=3)
    core = StreamCore("s", FakeFrontEnd(), cfg, clock=FakeClock())
    hops = core.feed(noise(5.0, -10))  # hop 1 silent, requests 2..10; none answered
    assert len(hops) == 10
    assert core.unresolved == 3  # 8, 9, 10: 2..7 were given up
    assert core.stats.dropped == 6 and core.stats.windows == 9 and core.stats.hops == 10
    assert core.close() == []
    assert core.stats.dropped == 9
    with pytest.raises(ProtocolError):
        core.feed(silence(0.1))


def test_scores_events_and_stats() -> None:
    cfg = StreamConfig(
        scheduler=CONFIG.scheduler, decision=DecisionConfig(enter=0.8, scores_interval_s=1.0)
    )
    x = np.concatenate([silence(1.0), noise(4.0, -10)])
    clock = FakeClock()
    core = StreamCore("s", FakeFrontEnd(), cfg, clock=clock)
    events: list[Event] = []
    frames: list[int] = []
    for i in range(0, x.size, 320):
        for h in core.feed(x[i : i + 320]):
            if isinstance(h, SilentHop):
                events += core.on_silent(h)
            else:
                frames.append(h.feats.shape[0])
                events += core.on_embedding(h, level_embed(h.feats[None])[0], AB_SCORER)
    events += core.close()
    # voice from 1.0 s: hops 0.5-1.5 silent; the leading second of silence is a pause, so
    # the windows grow from the voice onset: 1.0 s at 2.0, 1.5 s at 2.5, then 2.0 s
    assert frames == [98, 148, 198, 198, 198, 198, 198]
    scores = [e for e in events if isinstance(e, Scores)]
    assert [e.stream_time_s for e in scores] == [2.0, 3.0, 4.0, 5.0]  # ≥ 1 s apart
    assert scores[0].top[0][0] == "A" and len(scores[0].top) == 2
    s = core.stats
    assert (s.hops, s.windows, s.silent, s.scored, s.events) == (10, 7, 3, 7, len(events))


def test_real_fbank_end_to_end(speakers: dict[str, list], audio_dir: object) -> None:
    fbank = pytest.importorskip(
        "voiceid.frontend.fbank", reason="voiceid.frontend.fbank (KaldiFbank) not written yet"
    )
    import soundfile as sf

    x, rate = sf.read(next(iter(speakers.values()))[0], dtype="float32")
    assert rate == 16000
    seen: list[tuple[int, ...]] = []

    def embed(feats: np.ndarray) -> np.ndarray:  # fake model: per-bin spread, unit norm
        seen.append(feats.shape)
        y = feats.std(axis=1)
        return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)

    frontend = fbank.KaldiFbank()
    windows = frontend.normalize_window(
        frontend.accept(x[: 16000 * 6]), x[: 16000 * 6]
    )  # one long "enrollment" window
    centroid = embed(windows[None])[0]
    seen.clear()

    class OneScorer:
        names = ("speaker",)

        def scores(self, emb: np.ndarray) -> np.ndarray:
            return emb @ centroid[:, None]

    cfg = StreamConfig(decision=DecisionConfig(enter=0.8))
    events = run_file(x, fbank.KaldiFbank(), embed, OneScorer(), cfg, batch=8)
    # the speech starts a few tenths of a second in: 0.5 s silent, 1.0 s too little voice,
    # then a 1.5 s window and 2.0 s ones (no pause ≥ 0.5 s in this utterance)
    assert {s[1:] for s in seen} == {(148, 80), (198, 80)}
    assert isinstance(events[0], (SpeakerStarted, Scores))
    started = [e for e in events if isinstance(e, SpeakerStarted)]
    assert started and started[0].name == "speaker"
    assert isinstance(events[-1], SpeakerEnded)
