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
        ("speaker_started", "A", 3.0),  # first full window at 2.5 s, dwell 2 hops
        # B from 4.0; windows are 2 s long and the EMA lags: B ≥ enter at 6.5 and 7.0
        ("speaker_changed", "B", 7.0),
        ("speaker_ended", "B", 11.0),  # the -20 dBFS voice: B's score sinks below exit
        ("unknown_speaker", "B", 11.0),  # nobody ≥ exit (both ≈ 0.71); B a bit closer
        # the silence from 12.0 ends nothing: nobody is current
    ]
    assert [e.id for e in events] == [f"file:{i}" for i in range(1, 5)]


def test_run_file_silence_never_names_anyone() -> None:
    for x in (silence(10.0), noise(10.0, -60)):
        cfg = StreamConfig(decision=DecisionConfig(enter=-1.0))  # even a threshold of -1
        assert run_file(x, FakeFrontEnd(), level_embed, AB_SCORER, cfg) == []


def test_close_ends_the_current_speaker_and_silence_ends_it_live() -> None:
    events = run_file(noise(5.0, -10), FakeFrontEnd(), level_embed, AB_SCORER, CONFIG)
    assert kinds(events) == [("speaker_started", "A", 3.0), ("speaker_ended", "A", 5.0)]
    end = events[-1]
    assert isinstance(end, SpeakerEnded) and end.reason == "closed" and end.duration_s == 2.0

    x = np.concatenate([noise(5.0, -10), silence(3.0)])
    events = run_file(x, FakeFrontEnd(), level_embed, AB_SCORER, CONFIG)
    end = events[-1]
    # windows hold ≥ 1 s of voice until 6.0; silent hops 6.5, 7.0 → ended at 7.0, and
    # the duration runs from the start (3.0) to the last voiced hop (6.0)
    assert kinds(events) == [("speaker_started", "A", 3.0), ("speaker_ended", "A", 7.0)]
    assert isinstance(end, SpeakerEnded) and end.reason == "silence"
    assert end.duration_s == 3.0


def test_latency_comes_from_the_injected_clock() -> None:
    clock = FakeClock(100.0)
    core = StreamCore("mic", FakeFrontEnd(), CONFIG, clock=clock)
    reqs: list[WindowRequest] = []
    for i in range(7):  # 3.5 s in 0.5 s chunks, fed at 100, 101, ...
        clock.t = 100.0 + i
        reqs += [h for h in core.feed(noise(0.5, -10, seed=i)) if isinstance(h, WindowRequest)]
    assert [r.seq for r in reqs] == [5, 6, 7] and [r.fed_at for r in reqs] == [104, 105, 106]
    clock.t = 106.25
    assert core.on_embedding(reqs[0], level_embed(reqs[0].feats[None])[0], AB_SCORER) == []
    clock.t = 106.5
    (event,) = core.on_embedding(reqs[1], level_embed(reqs[1].feats[None])[0], AB_SCORER)
    assert isinstance(event, SpeakerStarted) and event.name == "A"
    assert event.latency_ms == pytest.approx(1500.0)  # hop 6 was fed at 105.0
    assert event.wall_time == 106.5 and event.stream_time_s == 3.0 and event.id == "mic:1"


def test_out_of_order_results_are_decided_in_order() -> None:
    core = StreamCore("s", FakeFrontEnd(), CONFIG, clock=FakeClock())
    hops = core.feed(np.concatenate([noise(4.0, -10), silence(0.1)]))
    reqs = [h for h in hops if isinstance(h, WindowRequest)]
    assert [r.seq for r in reqs] == [5, 6, 7, 8]
    emb = {r.seq: level_embed(r.feats[None])[0] for r in reqs}
    assert core.on_embedding(reqs[1], emb[6], AB_SCORER) == []  # waits for hop 5
    assert core.on_embedding(reqs[3], emb[8], AB_SCORER) == []
    events = core.on_embedding(reqs[0], emb[5], AB_SCORER)  # decides 5 and 6
    assert kinds(events) == [("speaker_started", "A", 3.0)]
    assert core.unresolved == 2  # 7 (waiting) and 8 (done, behind it)
    assert core.on_skipped(reqs[2]) == []  # engine refused 7: no scores, still voice
    assert core.unresolved == 0
    assert core.stats.skipped == 1 and core.stats.scored == 3
    assert core.on_embedding(reqs[2], emb[7], AB_SCORER) == []  # too late: ignored
    assert core.stats.late == 1


