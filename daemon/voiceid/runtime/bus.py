"""Event fan-out: every subscriber gets its own bounded queue; a slow one is cut off.

Publishing never blocks and never grows memory without bound: when a subscriber's
queue is full it is closed with ``overflowed = True`` and its consumer is told so.
Loop thread only (no locks).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from voiceid.stream.events import Event

DEFAULT_QUEUE = 256  # events per subscriber


class Subscription:
    """One consumer's view of the bus; iterate with ``async for``."""

    def __init__(self, bus: EventBus, stream: str | None, maxsize: int) -> None:
        self._bus = bus
        self.stream = stream  # None: all streams
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize + 1)
        self.maxsize = maxsize
        self.closed = False
        self.overflowed = False
        self.delivered = 0

    def _offer(self, event: Event) -> None:
        if self.closed:
            return
        if self._queue.qsize() >= self.maxsize:
            self.overflowed = True
            self.close()
            return
        self._queue.put_nowait(event)

    def close(self) -> None:
        """Stop receiving; the iterator ends after the events already queued."""
        if not self.closed:
            self.closed = True
            self._bus._drop(self)
            self._queue.put_nowait(None)

    async def get(self) -> Event | None:
        """Next event, or None once closed."""
        item = await self._queue.get()
        if item is not None:
            self.delivered += 1
        return item

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Event]:
        while (item := await self.get()) is not None:
            yield item


class EventBus:
    """Publish events to subscribers filtered by stream."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self.published = 0
        self.dropped_subscribers = 0

    def subscribe(self, stream: str | None = None, maxsize: int = DEFAULT_QUEUE) -> Subscription:
        sub = Subscription(self, stream, maxsize)
        self._subs.append(sub)
        return sub

    def publish(self, events: Sequence[Event]) -> None:
        for event in events:
            self.published += 1
            for sub in tuple(self._subs):
                if sub.stream is None or sub.stream == event.stream:
                    sub._offer(event)

    def _drop(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            if sub.overflowed:
                self.dropped_subscribers += 1

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def close(self) -> None:
        for sub in tuple(self._subs):
            sub.close()
