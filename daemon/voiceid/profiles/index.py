"""In-memory 1:N search over enrolled centroids of one embedding model.

The centroids live in one contiguous float32 matrix ``[capacity, D]``; the first
``n`` rows are live. Scores are dot products with unit-norm queries, i.e. cosine
similarities.

Thread safety: readers never take a lock. All state a reader needs (matrix, row
count, names, ids) is one immutable :class:`_Snapshot` that writers replace with
a single attribute assignment (atomic in CPython). Writers (serialised by a lock)
only ever write *past* the live rows of the current matrix (``add`` into spare
capacity) or build a new matrix (``remove``, replacing a profile, growing), so a
reader holding an older snapshot never sees a half-written row or a row whose
name does not match.

Costs: ``add`` is amortised O(D) (capacity grows geometrically); ``remove`` and
re-adding an existing name copy the matrix (O(N·D)) — enrollment changes are rare.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from voiceid.errors import ProfileError
from voiceid.profiles.model import Vector

_NAMES_HINT = "see the enrolled names with `voiceid profiles list`"
#: Rows per block for the block-max top-k prefilter (see :meth:`ProfileIndex.top_k_batch`).
_BLOCK = 512
_MIN_CAPACITY = 16


class ProfileLike(Protocol):
    """What the index needs of a profile (``Profile`` and ``ProfileSummary`` fit)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def model_name(self) -> str: ...
    @property
    def centroid(self) -> Vector: ...


@dataclass(frozen=True)
class ForeignProfile:
    """A profile enrolled with another model: it cannot be scored by this index."""

    id: str
    name: str
    fingerprint: str
    model_name: str


@dataclass(frozen=True)
class _Snapshot:
    matrix: npt.NDArray[np.float32]  # [capacity, D]; rows >= n are scratch
    n: int
    names: list[str]  # append-only while shared; entries >= n are not yet live
    ids: list[str]
    rows: dict[str, int]  # casefolded name -> row; check row < n before use
    id_rows: dict[str, int]  # profile id -> row; same rule


