"""Batch engine: windows from all streams → one model call per batch, on a worker thread.

``submit`` is non-blocking and bounded: when ``max_pending`` windows are already queued
it returns False (the caller counts a skipped hop) instead of queueing without limit.
The worker waits for the first request, then collects more for at most ``max_wait_ms``
or until ``max_batch`` are there, groups them by window shape [T, F] (so windows of
different lengths never share a batch), stacks [B, T, F], optionally pads B up to a
power-of-two bucket (``pad_batches``, so accelerator shapes repeat), and calls
``embed`` ([B, T, F] → [B, D], unit-norm). Results reach the caller through
``deliver(results)``, called on the worker thread once per collected batch (the asyncio
adapter passes a function that hops to the loop with ``loop.call_soon_threadsafe``).

An exception in ``embed`` fails only that batch (its results carry ``error``, counted);
the worker keeps running. ``run_now`` does the same work synchronously (file mode).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from voiceid.errors import ConfigError
from voiceid.stream.scheduler import WindowRequest

log = logging.getLogger(__name__)

EmbedFn = Callable[[NDArray[np.float32]], NDArray[np.floating]]
"""[B, T, F] float32 → [B, D] unit-norm embeddings."""


@dataclass(frozen=True, slots=True, eq=False)
class EmbedResult:
    """One window's outcome: ``embedding`` float32 [D], or ``error`` (a one-line message).

    ``sent_at`` / ``done_at``: unix seconds when its batch went to the model and came back
    (0.0 when unknown): with ``request.fed_at`` they split a hop's latency into stages."""

    request: WindowRequest
    embedding: NDArray[np.float32] | None
    error: str | None = None
    sent_at: float = 0.0
    done_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.embedding is not None


DeliverFn = Callable[[Sequence[EmbedResult]], None]


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Counters since the engine was created."""

    batches: int  # embed calls that succeeded or failed
    windows: int  # windows embedded successfully
    skipped: int  # submits refused (queue full or engine closed)
    errors: int  # embed calls that raised or returned a bad shape
    failed_windows: int  # windows in those calls
    deliver_errors: int  # deliver callbacks that raised
    pending: int  # windows queued now
    last_batch_ms: float  # duration of the last embed call (ms)
    last_batch_size: int  # windows in the last embed call (before padding)


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Padded batch sizes: 1, 2, 4, ... below ``max_batch``, then ``max_batch``."""
    sizes = [1 << i for i in range(max_batch.bit_length()) if (1 << i) < max_batch]
    return (*sizes, max_batch)


class BatchEngine:
    """Shared by all streams; one worker thread, started on the first ``submit``."""

    def __init__(
        self,
        embed: EmbedFn,
        deliver: DeliverFn | None = None,
        *,
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        max_pending: int | None = None,
        pad_batches: bool = False,
        name: str = "voiceid-embed",
    ) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch must be ≥ 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must be ≥ 0, got {max_wait_ms}")
        self.max_pending = 4 * max_batch if max_pending is None else max_pending
        if self.max_pending < 1:
            raise ConfigError(f"max_pending must be ≥ 1, got {self.max_pending}")
        self._embed = embed
        self._deliver = deliver
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.buckets = batch_buckets(max_batch) if pad_batches else None
        self._name = name
        self._queue: deque[WindowRequest] = deque()
        self._cond = threading.Condition()
        self.embed_lock = threading.Lock()  # one model call at a time (worker, run_now, others)
        self._closing = False
        self._thread: threading.Thread | None = None
        self._batches = self._windows = self._skipped = self._errors = 0
        self._failed_windows = self._deliver_errors = self._last_size = 0
        self._last_ms = 0.0

    # -- public ------------------------------------------------------------------------

    def submit(self, request: WindowRequest) -> bool:
        """Queue a window; False (counted as skipped) when the queue is full or closed."""
        if self._deliver is None:
            raise ConfigError("BatchEngine.submit needs a deliver callback", hint="use run_now")
        with self._cond:
            if self._closing or len(self._queue) >= self.max_pending:
                self._skipped += 1
                return False
            self._queue.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    def run_now(self, requests: Sequence[WindowRequest]) -> list[EmbedResult]:
        """Embed ``requests`` synchronously in the caller's thread; results in input order."""
        results: list[EmbedResult] = []
        for start in range(0, len(requests), self.max_batch):
            results.extend(self._process(list(requests[start : start + self.max_batch])))
        order = {id(r): i for i, r in enumerate(requests)}
        results.sort(key=lambda res: order[id(res.request)])
        return results

    def close(self, timeout_s: float | None = 10.0) -> None:
        """Stop accepting windows, embed and deliver those queued, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def stats(self) -> EngineStats:
        """A consistent snapshot of the counters."""
        with self._cond:
            return EngineStats(
                batches=self._batches,
                windows=self._windows,
                skipped=self._skipped,
                errors=self._errors,
                failed_windows=self._failed_windows,
                deliver_errors=self._deliver_errors,
                pending=len(self._queue),
                last_batch_ms=self._last_ms,
                last_batch_size=self._last_size,
            )

    def __enter__(self) -> BatchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker ------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            self._deliver_safely(self._process(batch))

    def _deliver_safely(self, results: list[EmbedResult]) -> None:
        try:
            assert self._deliver is not None
            self._deliver(results)
        except Exception:
            log.exception("deliver callback failed for %d results", len(results))
            with self._cond:
                self._deliver_errors += 1

    def _collect(self) -> list[WindowRequest] | None:
        """Wait for work; None when closing with an empty queue."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = time.monotonic() + self.max_wait_s
            while len(self._queue) < self.max_batch and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(self.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def _process(self, batch: list[WindowRequest]) -> list[EmbedResult]:
        groups: dict[tuple[int, ...], list[WindowRequest]] = {}
        for req in batch:
            groups.setdefault(req.feats.shape, []).append(req)
        results: list[EmbedResult] = []
        for group in groups.values():
            results.extend(self._embed_group(group))
        return results

    def _embed_group(self, group: list[WindowRequest]) -> list[EmbedResult]:
        n = len(group)
        x = np.stack([r.feats for r in group]).astype(np.float32, copy=False)
        size = n if self.buckets is None else next(b for b in self.buckets if b >= n)
        if size > n:
            x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), dtype=np.float32)])
        t0 = time.perf_counter()
        sent_at = time.time()
        error: str | None = None
        y: NDArray[np.float32] | None = None
        try:
            with self.embed_lock:
                y = np.asarray(self._embed(x), dtype=np.float32)
            if y.ndim != 2 or y.shape[0] != size:
                error = f"embed returned shape {y.shape} for a batch of {size}"
        except Exception as exc:
            log.exception("embed failed on a batch of %d windows %s", n, x.shape[1:])
            error = f"{type(exc).__name__}: {exc}"
        return self._results(group, None if error else y, error, t0, sent_at)

    def _results(
        self,
        requests: list[WindowRequest],
        embs: NDArray[np.float32] | None,
        error: str | None,
        t0: float,
        sent_at: float,
    ) -> list[EmbedResult]:
        """Count one model call (started at ``t0``, perf counter) and give its results."""
        n = len(requests)
        with self._cond:
            self._batches += 1
            self._last_ms, self._last_size = (time.perf_counter() - t0) * 1000.0, n
            if error is None:
                self._windows += n
            else:
                self._errors += 1
                self._failed_windows += n
        done_at = time.time()
        if error is not None or embs is None:
            return [EmbedResult(r, None, error, sent_at, done_at) for r in requests]
        return [
            EmbedResult(r, embs[i].copy(), None, sent_at, done_at) for i, r in enumerate(requests)
        ]
