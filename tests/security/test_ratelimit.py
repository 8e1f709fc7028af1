"""The per-client token bucket of the REST API."""

from __future__ import annotations

import pytest

from voiceid.security.ratelimit import RateLimiter, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_rate() -> None:
    clock = Clock()
    rl = RateLimiter(60, clock=clock)  # 60/min: 1 per second, burst 60
    assert all(rl.acquire("a") == 0.0 for _ in range(60))
    wait = rl.acquire("a")
    assert wait == pytest.approx(1.0)
    assert RateLimiter.retry_after(wait) == 1
    clock.now += 0.5
    assert rl.acquire("a") == pytest.approx(0.5)  # refused requests take nothing
    clock.now += 0.5
    assert rl.acquire("a") == 0.0
    assert rl.acquire("a") > 0
    clock.now += 1000
    assert all(rl.acquire("a") == 0.0 for _ in range(60))  # capped at the burst
    assert rl.acquire("a") > 0


def test_clients_are_separate() -> None:
    rl = RateLimiter(2, clock=Clock())
    assert rl.acquire("a") == 0.0 and rl.acquire("a") == 0.0
    assert rl.acquire("a") == pytest.approx(30.0)  # 2/min: one every 30 s
    assert rl.acquire("b") == 0.0


def test_explicit_burst_and_cost() -> None:
    rl = RateLimiter(600, burst=2, clock=Clock())
    assert rl.acquire("a", cost=2) == 0.0
    assert rl.acquire("a") == pytest.approx(0.1)


def test_table_is_bounded() -> None:
    rl = RateLimiter(1, max_clients=100, clock=Clock())
    for i in range(1000):
        rl.acquire(f"10.0.{i // 256}.{i % 256}")
    assert len(rl) == 100
    assert rl.acquire("10.0.0.0") == 0.0  # evicted long ago: a fresh bucket


def test_client_keys() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:2::99") == client_key("2001:db8:1:2:ffff::1")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key(None) == "unknown"
    assert client_key("testclient") == "testclient"


@pytest.mark.parametrize("kwargs", [{"rate_per_min": 0}, {"rate_per_min": 5, "burst": 0.5}])
def test_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RateLimiter(**kwargs)
