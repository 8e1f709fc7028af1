from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest

from voiceid.errors import ConfigError
from voiceid.stream.engine import BatchEngine, EmbedResult, batch_buckets
from voiceid.stream.scheduler import WindowRequest


def req(seq: int, t: int = 200, f: int = 4, mark: float = 0.0) -> WindowRequest:
    feats = np.full((t, f), mark, dtype=np.float32)
    feats[0, 1] = seq
    return WindowRequest("s", seq, seq * 8000, seq * 0.5, feats, 0.0, 2.0)


class RecordingEmbed:
    """[B, T, F] → [B, 3]; records shapes; raises on windows marked 999; can be held."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.shapes.append(x.shape)
        self.entered.set()
        assert self.release.wait(10)
        if (x[:, 0, 0] == 999).any():
            raise RuntimeError("bad window")
        y = np.stack([x[:, 0, 1], np.ones(len(x)), np.zeros(len(x))], axis=1)
        return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)


class Collector:
    def __init__(self) -> None:
        self.results: list[EmbedResult] = []
        self.calls = 0
        self.cond = threading.Condition()

    def __call__(self, results: Sequence[EmbedResult]) -> None:
        with self.cond:
            self.results.extend(results)
            self.calls += 1
            self.cond.notify_all()

    def wait_for(self, n: int) -> list[EmbedResult]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.results) >= n, timeout=10)
            return list(self.results)


def test_concurrent_submissions_make_one_batch() -> None:
    embed, got = RecordingEmbed(), Collector()
    engine = BatchEngine(embed, got, max_batch=8, max_wait_ms=5000)
    threads = [
        threading.Thread(target=lambda k=k: [engine.submit(req(2 * k + i)) for i in range(2)])
        for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = got.wait_for(8)
    engine.close()
    assert embed.shapes == [(8, 200, 4)]  # full batch long before max_wait
    assert got.calls == 1
    assert sorted(r.request.seq for r in results) == list(range(8))
    for r in results:
        assert r.ok and r.embedding is not None and r.embedding.shape == (3,)
        assert r.embedding[0] == pytest.approx(r.request.seq / np.hypot(r.request.seq, 1))
    s = engine.stats()
    assert (s.batches, s.windows, s.skipped, s.errors, s.last_batch_size) == (1, 8, 0, 0, 8)


def test_max_wait_sends_a_partial_batch() -> None:
    embed, got = RecordingEmbed(), Collector()
    with BatchEngine(embed, got, max_batch=64, max_wait_ms=1) as engine:
        assert engine.submit(req(1))
        got.wait_for(1)
    assert embed.shapes == [(1, 200, 4)]


def test_windows_of_different_lengths_are_batched_apart() -> None:
    embed, got = RecordingEmbed(), Collector()
    engine = BatchEngine(embed, got, max_batch=4, max_wait_ms=5000)
    for i, t in enumerate([200, 100, 200, 100]):
        engine.submit(req(i, t=t))
    got.wait_for(4)
    engine.close()
    assert sorted(embed.shapes) == [(2, 100, 4), (2, 200, 4)]


def test_pad_batches_to_buckets() -> None:
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert batch_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    embed = RecordingEmbed()
    engine = BatchEngine(embed, max_batch=64, pad_batches=True)
    results = engine.run_now([req(i) for i in range(5)])
    assert embed.shapes == [(8, 200, 4)]
    assert [r.request.seq for r in results] == list(range(5)) and all(r.ok for r in results)


def test_back_pressure_refuses_and_counts_skips() -> None:
    embed, got = RecordingEmbed(), Collector()
    embed.release.clear()
    engine = BatchEngine(embed, got, max_batch=1, max_wait_ms=0, max_pending=2)
    assert engine.submit(req(0))
    assert embed.entered.wait(10)  # the worker holds window 0 inside embed
    assert engine.submit(req(1)) and engine.submit(req(2))  # queue: 2 = max_pending
    assert not engine.submit(req(3))
    assert not engine.submit(req(4))
    assert engine.stats().skipped == 2 and engine.stats().pending == 2
    embed.release.set()
    got.wait_for(3)
    engine.close()
    assert sorted(r.request.seq for r in got.results) == [0, 1, 2]
    assert engine.stats().windows == 3


def test_an_embed_exception_fails_only_its_batch() -> None:
    embed, got = RecordingEmbed(), Collector()
    engine = BatchEngine(embed, got, max_batch=2, max_wait_ms=5000)
    engine.submit(req(0, mark=999))
    engine.submit(req(1))
    got.wait_for(2)
    engine.submit(req(2))
    engine.submit(req(3))
    results = got.wait_for(4)
    engine.close()
    by_seq = {r.request.seq: r for r in results}
    assert not by_seq[0].ok and not by_seq[1].ok
    assert by_seq[0].error == "RuntimeError: bad window"
    assert by_seq[2].ok and by_seq[3].ok
    s = engine.stats()
    assert (s.batches, s.windows, s.errors, s.failed_windows) == (2, 2, 1, 2)


def test_bad_embed_output_shape_is_an_error() -> None:
    engine = BatchEngine(lambda x: np.zeros((1, 3), dtype=np.float32))
    results = engine.run_now([req(0), req(1)])
    assert [r.ok for r in results] == [False, False]
    assert "shape" in (results[0].error or "")


def test_a_failing_deliver_does_not_kill_the_worker() -> None:
    embed, got = RecordingEmbed(), Collector()
    calls = []

    def deliver(results: Sequence[EmbedResult]) -> None:
        calls.append(len(results))
        if len(calls) == 1:
            raise RuntimeError("loop closed")
        got(results)

    engine = BatchEngine(embed, deliver, max_batch=1, max_wait_ms=0)
    engine.submit(req(0))
    engine.submit(req(1))
    got.wait_for(1)
    engine.close()
    assert engine.stats().deliver_errors == 1 and len(calls) == 2


def test_close_drains_queued_windows_then_refuses() -> None:
    embed, got = RecordingEmbed(), Collector()
    engine = BatchEngine(embed, got, max_batch=4, max_wait_ms=60_000)
    for i in range(6):
        assert engine.submit(req(i))
    engine.close()  # does not wait out max_wait
    assert len(got.results) == 6
    assert not engine.submit(req(9))
    assert engine._thread is not None and not engine._thread.is_alive()


def test_run_now_keeps_input_order_and_needs_no_thread() -> None:
    embed = RecordingEmbed()
    engine = BatchEngine(embed, max_batch=3)
    reqs = [req(i, t=200 if i % 2 else 100) for i in range(7)]
    results = engine.run_now(reqs)
    assert [r.request.seq for r in results] == list(range(7))
    assert engine._thread is None
    with pytest.raises(ConfigError):
        engine.submit(reqs[0])  # no deliver callback


def test_bad_config() -> None:
    with pytest.raises(ConfigError):
        BatchEngine(RecordingEmbed(), max_batch=0)
    with pytest.raises(ConfigError):
        BatchEngine(RecordingEmbed(), max_pending=0)
