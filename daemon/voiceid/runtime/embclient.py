"""A worker's end of the embedding pipe: several requests in flight, answers by sequence.

:class:`EmbedClient` sends requests (``runtime/wire.py``) to the daemon process and a
reader thread matches each reply to its request by ``seq``. :class:`RemoteEngine` is the
worker hub's engine: it sends every window that is queued as one request (all window
lengths together) without waiting for the previous answer, at most ``max_inflight``
requests out at a time (then it blocks, and windows queue up to ``max_pending``, beyond
which hops are skipped: bounded like the local engine).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from multiprocessing.connection import Connection

import numpy as np
from numpy.typing import NDArray

from voiceid.runtime.wire import Windows, WireError, pack_feats, unpack_reply
from voiceid.stream.engine import BatchEngine, DeliverFn
from voiceid.stream.scheduler import WindowRequest

log = logging.getLogger(__name__)

DEFAULT_INFLIGHT = 4  # requests out per worker; each holds at most max_batch windows

Answer = Callable[[NDArray[np.float32] | None, str | None], None]
"""Called on the reader thread with a request's [n, D] embeddings, or None and the reason."""


class EmbedClient:
    """Requests to the daemon process's model; thread-safe, bounded by ``max_inflight``."""

    def __init__(self, conn: Connection, *, max_inflight: int = DEFAULT_INFLIGHT) -> None:
        self._conn = conn
        self._slots = threading.Semaphore(max_inflight)
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._pending: dict[int, Answer] = {}
        self._seq = itertools.count()
        self._gone: str | None = None  # why no reply can come any more
        self._reader = threading.Thread(target=self._read, name="voiceid-emb-replies", daemon=True)
        self._reader.start()

    def request(self, groups: Sequence[Windows], answer: Answer) -> None:
        """Send groups of windows; ``answer`` gets their embeddings in order, once.

        Blocks while ``max_inflight`` requests are out."""
        self._slots.acquire()
        with self._cond:
            seq = next(self._seq) & 0xFFFFFFFF
            self._pending[seq] = answer
            gone = self._gone
        if gone is not None:
            self._finish(seq, None, gone)
            return
        try:
            data = pack_feats(seq, groups)
            with self._send_lock:
                self._conn.send_bytes(data)
        except WireError as exc:
            self._finish(seq, None, str(exc))
        except (OSError, ValueError) as exc:
            self._finish(seq, None, f"the daemon process is gone ({exc})")

    def embed(self, feats: NDArray[np.float32]) -> NDArray[np.float32]:
        """One blocking round trip: [B, T, F] -> [B, D]; a failure raises ``WireError``."""
        done = threading.Event()
        box: list[NDArray[np.float32] | str | None] = [None]

        def answer(embs: NDArray[np.float32] | None, error: str | None) -> None:
            box[0] = embs if embs is not None else error
            done.set()

        self.request([feats], answer)
        done.wait()
        if not isinstance(box[0], np.ndarray):
            raise WireError(box[0] or "no answer")
        return box[0]

    def drain(self, timeout_s: float) -> bool:
        """Wait until every request is answered; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout_s)

    @property
    def inflight(self) -> int:
        with self._cond:
            return len(self._pending)

    # -- reader thread --------------------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                data = self._conn.recv_bytes()
            except (EOFError, OSError):
                self._fail_all("the daemon process is gone")
                return
            try:
                seq, embs, error = unpack_reply(data)
            except WireError as exc:  # a bug: whose answer it was is unknown, fail them all
                log.error("bad reply from the daemon process: %s", exc)
                self._fail_all(f"bad reply from the daemon process: {exc}", gone=False)
                continue
            self._finish(seq, embs, error)

    def _finish(self, seq: int, embs: NDArray[np.float32] | None, error: str | None) -> None:
        with self._cond:
            answer = self._pending.pop(seq, None)
            self._cond.notify_all()
        if answer is None:
            log.error("reply to unknown request %d ignored", seq)
            return
        self._slots.release()
        try:
            answer(embs, error)
        except Exception:
            log.exception("embedding answer callback failed")

    def _fail_all(self, why: str, *, gone: bool = True) -> None:
        with self._cond:
            if gone:
                self._gone = why
            seqs = list(self._pending)
        for seq in seqs:
            self._finish(seq, None, why)


class RemoteEngine(BatchEngine):
    """The worker hub's engine: queued windows go out as one request, several in flight."""

    def __init__(
        self,
        client: EmbedClient,
        deliver: DeliverFn,
        *,
        max_batch: int,
        max_pending: int,
        name: str = "voiceid-remote",
    ) -> None:
        super().__init__(
            client.embed, deliver, max_batch=max_batch, max_wait_ms=0.0,
            max_pending=max_pending, name=name,
        )  # fmt: skip
        self.client = client

    def close(self, timeout_s: float | None = 10.0) -> None:
        """Send what is queued, then wait for the answers of every request out."""
        t0 = time.monotonic()
        super().close(timeout_s)
        left = None if timeout_s is None else max(0.0, timeout_s - (time.monotonic() - t0))
        if not self.client.drain(1e9 if left is None else left):
            log.error("%d embedding requests unanswered at close", self.client.inflight)

    def _work(self) -> None:
        while (batch := self._collect()) is not None:
            groups: dict[tuple[int, ...], list[WindowRequest]] = {}
            for req in batch:
                groups.setdefault(req.feats.shape, []).append(req)
            ordered = list(groups.values())
            answer = partial(self._answered, ordered, time.perf_counter(), time.time())
            self.client.request([[r.feats for r in g] for g in ordered], answer)

    def _answered(
        self,
        groups: list[list[WindowRequest]],
        t0: float,
        sent_at: float,
        embs: NDArray[np.float32] | None,
        error: str | None,
    ) -> None:
        requests = [r for g in groups for r in g]
        n = len(requests)
        if error is None and (embs is None or embs.shape[0] != n):
            error = f"reply of shape {None if embs is None else embs.shape} for {n} windows"
        self._deliver_safely(self._results(requests, embs, error, t0, sent_at))
