from __future__ import annotations

import numpy as np
import pytest

from voiceid.errors import ConfigError
from voiceid.stream.ring import FlagRing, FrameRing, SampleRing


def test_sample_ring_bounded_over_100k_pushes() -> None:
    rng = np.random.default_rng(1)
    ring = SampleRing(capacity=1000)
    reference: list[np.ndarray] = []
    kept = 0
    for i in range(100_000):
        n = int(rng.integers(0, 40)) if i % 997 else 2500  # now and then more than capacity
        x = rng.standard_normal(n).astype(np.float32)
        ring.extend(x)
        reference.append(x)
        kept += n
        assert ring.size <= ring.capacity == 1000
        assert ring._buf.shape == (1000,)  # never grows
        if i % 5000 == 0:
            tail = np.concatenate(reference)[-ring.size :]
            np.testing.assert_array_equal(ring.last(ring.size), tail)
            reference = [tail]
    assert ring.total == kept
    assert ring.size == 1000
    np.testing.assert_array_equal(ring.last(1000), np.concatenate(reference)[-1000:])


def test_last_is_a_copy_and_checks_bounds() -> None:
    ring = SampleRing(8)
    ring.extend(np.arange(5, dtype=np.float32))
    got = ring.last(3)
    got[:] = -1
    np.testing.assert_array_equal(ring.last(3), [2, 3, 4])
    assert ring.last(0).shape == (0,)
    with pytest.raises(ValueError):
        ring.last(6)
    ring.extend(np.arange(5, 11, dtype=np.float32))  # wraps
    np.testing.assert_array_equal(ring.last(8), np.arange(3, 11))
    assert ring.total == 11


def test_frame_ring_rows() -> None:
    ring = FrameRing(capacity=3, num_bins=2)
    ring.extend(np.arange(10, dtype=np.float32).reshape(5, 2))
    np.testing.assert_array_equal(ring.last(3), [[4, 5], [6, 7], [8, 9]])
    ring.extend(np.zeros((0, 2), dtype=np.float32))
    assert ring.total == 5 and ring.num_bins == 2
    with pytest.raises(ValueError):
        ring.extend(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ConfigError):
        FrameRing(0, 2)


def test_flag_ring_count() -> None:
    ring = FlagRing(4)
    ring.extend(np.array([True, True, False, True, True, False]))
    assert ring.count(4) == 2  # newest four: F T T F
    assert ring.count(100) == 2
    ring.clear()
    assert ring.count(4) == 0 and ring.total == 0
