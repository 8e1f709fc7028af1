"""EmbedClient / RemoteEngine (worker side) and Gather (daemon side) over a real pipe."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection

import numpy as np
import pytest
from numpy.typing import NDArray

from voiceid.runtime.embclient import EmbedClient, RemoteEngine
from voiceid.runtime.wire import WireError, pack_embs, pack_error, unpack_feats, unpack_reply
from voiceid.runtime.workers import Gather
from voiceid.stream.engine import EmbedResult
from voiceid.stream.scheduler import WindowRequest


def emb(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Embedding = (first feature, 1): rows can be traced."""
    return np.stack([x[:, 0, 0], np.ones(len(x), np.float32)], axis=1)


def win(first: float, frames: int = 10) -> NDArray[np.float32]:
    x = np.zeros((frames, 4), np.float32)
    x[0, 0] = first
    return x


class Daemon:
    """The other end of the pipe: collects requests; ``answer`` replies in any order."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.requests: dict[int, list[NDArray[np.float32]]] = {}
        self.arrived = threading.Semaphore(0)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.conn.recv_bytes()
            except (EOFError, OSError):
                return
            seq, groups = unpack_feats(data)
            self.requests[seq] = [g.copy() for g in groups]
            self.arrived.release()

    def wait(self, n: int) -> list[int]:
        for _ in range(n):
            assert self.arrived.acquire(timeout=5)
        return sorted(self.requests)

    def answer(self, seq: int, error: str | None = None) -> None:
        if error is not None:
            self.conn.send_bytes(pack_error(seq, error))
        else:
            self.conn.send_bytes(
                pack_embs(seq, np.concatenate([emb(g) for g in self.requests[seq]]))
            )


@pytest.fixture
def pipe() -> Iterator[tuple[Connection, Connection]]:
    before = set(threading.enumerate())
    here, there = mp.Pipe()
    yield here, there
    # wake every reader thread (EOF) and let it end before the descriptors are closed:
    # a reader still inside a read could otherwise take the next test's pipe, same number
    for conn in (here, there):
        if not conn.closed:
            with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)
    for t in set(threading.enumerate()) - before:
        t.join(5)
    here.close()
    there.close()


def collect() -> tuple[list[tuple[object, object]], threading.Semaphore, Callable[..., None]]:
    got: list[tuple[object, object]] = []
    sem = threading.Semaphore(0)

    def answer(embs: NDArray[np.float32] | None, error: str | None) -> None:
        got.append((None if embs is None else embs[:, 0].tolist(), error))
        sem.release()

    return got, sem, answer


def test_requests_in_flight_are_answered_out_of_order_and_matched(pipe) -> None:  # type: ignore[no-untyped-def]
    here, there = pipe
    daemon = Daemon(there)
    client = EmbedClient(here, max_inflight=4)
    got, sem, answer = collect()
    client.request([[win(1), win(2)], [win(3, frames=12)]], answer)  # two lengths, one request
    client.request([[win(7)]], answer)
    first, second = daemon.wait(2)
    assert [g.shape for g in daemon.requests[first]] == [(2, 10, 4), (1, 12, 4)]
    daemon.answer(second)  # the later request is answered first
    assert sem.acquire(timeout=5)
    daemon.answer(first)
    assert sem.acquire(timeout=5)
    assert got == [([7.0], None), ([1.0, 2.0, 3.0], None)]
    assert client.drain(1) and client.inflight == 0


def test_at_most_max_inflight_requests_are_out(pipe) -> None:  # type: ignore[no-untyped-def]
    here, there = pipe
    daemon = Daemon(there)
    client = EmbedClient(here, max_inflight=2)
    got, sem, answer = collect()
    third = threading.Thread(target=lambda: [client.request([[win(i)]], answer) for i in range(3)])
    third.start()
    seqs = daemon.wait(2)
    assert not daemon.arrived.acquire(timeout=0.3)  # the third waits for a free slot
    daemon.answer(seqs[0])
    (last,) = [s for s in daemon.wait(1) if s not in seqs]
    third.join(5)
    daemon.answer(seqs[1])
    daemon.answer(last)
    for _ in range(3):
        assert sem.acquire(timeout=5)
    assert sorted(v for v, _ in got) == [[0.0], [1.0], [2.0]]


def test_a_failed_request_and_a_dead_daemon_give_errors_not_hangs(pipe) -> None:  # type: ignore[no-untyped-def]
    here, there = pipe  # (no reader thread on ``there``: closing it must end the pipe)
    client = EmbedClient(here, max_inflight=2)
    got, sem, answer = collect()
    client.request([[win(1)]], answer)
    seq, _ = unpack_feats(there.recv_bytes())
    there.send_bytes(pack_error(seq, "RuntimeError: CUDA out of memory"))
    assert sem.acquire(timeout=5)
    assert got[-1] == (None, "RuntimeError: CUDA out of memory")
    client.request([[win(2)]], answer)
    there.recv_bytes()
    there.close()  # the daemon process dies with a request out
    assert sem.acquire(timeout=5)
    assert got[-1] == (None, "the daemon process is gone")
    with pytest.raises(WireError, match="the daemon process is gone"):
        client.embed(np.zeros((1, 10, 4), np.float32))  # later ones fail at once
    assert client.inflight == 0


def request(seq: int, frames: int) -> WindowRequest:
    return WindowRequest("s", seq, seq * 8000, seq * 0.5, win(seq, frames), 0.0, 2.0)


def test_remote_engine_sends_queued_windows_as_one_request_per_batch(pipe) -> None:  # type: ignore[no-untyped-def]
    here, there = pipe
    daemon = Daemon(there)
    delivered: list[Sequence[EmbedResult]] = []
    done = threading.Semaphore(0)

    def deliver(results: Sequence[EmbedResult]) -> None:
        delivered.append(results)
        done.release()

    engine = RemoteEngine(EmbedClient(here, max_inflight=2), deliver, max_batch=8, max_pending=64)
    with engine._cond:  # queue them all before the engine thread looks: one batch
        for i, frames in enumerate([10, 12, 10], start=1):
            assert engine.submit(request(i, frames))
    (seq,) = daemon.wait(1)
    assert [g.shape[:2] for g in daemon.requests[seq]] == [(2, 10), (1, 12)]
    daemon.answer(seq)
    assert done.acquire(timeout=5)
    ((r1, r3, r2),) = delivered  # rows in request order: grouped by length
    assert [r.request.seq for r in (r1, r2, r3)] == [1, 2, 3]
    assert all(r.ok and r.embedding is not None and r.embedding[0] == r.request.seq
               for r in (r1, r2, r3))  # fmt: skip
    assert engine.submit(request(4, 10))
    (seq4,) = [s for s in daemon.wait(1) if s != seq]
    daemon.answer(seq4, error="boom")
    assert done.acquire(timeout=5)
    assert delivered[-1][0].error == "boom"
    engine.close()
    s = engine.stats()
    assert (s.batches, s.windows, s.errors, s.failed_windows) == (2, 3, 1, 1)


def test_gather_replies_once_in_group_order_or_fails_whole() -> None:
    sent: list[bytes] = []
    g = Gather(4, 2, sent.append)
    g.got(1, np.array([[3.0, 1.0]], np.float32), None)
    assert sent == []
    g.got(0, np.array([[1.0, 1.0], [2.0, 1.0]], np.float32), None)
    seq, embs, error = unpack_reply(sent[0])
    assert (seq, error) == (4, None) and np.asarray(embs)[:, 0].tolist() == [1.0, 2.0, 3.0]
    g = Gather(5, 2, sent.append)
    g.got(0, None, "RuntimeError: boom")
    g.got(1, np.ones((1, 2), np.float32), None)
    assert len(sent) == 2 and unpack_reply(sent[1]) == (5, None, "RuntimeError: boom")