def test_silent_hops_wait_behind_pending_windows() -> None:
    core = StreamCore("s", FakeFrontEnd(), CONFIG, clock=FakeClock())
    held: WindowRequest | None = None
    events: list[Event] = []
    x = np.concatenate([noise(4.5, -10), silence(3.0)])
    for h in core.feed(x):
        if isinstance(h, SilentHop):
            events += core.on_silent(h)
        elif h.seq == 8:  # the 4.0 s window: its result is slow
            held = h
        else:
            events += core.on_embedding(h, level_embed(h.feats[None])[0], AB_SCORER)
    # Windows until 5.5 s (≥ 1 s of voice), silent from 6.0. The speaker started at 3.0
    # but cannot end before the window held at 4.0 is decided.
    assert kinds(events) == [("speaker_started", "A", 3.0)]
    assert held is not None and core.unresolved == 8
    events = core.on_embedding(held, level_embed(held.feats[None])[0], AB_SCORER)
    assert kinds(events) == [("speaker_ended", "A", 6.5)]  # 1 s after the last voiced hop
    assert core.unresolved == 0


def test_max_unresolved_gives_up_on_lost_results() -> None:
    cfg = StreamConfig(scheduler=CONFIG.scheduler, decision=CONFIG.decision, max_unresolved=3)
    core = StreamCore("s", FakeFrontEnd(), cfg, clock=FakeClock())
    hops = core.feed(noise(5.0, -10))  # hop 1 silent, requests 5..10; none answered
    assert core.unresolved == 3
    assert core.stats.dropped == 3 and core.stats.windows == 6 and core.stats.hops == 10
    assert core.close() == []
    assert core.stats.dropped == 6
    with pytest.raises(ProtocolError):
        core.feed(silence(0.1))
    assert len(hops) == 7


def test_scores_events_and_stats() -> None:
    cfg = StreamConfig(
        scheduler=CONFIG.scheduler, decision=DecisionConfig(enter=0.8, scores_interval_s=1.0)
    )
    x = np.concatenate([silence(1.0), noise(4.0, -10)])
    clock = FakeClock()
    core = StreamCore("s", FakeFrontEnd(), cfg, clock=clock)
    events: list[Event] = []
    for i in range(0, x.size, 320):
        for h in core.feed(x[i : i + 320]):
            if isinstance(h, SilentHop):
                events += core.on_silent(h)
            else:
                events += core.on_embedding(h, level_embed(h.feats[None])[0], AB_SCORER)
    events += core.close()
    scores = [e for e in events if isinstance(e, Scores)]
    # voice from 1.0 s: hops 0.5-1.5 silent, 2.0 warming up, windows from 2.5 on
    assert [e.stream_time_s for e in scores] == [2.5, 3.5, 4.5]
    assert scores[0].top[0][0] == "A" and len(scores[0].top) == 2
    s = core.stats
    assert (s.hops, s.windows, s.silent, s.scored, s.events) == (10, 6, 3, 6, len(events))


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
    assert {s[1:] for s in seen} == {(200, 80)}
    assert isinstance(events[0], (SpeakerStarted, Scores))
    started = [e for e in events if isinstance(e, SpeakerStarted)]
    assert started and started[0].name == "speaker"
    assert isinstance(events[-1], SpeakerEnded)
