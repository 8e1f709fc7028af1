"""A token bucket per client address, for the REST API (``security.http_rate_per_min``).

Each client may burst up to ``rate_per_min`` requests, then gets ``rate_per_min / 60``
per second back. The table of buckets is bounded (``max_clients``, least recently used
evicted: an evicted client simply starts again with a full bucket). IPv6 clients are
grouped by their /64 network - one host usually owns a whole /64, and counting each
address separately would let it dodge the limit.

Pure: no I/O, an injected monotonic clock.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

MAX_CLIENTS: Final = 10_000


def client_key(address: str | None) -> str:
    """The bucket of a client address: IPv4 as is, IPv6 by its /64 network."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # a unix socket path or a test client's name
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets by key; :meth:`acquire` takes one token or says how long to wait."""

    def __init__(
        self,
        rate_per_min: float,
        *,
        burst: float | None = None,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_min <= 0 or max_clients < 1:
            raise ValueError("rate_per_min > 0 and max_clients >= 1 are needed")
        self.capacity = float(burst if burst is not None else rate_per_min)
        if self.capacity < 1:
            raise ValueError("the burst must allow at least one request")
        self.per_s = rate_per_min / 60.0
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens of ``key``'s bucket: 0.0 when allowed, else the seconds
        until that many tokens are back (nothing is taken then)."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.capacity, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.stamp)
            bucket.tokens = min(self.capacity, bucket.tokens + elapsed * self.per_s)
            bucket.stamp = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / self.per_s

    @staticmethod
    def retry_after(wait_s: float) -> int:
        """``Retry-After`` (whole seconds, at least 1) for a wait of ``wait_s``."""
        return max(1, math.ceil(wait_s))
