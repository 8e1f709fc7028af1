"""BufferedReceiver: Connection.send_bytes framing read into reused buffers (real pipe)."""

from __future__ import annotations

import multiprocessing as mp
import threading

import numpy as np
import pytest

from voiceid.runtime.pipes import BufferedReceiver
from voiceid.runtime.wire import pack_feats, unpack_feats


def test_messages_of_any_size_arrive_whole_and_buffers_are_reused() -> None:
    here, there = mp.Pipe()
    inbox = BufferedReceiver(here)
    big = np.random.default_rng(0).standard_normal((40, 198, 80)).astype(np.float32)
    messages = [b"", b"x" * 10, pack_feats(3, [big]), b"tail"]  # 2.5 MB: many socket buffers
    sender = threading.Thread(target=lambda: [there.send_bytes(m) for m in messages])
    sender.start()
    try:
        buf, view = inbox.recv()
        assert bytes(view) == b""
        small, view = inbox.recv()
        assert bytes(view) == b"x" * 10
        inbox.release(small)
        large, view = inbox.recv()
        seq, (got,) = unpack_feats(view)
        assert seq == 3
        np.testing.assert_array_equal(got, big)
        del got, view
        inbox.release(large)
        buf, view = inbox.recv()
        assert bytes(view) == b"tail" and buf is small  # a free buffer that fits: reused
    finally:
        sender.join(5)
        there.close()
    with pytest.raises(EOFError):
        inbox.recv()
    inbox.close()
    here.close()
