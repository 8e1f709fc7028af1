"""Large messages from a ``multiprocessing`` pipe, read into reused buffers.

``Connection.recv_bytes`` reads a message of a few MB in socket-buffer-sized chunks: a new
``bytes`` object and a trip through the GIL per chunk, then two more copies to join them.
With a dozen worker pipes feeding one process, those GIL trips queue behind each other.
:class:`BufferedReceiver` reads the same framing (``Connection.send_bytes``: a 4-byte
big-endian length, or -1 and an 8-byte one) with one ``recv_into(MSG_WAITALL)`` for the
whole body, straight into a buffer from a free list, with the GIL released throughout.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from multiprocessing.connection import Connection

KEEP_FREE = 8  # buffers kept for reuse; more are dropped (each as large as a request)


class BufferedReceiver:
    """Reads messages of ``conn`` (the Unix socket under a ``multiprocessing.Pipe``).

    ``recv`` gives the buffer and a view of the message in it; hand the buffer back with
    ``release`` once nothing reads the view any more. One reader thread per receiver.
    """

    def __init__(self, conn: Connection) -> None:
        self._sock = socket.socket(fileno=os.dup(conn.fileno()))
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def recv(self) -> tuple[bytearray, memoryview]:
        """The next message; ``EOFError`` when the other end is closed."""
        head = bytearray(8)
        self._fill(memoryview(head)[:4])
        (size,) = struct.unpack_from("!i", head)
        if size == -1:
            self._fill(memoryview(head))
            (size,) = struct.unpack_from("!Q", head)
        buf = self._take(size)
        view = memoryview(buf)[:size]
        self._fill(view)
        return buf, view

    def release(self, buf: bytearray) -> None:
        with self._lock:
            if len(self._free) < KEEP_FREE:
                self._free.append(buf)

    def close(self) -> None:
        self._sock.close()

    def _take(self, size: int) -> bytearray:
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= size:
                    return self._free.pop(i)
        return bytearray(size)

    def _fill(self, view: memoryview) -> None:
        got = 0
        while got < len(view):  # MSG_WAITALL returns short only on a signal or at EOF
            n = self._sock.recv_into(view[got:], len(view) - got, socket.MSG_WAITALL)
            if n == 0:
                raise EOFError("the pipe was closed")
            got += n