class ProfileIndex:
    """Centroids of the profiles enrolled with model ``fingerprint``.

    Profiles of other fingerprints are kept aside in :attr:`foreign` so callers
    can say "re-enroll NAME with model X"; :meth:`check` raises for them.
    """

    def __init__(self, fingerprint: str, dim: int | None = None, *, model_name: str = "") -> None:
        self.fingerprint = fingerprint
        self.model_name = model_name
        self._dim = dim
        self._lock = threading.Lock()
        self._foreign: dict[str, ForeignProfile] = {}
        self._snap = _Snapshot(np.zeros((0, dim or 0), np.float32), 0, [], [], {}, {})

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (the daemon sends its index to worker processes): no lock."""
        state = dict(vars(self))
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------ construction

    @classmethod
    def from_profiles(
        cls, profiles: Iterable[ProfileLike], fingerprint: str, *, model_name: str = ""
    ) -> ProfileIndex:
        """An index of ``profiles`` enrolled with ``fingerprint``; the others go
        to :attr:`foreign`."""
        index = cls(fingerprint, model_name=model_name)
        mine: list[ProfileLike] = []
        for p in profiles:
            if p.fingerprint == fingerprint:
                mine.append(p)
            else:
                index._foreign[p.name.casefold()] = ForeignProfile(
                    p.id, p.name, p.fingerprint, p.model_name
                )
        if mine:
            index._bulk(
                [p.name for p in mine],
                [p.id for p in mine],
                np.stack([np.asarray(p.centroid, np.float32) for p in mine]),
            )
        return index

    @classmethod
    def from_matrix(
        cls,
        fingerprint: str,
        names: Sequence[str],
        ids: Sequence[str],
        matrix: npt.ArrayLike,
        *,
        model_name: str = "",
    ) -> ProfileIndex:
        """Bulk load: ``matrix[i]`` is the unit-norm centroid of ``names[i]``."""
        index = cls(fingerprint, model_name=model_name)
        index._bulk(list(names), list(ids), np.asarray(matrix, np.float32))
        return index

    def _bulk(self, names: list[str], ids: list[str], matrix: npt.NDArray[np.float32]) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != len(names) or len(ids) != len(names):
            raise ValueError(
                f"matrix {matrix.shape} does not match {len(names)} names / {len(ids)} ids"
            )
        rows: dict[str, int] = {}
        for i, name in enumerate(names):
            key = name.casefold()
            if key in rows:
                raise ProfileError(f"duplicate profile name {name!r} in the index")
            rows[key] = i
        id_rows = {pid: i for i, pid in enumerate(ids)}
        if len(id_rows) != len(ids):
            raise ProfileError("duplicate profile ids in the index")
        with self._lock:
            if self._dim is not None and matrix.shape[1] != self._dim:
                raise ProfileError(
                    f"centroids have dimension {matrix.shape[1]}, index has {self._dim}"
                )
            self._dim = int(matrix.shape[1])
            m = np.ascontiguousarray(matrix, dtype=np.float32).copy()
            self._snap = _Snapshot(m, len(names), names, ids, rows, id_rows)

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return self._snap.n

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._row(self._snap, name) is not None

    @property
    def dim(self) -> int | None:
        return self._dim

    @property
    def names(self) -> list[str]:
        snap = self._snap
        return snap.names[: snap.n]

    @property
    def ids(self) -> list[str]:
        snap = self._snap
        return snap.ids[: snap.n]

    @property
    def foreign(self) -> list[ForeignProfile]:
        """Profiles enrolled with another model fingerprint, by name."""
        with self._lock:
            return sorted(self._foreign.values(), key=lambda f: f.name.casefold())

    @property
    def matrix(self) -> npt.NDArray[np.float32]:
        """A read-only view of the live ``[N, D]`` centroids."""
        snap = self._snap
        view = snap.matrix[: snap.n]
        view.flags.writeable = False
        return view

    @property
    def nbytes(self) -> int:
        """Bytes held by the centroid matrix (including spare capacity)."""
        return int(self._snap.matrix.nbytes)

    @staticmethod
    def _row(snap: _Snapshot, name: str) -> int | None:
        row = snap.rows.get(name.casefold())
        return row if row is not None and row < snap.n else None

    @staticmethod
    def _id_row(snap: _Snapshot, pid: str) -> int | None:
        row = snap.id_rows.get(pid)
        return row if row is not None and row < snap.n else None

    def check(self, name: str) -> str:
        """The indexed name for ``name`` (case-insensitive); ``ProfileError`` if it
        is unknown or enrolled with another model."""
        snap = self._snap
        row = self._row(snap, name)
        if row is not None:
            return snap.names[row]
        with self._lock:
            foreign = self._foreign.get(name.casefold())
        if foreign is not None:
            model = self.model_name or f"fingerprint {self.fingerprint}"
            raise ProfileError(
                f"profile {foreign.name!r} was enrolled with model {foreign.model_name} "
                f"(fingerprint {foreign.fingerprint}); it cannot be scored with {model}",
                hint=f"re-enroll {foreign.name} with {model}",
            )
        raise ProfileError(f"no profile named {name!r}", hint=_NAMES_HINT)

    def score(self, emb: npt.ArrayLike, name: str) -> float:
        """Cosine of a unit-norm embedding with one profile (1:1 verification)."""
        self.check(name)
        snap = self._snap
        row = self._row(snap, name)
        if row is None:  # removed meanwhile
            raise ProfileError(f"no profile named {name!r}", hint=_NAMES_HINT)
        q = self._query(emb, snap, batch=False)
        return float(snap.matrix[row] @ q)

    def _query(self, emb: npt.ArrayLike, snap: _Snapshot, *, batch: bool) -> Vector:
        q = np.asarray(emb, dtype=np.float32)
        want = 2 if batch else 1
        if q.ndim != want:
            raise ValueError(f"expected a {want}-D query, got shape {q.shape}")
        dim = snap.matrix.shape[1]
        if snap.n and q.shape[-1] != dim:
            raise ProfileError(f"query has dimension {q.shape[-1]}, profiles have {dim}")
        return np.ascontiguousarray(q)

    def scores(self, emb: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Cosine with every profile: ``[D] -> [N]``, ``[B, D] -> [B, N]`` (in
        :attr:`names` order). Inputs must be unit-norm."""
        snap = self._snap
        q = np.asarray(emb, dtype=np.float32)
        if q.ndim == 1:
            return self._scores(snap, self._query(q, snap, batch=False))
        return self._scores(snap, self._query(q, snap, batch=True))

    @staticmethod
    def _scores(snap: _Snapshot, q: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        live = snap.matrix[: snap.n]
        if snap.n == 0:
            return np.zeros((*q.shape[:-1], 0), dtype=np.float32)
        if q.ndim == 1:
            return live @ q
        return q @ live.T

    def top_k(self, emb: npt.ArrayLike, k: int) -> list[tuple[str, float]]:
        """The ``k`` best (name, cosine) for one unit-norm embedding, best first."""
        snap = self._snap
        q = self._query(emb, snap, batch=False)
        return self._top_k(snap, q[None, :], k)[0]

    def top_k_batch(self, embs: npt.ArrayLike, k: int) -> list[list[tuple[str, float]]]:
        """:meth:`top_k` for a batch ``[B, D]`` of unit-norm embeddings."""
        snap = self._snap
        q = self._query(embs, snap, batch=True)
        return self._top_k(snap, q, k)

    @staticmethod
    def _top_k(
        snap: _Snapshot, q: npt.NDArray[np.float32], k: int
    ) -> list[list[tuple[str, float]]]:
        n, b = snap.n, q.shape[0]
        k = min(int(k), n)
        if k <= 0:
            return [[] for _ in range(b)]
        live = snap.matrix[:n]
        s = (live @ q[0])[None, :] if b == 1 else q @ live.T  # [B, N]
        cand = _candidates(s, k)  # [B, C] column indices, C >= k
        pad = cand >= n
        if pad.any():
            cand = np.minimum(cand, n - 1)
            vals = np.take_along_axis(s, cand, axis=1)
            vals[pad] = -np.inf  # never chosen: the k blocks hold >= k real columns
        else:
            vals = np.take_along_axis(s, cand, axis=1)
        if cand.shape[1] > k:
            part = np.argpartition(-vals, k - 1, axis=1)[:, :k]
            cand = np.take_along_axis(cand, part, axis=1)
            vals = np.take_along_axis(vals, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        cand = np.take_along_axis(cand, order, axis=1)
        vals = np.take_along_axis(vals, order, axis=1)
        names = snap.names
        return [
            [(names[int(c)], float(v)) for c, v in zip(crow, vrow, strict=True)]
            for crow, vrow in zip(cand, vals, strict=True)
        ]

    # ------------------------------------------------------------------ writing

    def add(self, profile: ProfileLike) -> None:
        """Add or replace (same name or id) a profile. A profile of another
        fingerprint is not scored: it is recorded in :attr:`foreign` (replacing
        any indexed profile of that name)."""
        key = profile.name.casefold()
        with self._lock:
            snap = self._snap
            self._remove_rows({self._row(snap, key), self._id_row(snap, profile.id)})
            self._forget_foreign(key, profile.id)
            if profile.fingerprint != self.fingerprint:
                self._foreign[key] = ForeignProfile(
                    profile.id, profile.name, profile.fingerprint, profile.model_name
                )
                return
            vec = np.asarray(profile.centroid, dtype=np.float32)
            if vec.ndim != 1 or (self._dim is not None and vec.shape[0] != self._dim):
                raise ProfileError(
                    f"centroid of {profile.name!r} has shape {vec.shape}, index dimension "
                    f"is {self._dim}"
                )
            if self._dim is None:
                self._dim = int(vec.shape[0])
            snap = self._snap
            n = snap.n
            matrix = snap.matrix
            if matrix.shape[0] <= n or matrix.shape[1] != self._dim:
                cap = max(_MIN_CAPACITY, 2 * n)
                grown = np.empty((cap, self._dim), dtype=np.float32)
                if n:
                    grown[:n] = matrix[:n]
                matrix = grown
                names, ids = snap.names[:n], snap.ids[:n]
                rows, id_rows = dict(snap.rows), dict(snap.id_rows)
            else:
                # Append in place: readers of ``snap`` only look at rows < n,
                # and lookups check ``row < n``.
                del snap.names[n:], snap.ids[n:]
                names, ids, rows, id_rows = snap.names, snap.ids, snap.rows, snap.id_rows
            matrix[n] = vec
            names.append(profile.name)
            ids.append(profile.id)
            rows[key] = n
            id_rows[profile.id] = n
            self._snap = _Snapshot(matrix, n + 1, names, ids, rows, id_rows)

    def remove(self, name: str) -> bool:
        """Remove a profile (indexed or foreign) by name; ``False`` if absent."""
        key = name.casefold()
        with self._lock:
            had_foreign = self._foreign.pop(key, None) is not None
            return self._remove_rows({self._row(self._snap, key)}) or had_foreign

    def _forget_foreign(self, key: str, pid: str) -> None:
        self._foreign.pop(key, None)
        if self._foreign:
            for k in [k for k, f in self._foreign.items() if f.id == pid]:
                del self._foreign[k]

    def _remove_rows(self, drop: set[int | None]) -> bool:
        """Copy-on-write removal: the last live row moves into each hole."""
        doomed = sorted((r for r in drop if r is not None), reverse=True)
        if not doomed:
            return False
        snap = self._snap
        n = snap.n
        matrix = np.empty_like(snap.matrix)
        matrix[:n] = snap.matrix[:n]
        names, ids = snap.names[:n], snap.ids[:n]
        rows, id_rows = dict(snap.rows), dict(snap.id_rows)
        for r in doomed:
            last = n - 1
            del rows[names[r].casefold()], id_rows[ids[r]]
            if r != last:
                matrix[r] = matrix[last]
                names[r], ids[r] = names[last], ids[last]
                rows[names[r].casefold()] = r
                id_rows[ids[r]] = r
            names.pop()
            ids.pop()
            n -= 1
        self._snap = _Snapshot(matrix, n, names, ids, rows, id_rows)
        return True


def _candidates(s: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.intp]:
    """Column indices per row of ``s`` [B, N] that surely contain its top ``k``.

    Block-max prefilter: split the N columns into blocks of ``_BLOCK`` and keep
    the ``k`` blocks with the highest maxima. Any top-k element lies in one of
    them (a block holding one has a maximum at least that element, and fewer
    than k other blocks can beat it), so this is exact, and much cheaper than an
    ``argpartition`` over all N columns (a max-reduction is vectorised).
    """
    b, n = s.shape
    n_blocks = -(-n // _BLOCK)
    if n_blocks <= 4 * k:
        return np.broadcast_to(np.arange(n, dtype=np.intp), (b, n))
    full = n // _BLOCK
    maxes = np.empty((b, n_blocks), dtype=np.float32)
    maxes[:, :full] = s[:, : full * _BLOCK].reshape(b, full, _BLOCK).max(axis=2)
    if full < n_blocks:
        maxes[:, full] = s[:, full * _BLOCK :].max(axis=1)
    blocks = np.argpartition(-maxes, k - 1, axis=1)[:, :k]  # [B, k]
    cols = (blocks[:, :, None] * _BLOCK + np.arange(_BLOCK, dtype=np.intp)).reshape(b, -1)
    return cols  # the last block may be short: columns >= n are padding
