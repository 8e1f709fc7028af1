"""The pipe format between worker processes and the daemon process (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from voiceid.runtime.wire import (
    WireError,
    pack_embs,
    pack_error,
    pack_feats,
    seq_of,
    unpack_feats,
    unpack_reply,
)


def test_requests_of_several_window_lengths_and_replies_round_trip_exactly() -> None:
    rng = np.random.default_rng(0)
    long = rng.standard_normal((5, 198, 80)).astype(np.float32)
    short = [rng.standard_normal((98, 80)).astype(np.float32) for _ in range(2)]
    seq, groups = unpack_feats(pack_feats(7, [long, short]))
    assert seq == 7 and [g.shape for g in groups] == [(5, 198, 80), (2, 98, 80)]
    np.testing.assert_array_equal(groups[0], long)
    np.testing.assert_array_equal(groups[1], np.stack(short))
    embs = rng.standard_normal((7, 256)).astype(np.float32)
    seq, back, error = unpack_reply(pack_embs(2**32 - 1, embs))
    assert (seq, error) == (2**32 - 1, None)
    np.testing.assert_array_equal(np.asarray(back), embs)
    # float64 and non-contiguous input are converted, not rejected
    _, (g,) = unpack_feats(pack_feats(1, [long.astype(np.float64)[:, ::2]]))
    np.testing.assert_array_equal(g, long[:, ::2])


def test_an_error_travels_as_one_line_with_its_request() -> None:
    assert unpack_reply(pack_error(3, "RuntimeError: CUDA out of memory\nTraceback ...")) == (
        3,
        None,
        "RuntimeError: CUDA out of memory",
    )


def _feats() -> bytes:
    return pack_feats(9, [np.zeros((2, 3, 4), np.float32)])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"VID", "shorter than its header"),
        (pack_embs(1, np.zeros((1, 4), np.float32)), "expected a b'VIDF' message"),
        (_feats()[:-4], "ends inside group 0"),
        (_feats() + b"xxxx", "4 bytes after its last group"),
        (b"VIDF" + bytes(4) + (100).to_bytes(4, "little") + bytes(4), "100 groups"),
        (b"VIDF" + bytes(4) + (1).to_bytes(4, "little") + bytes(4), "shorter than its 1 group"),
        (
            b"VIDF"
            + bytes(4)
            + (1).to_bytes(4, "little")
            + bytes(4)
            + (1 << 20).to_bytes(4, "little")
            + bytes(8),
            "out of range",
        ),
    ],
)
def test_malformed_requests_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        unpack_feats(data)


def test_malformed_replies_are_refused_and_the_sequence_is_still_read() -> None:
    bad = pack_embs(5, np.zeros((2, 4), np.float32))[:-1]
    with pytest.raises(WireError, match="reply 5 for 2 x 4"):
        unpack_reply(bad)
    with pytest.raises(WireError, match="expected a b'VIDE'"):
        unpack_reply(_feats())
    assert seq_of(_feats()[:20]) == 9 and seq_of(b"VIDF") is None


def test_shapes_that_cannot_travel_are_refused() -> None:
    with pytest.raises(WireError, match=r"windows \[T, F\]"):
        pack_feats(0, [np.zeros((3, 4), np.float32)])
    with pytest.raises(WireError, match=r"1\.\.64 groups"):
        pack_feats(0, [])
    with pytest.raises(WireError, match=r"\[n, D\]"):
        pack_embs(0, np.zeros((3, 4, 5), np.float32))
    with pytest.raises(ValueError):  # one window of another length in a group
        pack_feats(0, [[np.zeros((3, 4), np.float32), np.zeros((5, 4), np.float32)]])
