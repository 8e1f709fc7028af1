"""Cross-process batching: blocks of windows from many workers -> one model call.

Each front-end worker process sends its windows as blocks [n, T, F] (one per window
length); :class:`BlockBatcher` (one thread) gathers the blocks of all workers that share
a window length T, up to ``max_batch`` windows or ``max_wait_ms`` after the first (or
until every producer has a block queued), copies them straight into
one reused float32 batch (padded to a power-of-two bucket when ``pad_batches``), runs
the model once and hands every block its rows. No Python object per window: the
per-window cost is one row copy.

Bounded by the producers: a worker has at most ``inflight`` requests out
(``runtime/embclient.py``), each of at most ``max_batch`` windows.
An exception in the model fails only the blocks of that batch (their callback gets the
message); the thread keeps running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from voiceid.stream.engine import EmbedFn, EngineStats, batch_buckets

log = logging.getLogger(__name__)

Done = Callable[[NDArray[np.float32] | None, str | None], None]
"""Called on the batcher thread with a block's [n, D] embeddings, or None and the error."""


@dataclass(slots=True)
class _Block:
    feats: NDArray[np.float32]  # [n, T, F]
    done: Done
    producer: Hashable
    at: float = field(default_factory=time.monotonic)


class BlockBatcher:
    """One model, many producers; ``submit`` never blocks."""

    def __init__(
        self,
        embed: EmbedFn,
        *,
        max_batch: int = 512,
        max_wait_ms: float = 2.0,
        pad_batches: bool = False,
        embed_lock: threading.Lock | None = None,
        producers: int | None = None,
        name: str = "voiceid-blocks",
    ) -> None:
        self._embed = embed
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.buckets = batch_buckets(max_batch) if pad_batches else None
        self._lock = embed_lock or threading.Lock()  # shared with the hub's own engine
        # once every producer has a block queued, waiting longer would only add latency:
        # they send whatever they have at once, so the batch is as full as it gets soon
        self.producers = producers
        self._queued: dict[Hashable, int] = {}  # producer -> blocks queued
        self._queues: dict[int, deque[_Block]] = {}  # window frames T -> blocks, oldest first
        self._waiting = 0  # windows queued
        self._cond = threading.Condition()
        self._closing = False
        self._batches = self._windows = self._errors = self._failed = 0
        self._last_ms, self._last_size = 0.0, 0
        # per block: ms queued here before its batch started; per batch: ms of the model call
        self.wait_ms: deque[float] = deque(maxlen=100_000)
        self.model_ms: deque[float] = deque(maxlen=100_000)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, feats: NDArray[np.float32], done: Done, producer: Hashable = None) -> None:
        """Queue a block [n, T, F] of ``producer``; ``done`` is called once with its result."""
        with self._cond:
            if self._closing:
                done(None, "the daemon is stopping")
                return
            self._queues.setdefault(feats.shape[1], deque()).append(_Block(feats, done, producer))
            self._waiting += len(feats)
            self._queued[producer] = self._queued.get(producer, 0) + 1
            self._cond.notify()

    def close(self, timeout_s: float = 10.0) -> None:
        """Embed what is queued, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout_s)

    def stats(self) -> EngineStats:
        with self._cond:
            return EngineStats(
                batches=self._batches,
                windows=self._windows,
                skipped=0,
                errors=self._errors,
                failed_windows=self._failed,
                deliver_errors=0,
                pending=self._waiting,
                last_batch_ms=self._last_ms,
                last_batch_size=self._last_size,
            )

    # -- thread -------------------------------------------------------------------------
    def _take(self) -> list[_Block] | None:
        """The next batch's blocks (one window length), oldest block first."""
        with self._cond:
            while not self._waiting and not self._closing:
                self._cond.wait()
            if not self._waiting:
                return None
            deadline = time.monotonic() + self.max_wait_s
            while self._waiting < self.max_batch and not self._closing:
                if self.producers is not None and len(self._queued) >= self.producers:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            frames = min((q[0].at, t) for t, q in self._queues.items() if q)[1]
            queue = self._queues[frames]
            taken = [queue.popleft()]  # the oldest goes even if larger than max_batch
            n = len(taken[0].feats)
            while queue and n + len(queue[0].feats) <= self.max_batch:
                taken.append(queue.popleft())
                n += len(taken[-1].feats)
            self._waiting -= n
            now = time.monotonic()
            self.wait_ms.extend((now - b.at) * 1000.0 for b in taken)
            for b in taken:
                left = self._queued[b.producer] - 1
                if left:
                    self._queued[b.producer] = left
                else:
                    del self._queued[b.producer]
            return taken

    def _work(self) -> None:
        buffers: dict[tuple[int, ...], NDArray[np.float32]] = {}
        while (blocks := self._take()) is not None:
            n = sum(len(b.feats) for b in blocks)
            size = n if self.buckets is None else next((b for b in self.buckets if b >= n), n)
            shape = (size, *blocks[0].feats.shape[1:])
            x = buffers.get(shape)
            if x is None:
                x = buffers[shape] = np.zeros(shape, np.float32)
            row = 0
            for b in blocks:  # straight into the batch: no stack, no concatenate
                x[row : row + len(b.feats)] = b.feats
                row += len(b.feats)
            x[n:] = 0.0  # padding rows only
            self._run(blocks, x, n)

    def _run(self, blocks: list[_Block], x: NDArray[np.float32], n: int) -> None:
        t0 = time.perf_counter()
        error: str | None = None
        y: NDArray[np.float32] | None = None
        try:
            with self._lock:
                y = np.asarray(self._embed(x), dtype=np.float32)
            if y.ndim != 2 or y.shape[0] != len(x):
                error = f"embed returned shape {y.shape} for a batch of {len(x)}"
        except Exception as exc:
            log.exception("embed failed on a batch of %d windows %s", n, x.shape[1:])
            error = f"{type(exc).__name__}: {exc}"
        ms = (time.perf_counter() - t0) * 1000.0
        self.model_ms.append(ms)
        with self._cond:
            self._batches += 1
            self._last_ms, self._last_size = ms, n
            if error is None:
                self._windows += n
            else:
                self._errors += 1
                self._failed += n
        row = 0
        for b in blocks:
            k = len(b.feats)
            try:
                if error is None and y is not None:
                    b.done(y[row : row + k], None)
                else:
                    b.done(None, error)
            except Exception:
                log.exception("block callback failed")
            row += k
