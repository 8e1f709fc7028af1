"""BlockBatcher: blocks of many producers -> one model call per window length."""

from __future__ import annotations

import threading

import numpy as np
from numpy.typing import NDArray

from voiceid.runtime.blocks import BlockBatcher


class Model:
    """Embedding = the window's first feature (so rows can be traced), unit D=2."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[tuple[int, ...]] = []
        self.fail_on = fail_on

    def __call__(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        self.calls.append(x.shape)
        if self.fail_on is not None and (x[:, 0, 0] == self.fail_on).any():
            raise RuntimeError("boom")
        return np.stack([x[:, 0, 0], np.ones(len(x), np.float32)], axis=1)


def block(first: float, n: int, frames: int = 10) -> NDArray[np.float32]:
    x = np.zeros((n, frames, 4), np.float32)
    x[:, 0, 0] = first + np.arange(n)
    return x


def run(
    batcher: BlockBatcher, blocks: list[NDArray[np.float32]], producers: list[str] | None = None
) -> list[tuple[object, object]]:
    out: list[tuple[object, object]] = [(None, None)] * len(blocks)
    done = threading.Semaphore(0)

    def callback(i: int):  # type: ignore[no-untyped-def]
        def on(y: NDArray[np.float32] | None, err: str | None) -> None:
            out[i] = (None if y is None else y.copy(), err)
            done.release()

        return on

    for i, b in enumerate(blocks):
        batcher.submit(b, callback(i), producer=None if producers is None else producers[i])
    for _ in blocks:
        assert done.acquire(timeout=5)
    return out


def test_blocks_of_several_producers_share_one_call_and_get_their_rows() -> None:
    model = Model()
    b = BlockBatcher(model, max_batch=16, max_wait_ms=200)
    try:
        blocks = [block(0, 3), block(10, 5), block(20, 2, frames=12), block(30, 4)]
        out = run(b, blocks)
        for blk, (y, err) in zip(blocks, out, strict=True):
            assert err is None
            np.testing.assert_array_equal(np.asarray(y)[:, 0], blk[:, 0, 0])
        # the three blocks of 10 frames went together; the 12-frame one alone
        assert sorted(model.calls) == [(2, 12, 4), (12, 10, 4)]
        assert b.stats().windows == 14
    finally:
        b.close()


def test_padding_to_buckets_and_failure_isolation() -> None:
    model = Model(fail_on=50)
    b = BlockBatcher(model, max_batch=8, max_wait_ms=0, pad_batches=True)
    try:
        ((y, err),) = run(b, [block(0, 3)])
        assert err is None and np.asarray(y).shape == (3, 2)
        assert model.calls[-1] == (4, 10, 4)  # 3 windows padded to the bucket of 4
        ((y, err),) = run(b, [block(50, 2)])
        assert y is None and err == "RuntimeError: boom"
        ((y, err),) = run(b, [block(60, 2)])  # the thread goes on
        assert err is None
        s = b.stats()
        assert (s.errors, s.failed_windows) == (1, 2)
    finally:
        b.close()


def test_a_block_larger_than_max_batch_still_runs_and_close_refuses_new_ones() -> None:
    model = Model()
    b = BlockBatcher(model, max_batch=4, max_wait_ms=0)
    ((y, err),) = run(b, [block(0, 6)])
    assert err is None and np.asarray(y).shape == (6, 2)
    b.close()
    ((y, err),) = run(b, [block(0, 1)])
    assert y is None and err == "the daemon is stopping"


def test_waiting_ends_once_every_producer_has_a_block_queued() -> None:
    model = Model()
    b = BlockBatcher(model, max_batch=64, max_wait_ms=60_000, producers=2)
    try:
        got = threading.Event()
        b.submit(block(0, 2), lambda y, err: None, producer="a")
        b.submit(block(10, 3), lambda y, err: None, producer="a")  # a again: still waiting
        assert not got.wait(0.3) and model.calls == []
        b.submit(block(20, 1), lambda y, err: got.set(), producer="b")
        assert got.wait(5)  # long before max_wait_ms
        assert model.calls == [(6, 10, 4)]
    finally:
        b.close()
