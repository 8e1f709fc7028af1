"""Throttling of failed verifications per claimed identity (NIST SP 800-63B §5.2.2).

After ``after`` consecutive failed verifications of one name, the next verification of
that name is answered only ``base_s`` seconds after the last failure; every further
failure doubles the wait, up to ``max_s``. A successful verification resets the name.
Failures of other names, and identification (1:N), are not affected.

Concurrent attempts count too: :meth:`VerifyLockout.begin` reserves an attempt that
counts as a failure until :meth:`VerifyLockout.end` says how it went, so firing many
requests in parallel does not get more than ``after`` guesses past the limit.

Pure: no I/O, an injected monotonic clock; memory is bounded (the ``max_names`` least
recently used names are kept). The HTTP layer answers a refusal with ``429`` and
``Retry-After`` and counts it in ``voiceid_verify_lockouts_total``.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

MAX_NAMES: Final = 10_000
_MAX_DOUBLINGS: Final = 40  # 2**40 * base_s is beyond any sane max_s: no float overflow


@dataclass
class _Entry:
    failures: int = 0  # consecutive failed verifications
    pending: int = 0  # attempts begun and not ended
    last_failure: float = 0.0  # clock() of the last failure


class VerifyLockout:
    """Consecutive-failure throttle per name (see the module docstring)."""

    def __init__(
        self,
        after: int = 5,
        base_s: float = 1.0,
        max_s: float = 300.0,
        *,
        max_names: int = MAX_NAMES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if after < 1 or base_s <= 0 or max_s <= 0 or max_names < 1:
            raise ValueError("after >= 1, base_s > 0, max_s > 0 and max_names >= 1 are needed")
        self.after = after
        self.base_s = base_s
        self.max_s = max(max_s, base_s)
        self.max_names = max_names
        self.clock = clock
        self._names: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._names)

    def delay_after(self, failures: int) -> float:
        """Seconds to wait after the last of ``failures`` consecutive failures."""
        if failures < self.after:
            return 0.0
        doublings = min(failures - self.after, _MAX_DOUBLINGS)
        return min(self.max_s, self.base_s * 2.0**doublings)

    def failures(self, name: str) -> int:
        entry = self._names.get(name)
        return entry.failures if entry else 0

    def wait(self, name: str) -> float:
        """Seconds before ``name`` may be verified (0.0: now). Changes nothing."""
        entry = self._names.get(name)
        if entry is None:
            return 0.0
        counted = entry.failures + entry.pending
        if counted < self.after:
            return 0.0
        if entry.pending:  # over the limit with attempts still running: wait for them
            return self.delay_after(counted)
        left = entry.last_failure + self.delay_after(entry.failures) - self.clock()
        return max(0.0, left)

    def begin(self, name: str) -> float:
        """Start a verification of ``name``: 0.0 when it may go ahead (then call
        :meth:`end` exactly once), else the seconds to wait (nothing is reserved)."""
        left = self.wait(name)
        if left > 0.0:
            return left
        self._entry(name).pending += 1
        return 0.0

    def end(self, name: str, accepted: bool | None) -> None:
        """End an attempt :meth:`begin` allowed: ``True`` accepted (the name is reset),
        ``False`` rejected (one more failure), ``None`` no decision (bad audio, an error:
        not counted)."""
        entry = self._names.get(name)
        if entry is not None and entry.pending > 0:
            entry.pending -= 1
        if accepted is True:
            self.success(name)
        elif accepted is False:
            self.failure(name)
        elif entry is not None and entry.failures == 0 and entry.pending == 0:
            del self._names[name]

    def failure(self, name: str) -> None:
        """Record a failed verification of ``name``."""
        entry = self._entry(name)
        entry.failures += 1
        entry.last_failure = self.clock()

    def success(self, name: str) -> None:
        """Record a successful verification: the name's failures are forgotten."""
        entry = self._names.get(name)
        if entry is None:
            return
        if entry.pending:
            entry.failures = 0
        else:
            del self._names[name]

    def retry_after(self, name: str) -> int:
        """The ``Retry-After`` value (whole seconds, at least 1) for a refused ``name``."""
        return max(1, math.ceil(self.wait(name)))

    def _entry(self, name: str) -> _Entry:
        entry = self._names.get(name)
        if entry is None:
            entry = self._names[name] = _Entry()
            while len(self._names) > self.max_names:
                self._names.popitem(last=False)
        else:
            self._names.move_to_end(name)
        return entry
