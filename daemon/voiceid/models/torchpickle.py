"""Read legacy (pre-1.6, non-zip) ``torch.save`` checkpoints into numpy, without torch.

Layout of the legacy format (``torch.serialization._legacy_save``), all pickle protocol 2:

1. pickle: the magic number ``0x1950a86a20f9469cfc6c``;
2. pickle: the protocol version, 1001;
3. pickle: ``sys_info`` (``little_endian``, ``type_sizes``);
4. pickle: the object itself. Tensors are reduced with ``torch._utils._rebuild_tensor_v2(
   storage, storage_offset, size, stride, requires_grad, backward_hooks)``; storages are
   persistent ids ``("storage", torch.<Type>Storage, key, location, numel, view_metadata)``;
5. pickle: the list of storage keys, in the order their data follows;
6. per key: int64 element count, then the raw elements (byte order of ``sys_info``).

The unpickler is restricted: it resolves only ``collections.OrderedDict``, the
``torch._utils._rebuild_tensor(_v2)`` / ``_rebuild_parameter`` reducers and the
``torch.*Storage`` types (to numpy stand-ins). Any other global (``os.system``, a model
class, ...) is refused with a :class:`~voiceid.errors.ModelError` before anything runs.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from voiceid.errors import ModelError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}

# Keys under which checkpoints commonly nest their state dict.
_NESTED_KEYS = ("model_state", "state_dict", "model_state_dict", "model")


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype[Any]


@dataclass
class _Storage:
    key: str
    dtype: np.dtype[Any]
    numel: int
    data: np.ndarray | None = None  # filled after the main pickle


@dataclass(frozen=True)
class _StorageView:
    root: _Storage
    offset: int  # elements
    numel: int


@dataclass(frozen=True)
class _LazyTensor:
    storage: _Storage | _StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _LazyTensor:
    if not isinstance(storage, _Storage | _StorageView):
        raise ModelError("tensor without a storage in checkpoint")
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, *_rest: Any
) -> _LazyTensor:
    # _rest: requires_grad, backward_hooks (and metadata in later versions): not needed.
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, source: Path) -> None:
        super().__init__(file)
        self._source = source
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils":
            if name == "_rebuild_tensor_v2":
                return _rebuild_tensor_v2
            if name == "_rebuild_tensor":
                return _rebuild_tensor
            if name == "_rebuild_parameter":
                return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise ModelError(
            f"{self._source}: refusing to load pickled global {module}.{name}",
            hint="only plain tensor checkpoints are read; the file may be unsafe or not a "
            "torch state dict",
        )

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage" or len(pid) < 5:
            raise ModelError(
                f"{self._source}: unsupported persistent id {str(pid)[:80]!r} in checkpoint",
                hint="only tensors and storages are supported",
            )
        storage_type, key, _location, numel = pid[1:5]
        view_metadata = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise ModelError(f"{self._source}: bad storage type {storage_type!r}")
        key = str(key)
        root = self.storages.get(key)
        if root is None:
            root = _Storage(key, storage_type.dtype, int(numel))
            self.storages[key] = root
        if view_metadata is None:
            return root
        _view_key, offset, view_size = view_metadata
        return _StorageView(root, int(offset), int(view_size))


def _load_pickle(f: BinaryIO, source: Path) -> tuple[Any, _RestrictedUnpickler]:
    unpickler = _RestrictedUnpickler(f, source)
    return unpickler.load(), unpickler


def _materialise(t: _LazyTensor, source: Path) -> np.ndarray:
    store = t.storage
    if isinstance(store, _StorageView):
        root, base, limit = store.root, store.offset, store.numel
    else:
        root, base, limit = store, 0, store.numel
    if root.data is None:
        raise ModelError(f"{source}: storage {root.key} has no data in the file")
    if len(t.size) != len(t.stride):
        raise ModelError(f"{source}: tensor size {t.size} and stride {t.stride} differ in rank")
    if any(s < 0 for s in t.size) or any(s < 0 for s in t.stride):
        raise ModelError(f"{source}: negative size or stride in tensor {t.size}/{t.stride}")
    if 0 in t.size:
        return np.zeros(t.size, dtype=root.dtype.newbyteorder("="))
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride, strict=True))
    if t.offset < 0 or last >= limit or base + limit > root.data.size:
        raise ModelError(f"{source}: tensor reaches past its storage {root.key}")
    flat = root.data[base + t.offset :]
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat, shape=t.size, strides=tuple(s * item for s in t.stride), writeable=False
    )
    return np.array(view, dtype=root.dtype.newbyteorder("="), copy=True)


def _resolve(obj: Any, source: Path) -> Any:
    if isinstance(obj, _LazyTensor):
        return _materialise(obj, source)
    if isinstance(obj, dict):
        for k in list(obj):
            obj[k] = _resolve(obj[k], source)
        return obj
    if isinstance(obj, list):
        return [_resolve(v, source) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, source) for v in obj)
    return obj


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())
    )


def _find_state_dict(obj: Any, source: Path) -> dict[str, np.ndarray]:
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:
            if _is_tensor_dict(obj.get(key)):
                return dict(obj[key])
        nested = [v for v in obj.values() if _is_tensor_dict(v)]
        if len(nested) == 1:
            return dict(nested[0])
    raise ModelError(
        f"{source}: no state dict (a dict of tensors) found in the checkpoint",
        hint=f"expected a flat state dict or one nested under one of {', '.join(_NESTED_KEYS)}",
    )


def load_legacy_torch_object(path: Path) -> Any:
    """The whole checkpoint object, tensors as numpy arrays (owning their memory)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read checkpoint {path}: {e}") from e
    if raw[:4] == b"PK\x03\x04":
        raise ModelError(
            f"{path} is a zip-based torch checkpoint (torch ≥ 1.6)",
            hint="this reader handles the legacy format only",
        )
    f = io.BytesIO(raw)
    try:
        magic, _ = _load_pickle(f, path)
        if magic != MAGIC_NUMBER:
            raise ModelError(f"{path} is not a legacy torch checkpoint (bad magic number)")
        version, _ = _load_pickle(f, path)
        if version != PROTOCOL_VERSION:
            raise ModelError(f"{path}: unsupported torch protocol version {version!r}")
        sys_info, _ = _load_pickle(f, path)
        little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
        result, unpickler = _load_pickle(f, path)
        keys, _ = _load_pickle(f, path)
    except ModelError:
        raise
    except Exception as e:  # pickle.UnpicklingError, EOFError, ValueError, ...
        raise ModelError(f"cannot parse checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(keys, list):
        raise ModelError(f"{path}: storage key list missing")
    order: Literal["<", ">"] = "<" if little else ">"
    for key in keys:
        storage = unpickler.storages.get(str(key))
        if storage is None:
            raise ModelError(f"{path}: data for unknown storage {key!r}")
        head = f.read(8)
        if len(head) != 8:
            raise ModelError(f"{path}: truncated before storage {key}")
        numel = int(np.frombuffer(head, dtype=f"{order}i8")[0])
        dtype = storage.dtype.newbyteorder(order)
        nbytes = numel * dtype.itemsize
        body = f.read(nbytes)
        if numel < 0 or len(body) != nbytes:
            raise ModelError(f"{path}: truncated storage {key} ({len(body)} of {nbytes} bytes)")
        if numel != storage.numel:
            raise ModelError(
                f"{path}: storage {key} has {numel} elements in the file, "
                f"{storage.numel} in the pickle"
            )
        storage.data = np.frombuffer(body, dtype=dtype)
    return _resolve(result, path)


def load_legacy_torch(path: Path) -> dict[str, np.ndarray]:
    """Flat ``{name: array}`` state dict of a legacy torch checkpoint (nested one unwrapped)."""
    return _find_state_dict(load_legacy_torch_object(path), Path(path))
