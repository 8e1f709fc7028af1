"""The pipe format between worker processes and the daemon process (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from voiceid.runtime.wire import (
    WireError,
    pack_embs,
    pack_error,
    pack_feats,
    unpack_embs,
    unpack_feats,
)


def test_feature_and_embedding_blocks_round_trip_exactly() -> None:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((5, 198, 80)).astype(np.float32)
    back = unpack_feats(pack_feats(feats))
    assert back.shape == (5, 198, 80) and back.dtype == np.float32
    np.testing.assert_array_equal(back, feats)
    embs = rng.standard_normal((5, 256)).astype(np.float32)
    np.testing.assert_array_equal(unpack_embs(pack_embs(embs)), embs)
    # float64 and non-contiguous input are converted, not rejected
    np.testing.assert_array_equal(
        unpack_feats(pack_feats(feats.astype(np.float64)[:, ::2])), feats[:, ::2]
    )


def test_an_error_travels_as_one_line() -> None:
    with pytest.raises(WireError, match=r"^RuntimeError: CUDA out of memory$"):
        unpack_embs(pack_error("RuntimeError: CUDA out of memory\nTraceback ..."))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"VID", "shorter than its header"),
        (pack_embs(np.zeros((1, 4), np.float32)), "expected a b'VIDF' message"),
        (pack_feats(np.zeros((2, 3, 4), np.float32))[:-4], "not 96"),
        (pack_feats(np.zeros((2, 3, 4), np.float32)) + b"xxxx", "not 96"),
        (b"VIDF" + (1 << 20).to_bytes(4, "little") + bytes(8), "out of range"),
    ],
)
def test_malformed_messages_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        unpack_feats(data)


def test_wrong_ranks_are_refused() -> None:
    with pytest.raises(WireError, match=r"\[n, T, F\]"):
        pack_feats(np.zeros((3, 4), np.float32))
    with pytest.raises(WireError, match=r"\[n, D\]"):
        pack_embs(np.zeros((3, 4, 5), np.float32))
