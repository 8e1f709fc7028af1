"""The torch-free legacy checkpoint reader, on byte streams written by hand.

The streams mimic ``torch.serialization._legacy_save`` (pickle protocol 2): magic number,
protocol version, sys_info, the object (tensors via ``torch._utils._rebuild_tensor_v2``
and persistent storage ids), the storage key list, then per storage an int64 element
count and the raw little-endian data.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from voiceid.errors import ModelError
from voiceid.models.torchpickle import (
    MAGIC_NUMBER,
    PROTOCOL_VERSION,
    load_legacy_torch,
    load_legacy_torch_object,
)


class Op:
    """A tiny protocol-2 pickle writer: enough opcodes for torch's legacy layout."""

    def __init__(self) -> None:
        self.b = bytearray(pickle.PROTO + b"\x02")

    def raw(self, data: bytes) -> Op:
        self.b += data
        return self

    def text(self, s: str) -> Op:
        data = s.encode()
        return self.raw(pickle.BINUNICODE + struct.pack("<I", len(data)) + data)

    def integer(self, v: int) -> Op:
        return self.raw(pickle.BININT + struct.pack("<i", v))

    def glob(self, module: str, name: str) -> Op:
        return self.raw(pickle.GLOBAL + f"{module}\n{name}\n".encode())

    def mark(self) -> Op:
        return self.raw(pickle.MARK)

    def tup(self) -> Op:
        return self.raw(pickle.TUPLE)

    def ints_tuple(self, values: tuple[int, ...]) -> Op:
        self.mark()
        for v in values:
            self.integer(v)
        return self.tup()

    def stop(self) -> bytes:
        return bytes(self.b + pickle.STOP)


def _tensor(
    op: Op, key: str, numel: int, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> None:
    """Push ``_rebuild_tensor_v2(storage(key), offset, size, stride, False, OrderedDict())``."""
    op.glob("torch._utils", "_rebuild_tensor_v2")
    op.mark()
    # persistent id ("storage", torch.FloatStorage, key, "cpu", numel, None)
    op.mark().text("storage").glob("torch", "FloatStorage").text(key).text("cpu").integer(numel)
    op.raw(pickle.NONE).tup().raw(pickle.BINPERSID)
    op.integer(offset).ints_tuple(size).ints_tuple(stride).raw(pickle.NEWFALSE)
    op.glob("collections", "OrderedDict").raw(pickle.EMPTY_TUPLE + pickle.REDUCE)
    op.tup().raw(pickle.REDUCE)


def _legacy_file(main: bytes, storages: dict[str, np.ndarray]) -> bytes:
    out = bytearray(pickle.dumps(MAGIC_NUMBER, protocol=2))
    out += pickle.dumps(PROTOCOL_VERSION, protocol=2)
    out += pickle.dumps(
        {
            "protocol_version": 1001,
            "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4},
        },
        protocol=2,
    )
    out += main
    out += pickle.dumps(list(storages), protocol=2)
    for data in storages.values():
        out += struct.pack("<q", data.size) + data.astype("<f4").tobytes()
    return bytes(out)


def test_reads_hand_written_legacy_checkpoint(tmp_path: Path) -> None:
    # Two tensors sharing one storage (like cuDNN's flattened LSTM weights), one of them
    # transposed through its strides, and a bias in a second storage, nested under
    # "model_state" next to a non-tensor entry.
    shared = np.arange(20, dtype=np.float32) / 4
    bias = np.array([-1.5, 2.25, 1e-8], dtype=np.float32)
    op = Op()
    op.raw(pickle.EMPTY_DICT).mark()
    op.text("step").integer(7)
    op.text("model_state").glob("collections", "OrderedDict").raw(
        pickle.EMPTY_TUPLE + pickle.REDUCE
    )
    op.mark()
    op.text("w")
    _tensor(op, "100", 20, 2, (3, 4), (4, 1))
    op.text("w_t")
    _tensor(op, "100", 20, 0, (2, 3), (1, 2))
    op.text("b")
    _tensor(op, "200", 3, 0, (3,), (1,))
    op.raw(pickle.SETITEMS)
    op.raw(pickle.SETITEMS)
    path = tmp_path / "legacy.pt"
    path.write_bytes(_legacy_file(op.stop(), {"100": shared, "200": bias}))

    obj = load_legacy_torch_object(path)
    assert obj["step"] == 7
    state = load_legacy_torch(path)
    assert list(state) == ["w", "w_t", "b"]
    np.testing.assert_array_equal(state["w"], shared[2:14].reshape(3, 4))
    np.testing.assert_array_equal(state["w_t"], shared[:6].reshape(3, 2).T)
    np.testing.assert_array_equal(state["b"], bias)
    for arr in state.values():
        assert arr.dtype == np.float32
        assert arr.flags.owndata and arr.flags.writeable


def test_flat_state_dict_is_returned_as_is(tmp_path: Path) -> None:
    op = Op()
    op.glob("collections", "OrderedDict").raw(pickle.EMPTY_TUPLE + pickle.REDUCE).mark()
    op.text("x")
    _tensor(op, "1", 4, 0, (2, 2), (2, 1))
    op.raw(pickle.SETITEMS)
    data = np.array([1, 2, 3, 4], dtype=np.float32)
    path = tmp_path / "flat.pt"
    path.write_bytes(_legacy_file(op.stop(), {"1": data}))
    state = load_legacy_torch(path)
    np.testing.assert_array_equal(state["x"], [[1, 2], [3, 4]])


def test_refuses_os_system(tmp_path: Path) -> None:
    op = Op()
    op.glob("os", "system").mark().text("touch /tmp/voiceid-pwned").tup().raw(pickle.REDUCE)
    path = tmp_path / "evil.pt"
    path.write_bytes(_legacy_file(op.stop(), {}))
    with pytest.raises(ModelError, match=r"refusing to load pickled global os\.system"):
        load_legacy_torch(path)


def test_refuses_truncated_storage(tmp_path: Path) -> None:
    op = Op()
    op.raw(pickle.EMPTY_DICT).text("x")
    _tensor(op, "1", 4, 0, (4,), (1,))
    op.raw(pickle.SETITEM)
    blob = _legacy_file(op.stop(), {"1": np.ones(4, dtype=np.float32)})
    path = tmp_path / "short.pt"
    path.write_bytes(blob[:-3])
    with pytest.raises(ModelError, match="truncated storage"):
        load_legacy_torch(path)


def test_refuses_tensor_past_its_storage(tmp_path: Path) -> None:
    op = Op()
    op.raw(pickle.EMPTY_DICT).text("x")
    _tensor(op, "1", 4, 2, (4,), (1,))  # elements 2..5 of a 4-element storage
    op.raw(pickle.SETITEM)
    path = tmp_path / "oob.pt"
    path.write_bytes(_legacy_file(op.stop(), {"1": np.ones(4, dtype=np.float32)}))
    with pytest.raises(ModelError, match="past its storage"):
        load_legacy_torch(path)


def test_refuses_zip_format(tmp_path: Path) -> None:
    path = tmp_path / "new.pt"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ModelError, match="zip-based"):
        load_legacy_torch(path)
