"""Failed-verification throttling per claimed name (NIST SP 800-63B §5.2.2)."""

from __future__ import annotations

import pytest

from voiceid.security.lockout import VerifyLockout


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(lock: VerifyLockout, name: str, n: int = 1) -> None:
    for _ in range(n):
        assert lock.begin(name) == 0.0
        lock.end(name, False)


def test_five_failures_then_a_doubling_delay_capped() -> None:
    clock = Clock()
    lock = VerifyLockout(after=5, base_s=1.0, max_s=6.0, clock=clock)
    fail(lock, "ann", 4)
    assert lock.wait("ann") == 0.0  # four failures: no delay yet
    fail(lock, "ann")
    assert lock.wait("ann") == pytest.approx(1.0)  # the 6th waits base_s
    assert lock.begin("ann") == pytest.approx(1.0)
    assert lock.retry_after("ann") == 1
    clock.now += 0.6
    assert lock.begin("ann") == pytest.approx(0.4)
    clock.now += 0.4
    fail(lock, "ann")  # 6th failure: 2 s
    assert lock.wait("ann") == pytest.approx(2.0)
    clock.now += 2.0
    fail(lock, "ann")  # 7th: 4 s
    assert lock.wait("ann") == pytest.approx(4.0)
    clock.now += 4.0
    fail(lock, "ann")  # 8th: 8 s, capped at 6
    assert lock.wait("ann") == pytest.approx(6.0)
    assert lock.retry_after("ann") == 6
    assert lock.failures("ann") == 8


def test_success_resets_and_other_names_are_unaffected() -> None:
    clock = Clock()
    lock = VerifyLockout(after=2, base_s=10.0, clock=clock)
    fail(lock, "ann", 2)
    assert lock.wait("ann") > 0 and lock.wait("bob") == 0.0
    clock.now += 10.0
    assert lock.begin("ann") == 0.0
    lock.end("ann", True)
    assert lock.failures("ann") == 0 and len(lock) == 0
    fail(lock, "ann")
    assert lock.wait("ann") == 0.0  # counting starts again


def test_no_decision_is_not_a_failure() -> None:
    lock = VerifyLockout(after=1, clock=Clock())
    for _ in range(10):
        assert lock.begin("ann") == 0.0
        lock.end("ann", None)  # bad audio, an error
    assert lock.failures("ann") == 0 and len(lock) == 0


def test_parallel_attempts_count_as_failures_until_they_end() -> None:
    clock = Clock()
    lock = VerifyLockout(after=3, base_s=1.0, clock=clock)
    assert [lock.begin("ann") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lock.begin("ann") > 0  # 3 in flight: the 4th must wait for them
    for _ in range(3):
        lock.end("ann", False)
    assert lock.failures("ann") == 3 and lock.wait("ann") == pytest.approx(1.0)


def test_success_while_others_are_in_flight() -> None:
    lock = VerifyLockout(after=2, base_s=1.0, clock=Clock())
    lock.begin("ann")
    lock.begin("ann")
    lock.end("ann", True)
    assert lock.failures("ann") == 0 and len(lock) == 1  # one attempt still running
    lock.end("ann", False)
    assert lock.failures("ann") == 1


def test_memory_is_bounded_least_recently_used_first() -> None:
    lock = VerifyLockout(after=1, max_names=3, clock=Clock())
    for name in ("a", "b", "c"):
        fail(lock, name)
    lock.failure("a")  # a is used again: b is now the oldest
    fail(lock, "d")
    assert len(lock) == 3
    assert lock.failures("b") == 0 and lock.failures("a") == 2


def test_huge_failure_counts_do_not_overflow() -> None:
    clock = Clock()
    lock = VerifyLockout(after=1, base_s=1.0, max_s=300.0, clock=clock)
    for _ in range(5000):
        lock.failure("x")
    assert lock.wait("x") == pytest.approx(300.0)


@pytest.mark.parametrize(
    "kwargs", [{"after": 0}, {"base_s": 0.0}, {"max_s": -1.0}, {"max_names": 0}]
)
def test_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        VerifyLockout(**kwargs)
