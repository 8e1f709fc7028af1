"""The enrolled-profile database: one SQLite file (stdlib ``sqlite3``).

Durability and privacy rules:

* WAL journal, ``synchronous=FULL``: a committed profile survives a crash or power
  loss; every change is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction, so a
  profile is never half-written (no profile without its centroid or utterances).
* ``secure_delete=ON`` and a ``wal_checkpoint(TRUNCATE)`` after deletes and
  re-enrollments: the embeddings of a deleted profile are overwritten in the
  database file and leave the WAL too.
* A file that is not a voiceid database, fails its integrity check or was created
  by a newer voiceid is refused with ``StoreError``; it is never overwritten,
  "repaired" or migrated backwards.
* Schema changes are forward migrations (:data:`MIGRATIONS`); the version lives in
  the ``schema_version`` table and the file carries ``PRAGMA application_id``
  :data:`APPLICATION_ID` ("VCID").
* Templates at rest (schema v2): opened with a key (:class:`TemplateKey`), every
  centroid and utterance embedding BLOB is AES-256-GCM encrypted, bound to its
  (profile id, kind, index) (:mod:`voiceid.security.templates`). The ``meta`` table
  holds the key's id (never the key); each vector row says whether it is encrypted
  (``enc``), and an encrypted database refuses rows in clear. Opening an encrypted
  database without its key, or with another key, is a ``StoreError``; a database that
  holds profiles in clear is encrypted only on request (``encrypt=True``, i.e.
  ``voiceid profiles encrypt``), never silently. :meth:`ProfileStore.rotate_key`
  re-encrypts everything in one transaction.

The export format is documented in ``docs/profiles-format.md``.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import json
import logging
import math
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from voiceid.errors import ConfigError, ProfileError, StoreError
from voiceid.paths import state_dir
from voiceid.profiles.model import (
    Profile,
    ProfileSummary,
    Utterance,
    Vector,
    centroid,
    check_metadata,
    check_name,
    check_vector,
    looks_like_id,
)
from voiceid.security.templates import OVERHEAD, Kind, TemplateAuthError, TemplateKey

log = logging.getLogger(__name__)

APPLICATION_ID = 0x56434944  # "VCID"
DB_NAME = "profiles.db"
EXPORT_FORMAT = "voiceid-profiles"
EXPORT_VERSION = 1
MAX_DIM = 65536
#: Imported centroids must have a norm within this of 1.
NORM_TOLERANCE = 1e-3
#: An imported centroid must agree with the centroid of its utterances this well.
CENTROID_MIN_COSINE = 0.999

_CORRUPT_HINT = "move it aside; voiceid never overwrites it"
_NAMES_HINT = "see the enrolled names with `voiceid profiles list`"

_V1 = """
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
INSERT INTO schema_version (version) VALUES (0);

CREATE TABLE profiles (
    id          TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 32),
    name        TEXT NOT NULL UNIQUE COLLATE NOCASE,
    fingerprint TEXT NOT NULL,
    model_name  TEXT NOT NULL,
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    metadata    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX profiles_by_fingerprint ON profiles (fingerprint);

-- Several centroids per profile are allowed (idx 0 is the mean centroid that
-- scoring uses today; later versions may add per-condition centroids).
CREATE TABLE centroids (
    profile_id TEXT NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL CHECK (idx >= 0),
    kind       TEXT NOT NULL DEFAULT 'mean',
    dim        INTEGER NOT NULL CHECK (dim > 0),
    vector     BLOB NOT NULL CHECK (length(vector) = 4 * dim),
    PRIMARY KEY (profile_id, idx)
);

CREATE TABLE utterances (
    profile_id TEXT NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL CHECK (idx >= 0),
    dim        INTEGER NOT NULL CHECK (dim > 0),
    embedding  BLOB NOT NULL CHECK (length(embedding) = 4 * dim),
    speech_s   REAL NOT NULL,
    source     TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (profile_id, idx)
);

CREATE TABLE thresholds (
    fingerprint TEXT PRIMARY KEY NOT NULL,
    value       REAL NOT NULL,
    source      TEXT NOT NULL DEFAULT '',
    updated     REAL NOT NULL
);

PRAGMA application_id = 1447250244;
"""

# v2: encryption of templates at rest. ``meta`` holds the key id of an encrypted
# database; vector rows get an ``enc`` flag, and their length check allows the
# AES-GCM overhead (29 bytes) for encrypted rows. SQLite cannot change a CHECK
# constraint in place, so both vector tables are rebuilt (children only: no other
# table references them).
_V2 = f"""
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE centroids_v2 (
    profile_id TEXT NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL CHECK (idx >= 0),
    kind       TEXT NOT NULL DEFAULT 'mean',
    dim        INTEGER NOT NULL CHECK (dim > 0),
    enc        INTEGER NOT NULL DEFAULT 0 CHECK (enc IN (0, 1)),
    vector     BLOB NOT NULL CHECK (length(vector) = 4 * dim + {OVERHEAD} * enc),
    PRIMARY KEY (profile_id, idx)
);
INSERT INTO centroids_v2 (profile_id, idx, kind, dim, enc, vector)
    SELECT profile_id, idx, kind, dim, 0, vector FROM centroids;
DROP TABLE centroids;
ALTER TABLE centroids_v2 RENAME TO centroids;

CREATE TABLE utterances_v2 (
    profile_id TEXT NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL CHECK (idx >= 0),
    dim        INTEGER NOT NULL CHECK (dim > 0),
    enc        INTEGER NOT NULL DEFAULT 0 CHECK (enc IN (0, 1)),
    embedding  BLOB NOT NULL CHECK (length(embedding) = 4 * dim + {OVERHEAD} * enc),
    speech_s   REAL NOT NULL,
    source     TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (profile_id, idx)
);
INSERT INTO utterances_v2 (profile_id, idx, dim, enc, embedding, speech_s, source)
    SELECT profile_id, idx, dim, 0, embedding, speech_s, source FROM utterances;
DROP TABLE utterances;
ALTER TABLE utterances_v2 RENAME TO utterances;
"""

#: ``MIGRATIONS[i]`` upgrades a database from schema version ``i`` to ``i + 1``.
#: Version 0 is an empty file. Never edit a released script: append a new one.
MIGRATIONS: list[str] = [_V1, _V2]

_TABLES = frozenset({"schema_version", "profiles", "centroids", "utterances", "thresholds", "meta"})
#: The ``meta`` row holding the id of the key an encrypted database was written with.
KEY_ID = "key_id"
_KEY_HINT = (
    "configure security.profile_key_file (or security.profile_key_credential); "
    "the key is never stored in the database"
)

_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 10, 11, 13, 14
_SQLITE_NOTADB = 26


def schema_version() -> int:
    """The schema version this code writes (``len(MIGRATIONS)``)."""
    return len(MIGRATIONS)


# --------------------------------------------------------------------------- errors


def _cannot_write(path: Path, reason: str = "permission denied") -> StoreError:
    return StoreError(
        f"cannot write {path}: {reason}", hint="choose another --db or fix permissions"
    )


def _corrupt(path: Path, detail: str) -> StoreError:
    return StoreError(
        f"profile database {path} is corrupt or not a voiceid database: {detail}",
        hint=_CORRUPT_HINT,
    )


def _translate_sqlite(path: Path, exc: sqlite3.Error) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text:
        return StoreError(
            f"profile database {path} is locked: {text}",
            hint="another voiceid process is writing to it; try again, or stop that process",
        )
    if primary in (_SQLITE_READONLY, _SQLITE_PERM, _SQLITE_CANTOPEN) or "readonly" in text:
        return _cannot_write(path, f"permission denied ({text})")
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in text:
        return _corrupt(path, text)
    if primary == _SQLITE_FULL:
        return StoreError(f"cannot write {path}: disk full", hint="free some space")
    if primary == _SQLITE_IOERR:
        return StoreError(f"I/O error on profile database {path}: {text}", hint="check the disk")
    return StoreError(f"profile database {path}: {text}")


# ------------------------------------------------------------------------- helpers


def encode_vector(vec: Vector) -> bytes:
    """float32 little-endian bytes of a 1-D vector (the BLOB and base64 payload)."""
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def decode_vector(blob: bytes, dim: int) -> Vector:
    """The inverse of :func:`encode_vector`; ``ValueError`` when the length is wrong."""
    if len(blob) != 4 * dim:
        raise ValueError(f"{len(blob)} bytes, expected {4 * dim} for dimension {dim}")
    out = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    out.setflags(write=False)
    return out


class _Codec:
    """Vectors to BLOBs and back: in clear (``key`` None) or AES-GCM encrypted."""

    __slots__ = ("key",)

    def __init__(self, key: TemplateKey | None) -> None:
        self.key = key

    @property
    def key_id(self) -> str | None:
        return None if self.key is None else self.key.key_id

    def seal(self, vec: Vector, pid: str, kind: Kind, idx: int) -> tuple[int, bytes]:
        """``(enc, blob)`` of a vector at (profile ``pid``, ``kind``, ``idx``)."""
        raw = encode_vector(vec)
        if self.key is None:
            return 0, raw
        return 1, self.key.encrypt(raw, profile_id=pid, kind=kind, index=idx)

    def open(self, blob: bytes, enc: int, dim: int, pid: str, kind: Kind, idx: int) -> Vector:
        """The vector of a row. ``ValueError`` for a malformed or misplaced row (a row in
        clear in an encrypted database, or the reverse), ``TemplateAuthError`` for one
        that does not authenticate."""
        if self.key is None:
            if enc:
                raise ValueError(f"{kind} {idx} is encrypted but the database has no key id")
            return decode_vector(blob, dim)
        if not enc:
            raise ValueError(f"{kind} {idx} is stored in clear in an encrypted database")
        raw = self.key.decrypt(bytes(blob), profile_id=pid, kind=kind, index=idx)
        return decode_vector(raw, dim)


def _check_fingerprint(fingerprint: str) -> str:
    if not isinstance(fingerprint, str) or not fingerprint.strip():
        raise ProfileError("model fingerprint must be a non-empty string")
    return fingerprint


def _check_utterances(
    utterances: Iterable[Utterance], dim: int | None = None
) -> tuple[Utterance, ...]:
    utts = tuple(utterances)
    if not utts:
        raise ProfileError("a profile needs at least one utterance")
    for i, utt in enumerate(utts):
        if not isinstance(utt, Utterance):
            raise ProfileError(f"utterance {i} is a {type(utt).__name__}, not an Utterance")
        want = dim if dim is not None else utts[0].dim
        check_vector(utt.embedding, what=f"utterance {i} embedding", dim=want)
        if not math.isfinite(utt.speech_s) or utt.speech_s < 0:
            raise ProfileError(f"utterance {i} speech_s must be >= 0, got {utt.speech_s}")
    return utts


def _split_sql(script: str) -> list[str]:
    """Statements of a script (``executescript`` would commit our transaction)."""
    out: list[str] = []
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            lines = [ln for ln in buf.splitlines() if not ln.strip().startswith("--")]
            stmt = "\n".join(lines).strip()
            if stmt != ";":
                out.append(stmt)
            buf = ""
    if buf.strip(" \n\t;"):
        out.append(buf)
    return out


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- store


class ProfileStore:
    """Enrolled profiles, their utterance embeddings and per-model thresholds.

    Open with :meth:`open`. Methods are safe to call from several threads (one
    connection, serialised by a lock); several processes may open the same file
    (SQLite locking, writers wait up to ``timeout`` seconds).
    """

    def __init__(
        self, conn: sqlite3.Connection, path: Path, key: TemplateKey | None = None
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._codec = _Codec(key)
        self._lock = threading.RLock()
        #: Profiles encrypted while opening (``encrypt=True`` on a database in clear).
        self.encrypted_on_open = 0

    # ---------------------------------------------------------------- open/close

    @classmethod
    def open(
        cls,
        path: Path | str | None = None,
        *,
        timeout: float = 5.0,
        check: bool = True,
        key: TemplateKey | None = None,
        encrypt: bool = False,
    ) -> ProfileStore:
        """Open (creating if needed) the database at ``path``
        (default ``state_dir()/profiles.db``) and migrate it to the current schema.

        ``check`` runs ``PRAGMA quick_check`` first. Raises ``StoreError`` for a
        corrupt or foreign file, a newer schema, a locked or unwritable database.

        ``key``: templates are encrypted with it. A new or empty database is bound to
        the key (its id is stored); an encrypted database must be opened with its key
        (else ``StoreError``); a database holding profiles in clear is refused unless
        ``encrypt``, which encrypts all of them in one transaction
        (:attr:`encrypted_on_open` tells how many).
        """
        if encrypt and key is None:
            raise ConfigError("encrypting the profile database needs a key")
        db = Path(path).expanduser() if path is not None else state_dir() / DB_NAME
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise _cannot_write(db, f"{db.parent} is not a directory") from None
        except NotADirectoryError:
            raise _cannot_write(db, "a parent of it is not a directory") from None
        except PermissionError:
            raise _cannot_write(db) from None
        except OSError as exc:
            raise _cannot_write(db, exc.strerror or str(exc)) from None
        if not db.parent.is_dir():
            raise _cannot_write(db, f"{db.parent} is not a directory")
        if db.exists() and not db.is_file():
            raise StoreError(f"{db} is not a regular file", hint="choose another --db")
        # WAL needs to create PATH-wal and PATH-shm next to the database.
        if not os.access(db.parent, os.W_OK | os.X_OK) or (
            db.exists() and not os.access(db, os.R_OK | os.W_OK)
        ):
            raise _cannot_write(db)
        try:
            conn = sqlite3.connect(
                str(db), timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise _translate_sqlite(db, exc) from None
        try:
            _prepare(conn, db, check=check)
            store = cls(conn, db, key)
            store.encrypted_on_open = store._bind_key(encrypt=encrypt)
        except BaseException:
            conn.close()
            raise
        if store.encrypted_on_open:
            store._checkpoint()  # the templates in clear leave the WAL too
        return store

    @property
    def path(self) -> Path:
        return self._path

    @property
    def encrypted(self) -> bool:
        """True when the templates are encrypted (the store was opened with a key)."""
        return self._codec.key is not None

    @property
    def key_id(self) -> str | None:
        """The id of the key the templates are encrypted with (None: in clear)."""
        return self._codec.key_id

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None

    def __enter__(self) -> ProfileStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------- transactions

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"profile database {self._path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _tx(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction (``BEGIN IMMEDIATE`` for writes): commit or roll back."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    self._check_key(conn)
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise _translate_sqlite(self._path, exc) from None
            except TemplateAuthError as exc:
                raise StoreError(
                    f"profile database {self._path}: {exc.message}",
                    hint="its templates were altered or moved between profiles; "
                    "restore a backup or re-enroll",
                ) from None

    def _check_key(self, conn: sqlite3.Connection) -> None:
        """Refuse to go on when another process encrypted the database or rotated its
        key since this store opened it (writing with the old key would mix keys)."""
        stored = _stored_key_id(conn)
        mine = self._codec.key_id
        if stored == mine:
            return
        if mine is None:
            raise StoreError(
                f"profile database {self._path} was encrypted by another process "
                "since it was opened",
                hint="restart voiceid with the key configured",
            )
        if stored is None:
            raise _corrupt(self._path, "its key id was removed")
        raise StoreError(
            f"the profile key of {self._path} was changed (key id {stored}) since it was "
            f"opened with key {mine}",
            hint="restart voiceid with the new key (voiceid key rotate)",
        )

    def _bind_key(self, *, encrypt: bool) -> int:
        """Check the key against the database (at open); bind an empty database to it,
        encrypt one in clear when asked. Returns the number of profiles encrypted."""
        key = self._codec.key
        n = 0
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    stored = _stored_key_id(conn)
                    if stored is not None:
                        if key is None:
                            raise StoreError(
                                f"profile database {self._path} is encrypted: "
                                "configure security.profile_key_file",
                                hint="or security.profile_key_credential; commands read "
                                "$VOICEID_SECURITY__PROFILE_KEY_FILE; the key it was "
                                f"encrypted with has key id {stored}",
                            )
                        if stored != key.key_id:
                            raise StoreError(
                                f"wrong profile key for {self._path}: it was encrypted with "
                                f"key id {stored}, {key.source} has key id {key.key_id}",
                                hint="configure the key the database was encrypted with",
                            )
                    elif key is not None:
                        n = int(conn.execute("SELECT count(*) FROM profiles").fetchone()[0])
                        if n and not encrypt:
                            raise StoreError(
                                f"profile database {self._path} holds {n} profile(s) in clear "
                                "but a profile key is configured",
                                hint=f"encrypt them once: voiceid --db {self._path} profiles "
                                "encrypt --key-file FILE (or remove the key from the config)",
                            )
                        _reseal(conn, _Codec(None), self._codec)
                        conn.execute(
                            "INSERT INTO meta (key, value) VALUES (?, ?)", (KEY_ID, key.key_id)
                        )
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _translate_sqlite(self._path, exc) from None
            except (TemplateAuthError, ValueError) as exc:
                raise _corrupt(self._path, str(exc)) from None
        if n:
            log.info("%s: encrypted %d profile(s) with key %s", self._path, n, key and key.key_id)
        return n

    # ----------------------------------------------------------------- keys

    def rotate_key(self, old: TemplateKey, new: TemplateKey) -> int:
        """Re-encrypt every template from ``old`` (the key this store was opened with)
        to ``new``, in one transaction; the store then uses ``new``. Returns the number
        of profiles. The old ciphertexts are overwritten (secure_delete) and leave the
        WAL. Other processes that hold the database open with ``old`` refuse to read or
        write from then on (they must be restarted with ``new``)."""
        if self._codec.key is None:
            raise StoreError(
                f"profile database {self._path} is not encrypted: there is no key to rotate",
                hint="encrypt it first: voiceid profiles encrypt --key-file FILE",
            )
        if old != self._codec.key:
            raise StoreError(
                f"the old key ({old.source}, key id {old.key_id}) is not the key of "
                f"{self._path} (key id {self._codec.key_id})",
                hint="give the key the database is encrypted with as the old key",
            )
        if new == old:
            raise ConfigError("the new key is the old key", hint="make one: voiceid key new FILE")
        target = _Codec(new)
        with self._lock:  # no other thread sees the new key id with the old codec
            with self._tx(write=True) as conn:
                try:
                    n = _reseal(conn, self._codec, target)
                except ValueError as exc:
                    raise _corrupt(self._path, str(exc)) from None
                conn.execute("UPDATE meta SET value = ? WHERE key = ?", (new.key_id, KEY_ID))
            self._codec = target  # committed
        self._checkpoint()
        log.info("%s: %d profile(s) re-encrypted with key %s", self._path, n, new.key_id)
        return n

    def _checkpoint(self) -> None:
        """Move the WAL into the file and truncate it (deleted data leaves the WAL)."""
        with self._lock:
            conn = self._connection()
            try:
                for attempt in range(20):
                    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                    if not busy:
                        return
                    time.sleep(0.005 * (attempt + 1))
            except sqlite3.Error as exc:
                raise _translate_sqlite(self._path, exc) from None
            log.warning(
                "%s: WAL checkpoint blocked by another reader; deleted data stays in %s-wal "
                "until the next checkpoint",
                self._path,
                self._path,
            )

    # ---------------------------------------------------------------- profiles

    def add(
        self,
        name: str,
        fingerprint: str,
        model_name: str,
        utterances: Sequence[Utterance],
        metadata: Mapping[str, str] | None = None,
    ) -> Profile:
        """Enroll a new profile (one transaction). Duplicate name (case-insensitive)
        → ``ProfileError``."""
        name = check_name(name)
        fingerprint = _check_fingerprint(fingerprint)
        utts = _check_utterances(utterances)
        meta = check_metadata(metadata)
        now = time.time()
        profile = Profile(
            id=uuid.uuid4().hex,
            name=name,
            fingerprint=fingerprint,
            model_name=str(model_name),
            centroid=centroid([u.embedding for u in utts]),
            utterances=utts,
            created=now,
            updated=now,
            metadata=meta,
        )
        with self._tx(write=True) as conn:
            self._refuse_duplicate(conn, name)
            _insert(conn, profile, self._codec)
        return profile

    def get(self, name_or_id: str) -> Profile:
        """The profile with this id or (case-insensitive) name; else ``ProfileError``."""
        with self._tx(write=False) as conn:
            return _load(conn, self._resolve(conn, name_or_id), self._codec)

    def list(self, fingerprint: str | None = None) -> builtins.list[ProfileSummary]:
        """All profiles (or those of one model ``fingerprint``) by name, without
        their utterances."""
        sql = (
            "SELECT p.id, p.name, p.fingerprint, p.model_name, p.created, p.updated,"
            " p.metadata, c.dim, c.enc, c.vector,"
            " (SELECT count(*) FROM utterances u WHERE u.profile_id = p.id),"
            " (SELECT total(u.speech_s) FROM utterances u WHERE u.profile_id = p.id)"
            " FROM profiles p JOIN centroids c ON c.profile_id = p.id AND c.idx = 0"
        )
        args: tuple[str, ...] = ()
        if fingerprint is not None:
            sql += " WHERE p.fingerprint = ?"
            args = (fingerprint,)
        sql += " ORDER BY p.name"
        out: builtins.list[ProfileSummary] = []
        with self._tx(write=False) as conn:
            for row in conn.execute(sql, args):
                pid, name, fp, model, created, updated, meta, dim, enc, blob, n, speech = row
                out.append(
                    ProfileSummary(
                        id=pid,
                        name=name,
                        fingerprint=fp,
                        model_name=model,
                        centroid=self._vector(blob, enc, dim, pid, name),
                        n_utterances=int(n),
                        speech_s=float(speech),
                        created=created,
                        updated=updated,
                        metadata=self._metadata(meta, name),
                    )
                )
        return out

    def names(self) -> builtins.list[str]:
        """Profile names, sorted."""
        with self._tx(write=False) as conn:
            return [r[0] for r in conn.execute("SELECT name FROM profiles ORDER BY name")]

    def count(self) -> int:
        with self._tx(write=False) as conn:
            return int(conn.execute("SELECT count(*) FROM profiles").fetchone()[0])

    def __len__(self) -> int:
        return self.count()

    def __contains__(self, name_or_id: object) -> bool:
        if not isinstance(name_or_id, str):
            return False
        with self._tx(write=False) as conn:
            return self._find(conn, name_or_id) is not None

    def replace_utterances(
        self,
        name_or_id: str,
        utterances: Sequence[Utterance],
        *,
        fingerprint: str | None = None,
        model_name: str | None = None,
    ) -> Profile:
        """Re-enroll: replace all utterances and the centroid (one transaction),
        optionally with another model (``fingerprint``/``model_name``). Keeps id,
        name, ``created`` and metadata. The old embeddings are securely deleted."""
        utts = _check_utterances(utterances)
        if fingerprint is not None:
            fingerprint = _check_fingerprint(fingerprint)
        new_centroid = centroid([u.embedding for u in utts])
        with self._tx(write=True) as conn:
            old = _load(conn, self._resolve(conn, name_or_id), self._codec)
            profile = Profile(
                id=old.id,
                name=old.name,
                fingerprint=fingerprint if fingerprint is not None else old.fingerprint,
                model_name=str(model_name) if model_name is not None else old.model_name,
                centroid=new_centroid,
                utterances=utts,
                created=old.created,
                updated=max(time.time(), old.updated),
                metadata=old.metadata,
            )
            _delete_vectors(conn, old.id)
            _insert_vectors(conn, profile, self._codec)
            conn.execute(
                "UPDATE profiles SET fingerprint = ?, model_name = ?, updated = ? WHERE id = ?",
                (profile.fingerprint, profile.model_name, profile.updated, profile.id),
            )
        self._checkpoint()
        return profile

    def add_utterances(
        self, name_or_id: str, fingerprint: str, utterances: Sequence[Utterance]
    ) -> Profile:
        """Append utterances (of the model ``fingerprint``, which must be the one the
        profile was enrolled with) and recompute the centroid; one transaction."""
        fingerprint = _check_fingerprint(fingerprint)
        new = _check_utterances(utterances)
        with self._tx(write=True) as conn:
            old = _load(conn, self._resolve(conn, name_or_id), self._codec)
            if old.fingerprint != fingerprint:
                raise ProfileError(
                    f"profile {old.name!r} was enrolled with model {old.model_name} "
                    f"(fingerprint {old.fingerprint}), not {fingerprint}",
                    hint=f"re-enroll {old.name} with the current model instead",
                )
            utts = _check_utterances(old.utterances + new, dim=old.dim)
            profile = Profile(
                id=old.id,
                name=old.name,
                fingerprint=old.fingerprint,
                model_name=old.model_name,
                centroid=centroid([u.embedding for u in utts]),
                utterances=utts,
                created=old.created,
                updated=max(time.time(), old.updated),
                metadata=old.metadata,
            )
            _delete_vectors(conn, old.id)
            _insert_vectors(conn, profile, self._codec)
            conn.execute(
                "UPDATE profiles SET updated = ? WHERE id = ?", (profile.updated, profile.id)
            )
        self._checkpoint()
        return profile

    def update(
        self,
        name_or_id: str,
        *,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Profile:
        """Rename a profile and/or replace its metadata (one transaction)."""
        new_name = check_name(name) if name is not None else None
        meta = check_metadata(metadata) if metadata is not None else None
        with self._tx(write=True) as conn:
            old = _load(conn, self._resolve(conn, name_or_id), self._codec)
            if new_name is not None and new_name.lower() != old.name.lower():
                self._refuse_duplicate(conn, new_name)
            profile = Profile(
                id=old.id,
                name=new_name if new_name is not None else old.name,
                fingerprint=old.fingerprint,
                model_name=old.model_name,
                centroid=old.centroid,
                utterances=old.utterances,
                created=old.created,
                updated=max(time.time(), old.updated),
                metadata=meta if meta is not None else old.metadata,
            )
            conn.execute(
                "UPDATE profiles SET name = ?, metadata = ?, updated = ? WHERE id = ?",
                (profile.name, _dump_metadata(profile.metadata), profile.updated, profile.id),
            )
        return profile

    def delete(self, name_or_id: str) -> str:
        """Delete a profile with its utterances and centroids; returns its name.

        Deleted bytes are zeroed (``secure_delete``) and the WAL is checkpointed
        and truncated, so the embeddings are gone from disk when this returns
        (unless another process holds a read transaction open: then they leave
        the WAL at the next checkpoint)."""
        with self._tx(write=True) as conn:
            pid = self._resolve(conn, name_or_id)
            name = str(conn.execute("SELECT name FROM profiles WHERE id = ?", (pid,)).fetchone()[0])
            _delete_profile(conn, pid)
        self._checkpoint()
        return name

    # -------------------------------------------------------------- thresholds

    def set_threshold(self, fingerprint: str, value: float, source: str = "") -> None:
        """Store the decision threshold (cosine, in [-1, 1]) for a model."""
        fingerprint = _check_fingerprint(fingerprint)
        value = float(value)
        if not math.isfinite(value) or not -1.0 <= value <= 1.0:
            raise ProfileError(f"threshold must be a cosine in [-1, 1], got {value}")
        with self._tx(write=True) as conn:
            conn.execute(
                "INSERT INTO thresholds (fingerprint, value, source, updated) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (fingerprint) DO UPDATE SET value = excluded.value,"
                " source = excluded.source, updated = excluded.updated",
                (fingerprint, value, str(source), time.time()),
            )

    def get_threshold(self, fingerprint: str) -> float | None:
        """The stored threshold for a model, or ``None``."""
        with self._tx(write=False) as conn:
            row = conn.execute(
                "SELECT value FROM thresholds WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
        return None if row is None else float(row[0])

    # -------------------------------------------------------------- integrity

    def integrity_check(self) -> str:
        """``"ok"``, or one problem per line: SQLite's ``integrity_check`` and
        ``foreign_key_check`` plus voiceid's own invariants (every profile has a
        centroid 0 and at least one utterance, dimensions agree, every template is in
        the database's form and, when encrypted, authenticates with the key)."""
        problems: builtins.list[str] = []
        with self._tx(write=False) as conn:
            rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
            if rows != ["ok"]:
                problems.extend(rows)
            problems.extend(
                f"foreign key violation in {r[0]} row {r[1]}"
                for r in conn.execute("PRAGMA foreign_key_check")
            )
            for (name,) in conn.execute(
                "SELECT name FROM profiles p WHERE NOT EXISTS"
                " (SELECT 1 FROM centroids c WHERE c.profile_id = p.id AND c.idx = 0)"
            ):
                problems.append(f"profile {name!r} has no centroid")
            for (name,) in conn.execute(
                "SELECT name FROM profiles p WHERE NOT EXISTS"
                " (SELECT 1 FROM utterances u WHERE u.profile_id = p.id)"
            ):
                problems.append(f"profile {name!r} has no utterances")
            for (name,) in conn.execute(
                "SELECT DISTINCT p.name FROM profiles p JOIN centroids c ON c.profile_id = p.id"
                " JOIN utterances u ON u.profile_id = p.id WHERE u.dim != c.dim"
            ):
                problems.append(f"profile {name!r} mixes embedding dimensions")
            problems.extend(self._template_problems(conn))
        return "\n".join(problems) if problems else "ok"

    def _template_problems(self, conn: sqlite3.Connection) -> builtins.list[str]:
        out: builtins.list[str] = []
        tables: tuple[tuple[Kind, str, str], ...] = (
            ("centroid", "centroids", "vector"),
            ("utterance", "utterances", "embedding"),
        )
        for kind, table, column in tables:
            for pid, name, idx, dim, enc, blob in conn.execute(
                f"SELECT t.profile_id, p.name, t.idx, t.dim, t.enc, t.{column}"
                f" FROM {table} t JOIN profiles p ON p.id = t.profile_id"
            ):
                try:
                    self._codec.open(blob, enc, dim, pid, kind, idx)
                except (ValueError, TemplateAuthError) as exc:
                    out.append(f"profile {name!r}: {exc}")
        return out

    # ---------------------------------------------------------- export/import

    def export_json(
        self, path: Path | str, names: Iterable[str] | None = None
    ) -> builtins.list[str]:
        """Write profiles (all, or ``names``) to ``path`` in the documented JSON
        format (docs/profiles-format.md), atomically, mode 0600. Returns the names."""
        target = Path(path).expanduser()
        with self._tx(write=False) as conn:
            if names is None:
                ids = [r[0] for r in conn.execute("SELECT id FROM profiles ORDER BY name")]
            else:
                ids = list(dict.fromkeys(self._resolve(conn, n) for n in names))
            profiles = [_load(conn, pid, self._codec) for pid in ids]
        doc = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "profiles": [_profile_to_json(p) for p in profiles],
        }
        _write_atomic(target, (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode())
        return [p.name for p in profiles]

    def import_json(self, path: Path | str, *, replace: bool = False) -> builtins.list[str]:
        """Import the profiles of an export file; returns their names.

        Everything is validated before anything is written, and all profiles are
        written in one transaction: on any error the database is unchanged. A
        profile whose name (case-insensitive) or id already exists is an error,
        unless ``replace``: then the existing profile(s) are deleted first.
        """
        source = Path(path).expanduser()
        try:
            raw = source.read_bytes()
        except OSError as exc:
            raise ProfileError(
                f"cannot read {source}: {exc.strerror or exc}", hint="check the path"
            ) from None
        profiles = parse_export(raw, source=str(source))
        replaced = False
        with self._tx(write=True) as conn:
            conflicts: builtins.list[tuple[str, str]] = []
            for p in profiles:
                for pid, name in conn.execute(
                    "SELECT id, name FROM profiles WHERE id = ? OR name = ?", (p.id, p.name)
                ):
                    conflicts.append((pid, name))
            if conflicts and not replace:
                shown = ", ".join(sorted({n for _, n in conflicts}))
                raise ProfileError(
                    f"{source}: profiles already enrolled: {shown}; nothing was imported",
                    hint="delete them first, or import with --replace",
                )
            for pid in dict.fromkeys(pid for pid, _ in conflicts):
                _delete_profile(conn, pid)
                replaced = True
            for p in profiles:
                _insert(conn, p, self._codec)
        if replaced:
            self._checkpoint()
        return [p.name for p in profiles]

    # ------------------------------------------------------------------ private

    def _find(self, conn: sqlite3.Connection, name_or_id: str) -> str | None:
        key = name_or_id.strip()
        if looks_like_id(key):
            row = conn.execute("SELECT id FROM profiles WHERE id = ?", (key,)).fetchone()
            if row is not None:
                return str(row[0])
        row = conn.execute("SELECT id FROM profiles WHERE name = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _resolve(self, conn: sqlite3.Connection, name_or_id: str) -> str:
        if not isinstance(name_or_id, str):
            raise ProfileError(f"profile name must be a string, got {type(name_or_id).__name__}")
        pid = self._find(conn, name_or_id)
        if pid is None:
            raise ProfileError(f"no profile named {name_or_id!r}", hint=_NAMES_HINT)
        return pid

    def _refuse_duplicate(self, conn: sqlite3.Connection, name: str) -> None:
        row = conn.execute("SELECT name FROM profiles WHERE name = ?", (name,)).fetchone()
        if row is not None:
            raise ProfileError(
                f"a profile named {row[0]!r} already exists (names ignore case)",
                hint=f"choose another name, or remove it first: voiceid profiles delete {row[0]}",
            )

    def _vector(self, blob: bytes, enc: int, dim: int, pid: str, name: str) -> Vector:
        """Centroid 0 of profile ``pid``."""
        try:
            return self._codec.open(blob, enc, dim, pid, "centroid", 0)
        except ValueError as exc:
            raise _corrupt(self._path, f"centroid of {name!r}: {exc}") from None
        except TemplateAuthError as exc:
            raise TemplateAuthError(f"profile {name!r}: {exc.message}") from None

    def _metadata(self, text: str, name: str) -> dict[str, str]:
        try:
            return check_metadata(json.loads(text))
        except (ValueError, ProfileError) as exc:
            raise _corrupt(self._path, f"metadata of {name!r}: {exc}") from None


# ----------------------------------------------------------------- open helpers


def _prepare(conn: sqlite3.Connection, path: Path, *, check: bool) -> None:
    """Validate a freshly opened file, set the pragmas and migrate it."""
    try:
        # The first read parses the header: "file is not a database" shows here.
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        tables = {
            str(r[0])
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        if check:
            rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check")]
            if rows != ["ok"]:
                raise _corrupt(path, "integrity check failed: " + "; ".join(rows[:5]))
    except sqlite3.Error as exc:
        err = _translate_sqlite(path, exc)
        if "locked" in err.message:
            raise err from None
        raise _corrupt(path, str(exc)) from None
    if tables and (app_id != APPLICATION_ID or "schema_version" not in tables):
        raise _corrupt(
            path,
            f"an SQLite database of another application (application_id {app_id}, "
            f"tables: {', '.join(sorted(tables))})",
        )
    if not tables and app_id not in (0, APPLICATION_ID):
        raise _corrupt(path, f"an SQLite database of another application (application_id {app_id})")
    version = _read_version(conn, path) if tables else 0
    if version > schema_version():
        raise StoreError(
            f"profile database {path} was created by a newer voiceid "
            f"(schema version {version}; this voiceid knows up to {schema_version()})",
            hint="upgrade voiceid, or use another --db",
        )
    try:
        mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        raise _translate_sqlite(path, exc) from None
    if mode != "wal":
        raise _cannot_write(path, f"cannot switch to WAL mode (journal_mode is {mode})")
    _migrate(conn, path)
    try:
        tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error as exc:
        raise _translate_sqlite(path, exc) from None
    missing = _TABLES - tables
    if missing:
        raise _corrupt(path, f"missing tables: {', '.join(sorted(missing))}")


def _read_version(conn: sqlite3.Connection, path: Path) -> int:
    try:
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
    except sqlite3.Error as exc:
        raise _corrupt(path, f"cannot read schema_version: {exc}") from None
    if len(rows) != 1 or not isinstance(rows[0][0], int):
        raise _corrupt(path, f"bad schema_version table: {rows[:3]!r}")
    return int(rows[0][0])


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the missing migrations, each in its own transaction. Re-reads the
    version under the write lock, so concurrent openers do not collide."""
    target = schema_version()
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                has_table = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
                ).fetchone()
                version = _read_version(conn, path) if has_table else 0
                if version >= target:
                    conn.execute("COMMIT")
                    if version > target:
                        raise StoreError(
                            f"profile database {path} was created by a newer voiceid "
                            f"(schema version {version}; this voiceid knows up to {target})",
                            hint="upgrade voiceid, or use another --db",
                        )
                    return
                for stmt in _split_sql(MIGRATIONS[version]):
                    conn.execute(stmt)
                conn.execute("UPDATE schema_version SET version = ?", (version + 1,))
                conn.execute("COMMIT")
                log.info("%s: migrated profile schema %d -> %d", path, version, version + 1)
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _translate_sqlite(path, exc) from None


# ------------------------------------------------------------------ row helpers


def _dump_metadata(metadata: Mapping[str, str]) -> str:
    return json.dumps(dict(metadata), sort_keys=True, ensure_ascii=False)


def _stored_key_id(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (KEY_ID,)).fetchone()
    return None if row is None else str(row[0])


def _reseal(conn: sqlite3.Connection, old: _Codec, new: _Codec) -> int:
    """Rewrite every vector BLOB from ``old``'s form to ``new``'s (inside the caller's
    transaction). Returns the number of profiles touched. ``ValueError`` or
    ``TemplateAuthError`` for a row ``old`` cannot read (nothing is then committed)."""
    profiles: set[str] = set()
    # (table, BLOB column, the kind bound into each sealed vector): fixed names, not input
    tables: tuple[tuple[str, str, Kind], ...] = (
        ("centroids", "vector", "centroid"),
        ("utterances", "embedding", "utterance"),
    )
    for table, column, kind in tables:
        rows = conn.execute(f"SELECT profile_id, idx, dim, enc, {column} FROM {table}")
        for pid, idx, dim, enc, blob in rows.fetchall():
            vec = old.open(blob, enc, dim, pid, kind, idx)
            new_enc, new_blob = new.seal(vec, pid, kind, idx)
            conn.execute(
                f"UPDATE {table} SET enc = ?, {column} = ? WHERE profile_id = ? AND idx = ?",
                (new_enc, new_blob, pid, idx),
            )
            profiles.add(pid)
    return len(profiles)


def _insert(conn: sqlite3.Connection, p: Profile, codec: _Codec) -> None:
    conn.execute(
        "INSERT INTO profiles (id, name, fingerprint, model_name, created, updated, metadata)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            p.id,
            p.name,
            p.fingerprint,
            p.model_name,
            p.created,
            p.updated,
            _dump_metadata(p.metadata),
        ),
    )
    _insert_vectors(conn, p, codec)


def _insert_vectors(conn: sqlite3.Connection, p: Profile, codec: _Codec) -> None:
    enc, blob = codec.seal(p.centroid, p.id, "centroid", 0)
    conn.execute(
        "INSERT INTO centroids (profile_id, idx, kind, dim, enc, vector)"
        " VALUES (?, 0, 'mean', ?, ?, ?)",
        (p.id, p.dim, enc, blob),
    )
    rows = []
    for i, u in enumerate(p.utterances):
        enc, blob = codec.seal(u.embedding, p.id, "utterance", i)
        rows.append((p.id, i, u.dim, enc, blob, u.speech_s, u.source))
    conn.executemany(
        "INSERT INTO utterances (profile_id, idx, dim, enc, embedding, speech_s, source)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def _delete_vectors(conn: sqlite3.Connection, pid: str) -> None:
    conn.execute("DELETE FROM utterances WHERE profile_id = ?", (pid,))
    conn.execute("DELETE FROM centroids WHERE profile_id = ?", (pid,))


def _delete_profile(conn: sqlite3.Connection, pid: str) -> None:
    _delete_vectors(conn, pid)
    conn.execute("DELETE FROM profiles WHERE id = ?", (pid,))


def _load(conn: sqlite3.Connection, pid: str, codec: _Codec) -> Profile:
    row = conn.execute(
        "SELECT p.id, p.name, p.fingerprint, p.model_name, p.created, p.updated, p.metadata,"
        " c.dim, c.enc, c.vector FROM profiles p LEFT JOIN centroids c"
        " ON c.profile_id = p.id AND c.idx = 0 WHERE p.id = ?",
        (pid,),
    ).fetchone()
    if row is None:
        raise ProfileError(f"no profile with id {pid}", hint=_NAMES_HINT)
    pid, name, fp, model, created, updated, meta, dim, enc, blob = row
    if blob is None:
        raise sqlite3.DatabaseError(f"database disk image is malformed: {name!r} has no centroid")
    try:
        vec = codec.open(blob, enc, dim, pid, "centroid", 0)
        metadata = check_metadata(json.loads(meta))
        utts = tuple(
            Utterance(codec.open(e, en, d, pid, "utterance", i), s, src)
            for i, d, en, e, s, src in conn.execute(
                "SELECT idx, dim, enc, embedding, speech_s, source FROM utterances"
                " WHERE profile_id = ? ORDER BY idx",
                (pid,),
            )
        )
    except (ValueError, ProfileError) as exc:
        raise sqlite3.DatabaseError(f"database disk image is malformed: {name!r}: {exc}") from None
    except TemplateAuthError as exc:
        raise TemplateAuthError(f"profile {name!r}: {exc.message}") from None
    return Profile(
        id=pid,
        name=name,
        fingerprint=fp,
        model_name=model,
        centroid=vec,
        utterances=utts,
        created=created,
        updated=updated,
        metadata=metadata,
    )


# ------------------------------------------------------------------ export format


def _b64(vec: Vector) -> str:
    return base64.b64encode(encode_vector(vec)).decode("ascii")


def _profile_to_json(p: Profile) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "fingerprint": p.fingerprint,
        "model_name": p.model_name,
        "created": p.created,
        "updated": p.updated,
        "metadata": dict(p.metadata),
        "dim": p.dim,
        "centroid": _b64(p.centroid),
        "utterances": [
            {"embedding": _b64(u.embedding), "speech_s": u.speech_s, "source": u.source}
            for u in p.utterances
        ],
    }


def _write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to a temp file next to ``target`` (mode 0600), fsync, rename."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise _cannot_write(target, (exc.strerror or str(exc)).lower()) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _cannot_write(target, (exc.strerror or str(exc)).lower()) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(parent)


class _Bad(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


def _field(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise _Bad(f"{where}.{key}" if where else key, "missing")
    return obj[key]


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = _field(obj, key, where)
    if not isinstance(value, str):
        raise _Bad(f"{where}.{key}", f"must be a string, got {type(value).__name__}")
    return value


def _number(obj: Mapping[str, Any], key: str, where: str) -> float:
    value = _field(obj, key, where)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"{where}.{key}", f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise _Bad(f"{where}.{key}", f"must be finite, got {value}")
    return float(value)


def _vec_field(obj: Mapping[str, Any], key: str, where: str, dim: int) -> Vector:
    at = f"{where}.{key}"
    text = _field(obj, key, where)
    if not isinstance(text, str):
        raise _Bad(at, f"must be a base64 string, got {type(text).__name__}")
    try:
        blob = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise _Bad(at, f"not valid base64 ({exc})") from None
    try:
        vec = decode_vector(blob, dim)
    except ValueError as exc:
        raise _Bad(at, f"wrong size: {exc}") from None
    if not bool(np.isfinite(vec).all()):
        raise _Bad(at, "contains NaN or infinite values")
    return vec


def _parse_profile(obj: Any, where: str) -> Profile:
    if not isinstance(obj, dict):
        raise _Bad(where, f"must be an object, got {type(obj).__name__}")
    pid = _str(obj, "id", where)
    if not looks_like_id(pid):
        raise _Bad(f"{where}.id", f"must be 32 lowercase hex digits, got {pid!r}")
    try:
        name = check_name(_str(obj, "name", where))
    except ProfileError as exc:
        raise _Bad(f"{where}.name", exc.message) from None
    fingerprint = _str(obj, "fingerprint", where)
    if not fingerprint.strip():
        raise _Bad(f"{where}.fingerprint", "must not be empty")
    model_name = _str(obj, "model_name", where)
    created = _number(obj, "created", where)
    updated = _number(obj, "updated", where)
    meta_obj = _field(obj, "metadata", where)
    try:
        metadata = check_metadata(meta_obj)
    except ProfileError as exc:
        raise _Bad(f"{where}.metadata", exc.message) from None
    dim = _field(obj, "dim", where)
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= MAX_DIM:
        raise _Bad(f"{where}.dim", f"must be an integer in 1..{MAX_DIM}, got {dim!r}")
    cvec = _vec_field(obj, "centroid", where, dim)
    cnorm = float(np.linalg.norm(cvec.astype(np.float64)))
    if abs(cnorm - 1.0) > NORM_TOLERANCE:
        raise _Bad(f"{where}.centroid", f"must have unit norm, got {cnorm:.6g}")
    utt_list = _field(obj, "utterances", where)
    if not isinstance(utt_list, list) or not utt_list:
        raise _Bad(f"{where}.utterances", "must be a non-empty list")
    utts: list[Utterance] = []
    for j, u in enumerate(utt_list):
        at = f"{where}.utterances[{j}]"
        if not isinstance(u, dict):
            raise _Bad(at, f"must be an object, got {type(u).__name__}")
        emb = _vec_field(u, "embedding", at, dim)
        norm = float(np.linalg.norm(emb.astype(np.float64)))
        if not norm > 1e-6:
            raise _Bad(f"{at}.embedding", "is all zeros")
        speech = _number(u, "speech_s", at)
        if speech < 0:
            raise _Bad(f"{at}.speech_s", f"must be >= 0, got {speech}")
        utts.append(Utterance(emb, speech, _str(u, "source", at) if "source" in u else ""))
    try:
        expected = centroid([u.embedding for u in utts])
    except ProfileError as exc:
        raise _Bad(f"{where}.utterances", exc.message) from None
    cos = float(np.dot(expected.astype(np.float64), cvec.astype(np.float64)) / cnorm)
    if cos < CENTROID_MIN_COSINE:
        raise _Bad(
            f"{where}.centroid", f"does not match its utterances (cosine {cos:.4f} to their mean)"
        )
    return Profile(
        id=pid,
        name=name,
        fingerprint=fingerprint,
        model_name=model_name,
        centroid=cvec,
        utterances=tuple(utts),
        created=created,
        updated=updated,
        metadata=metadata,
    )


def parse_export(data: bytes | str, *, source: str = "<export>") -> list[Profile]:
    """Validate and decode an export document (see docs/profiles-format.md).

    Raises ``ProfileError`` naming ``source`` and the JSON path of the first bad
    field, e.g. ``profiles[2].utterances[0].embedding``.
    """
    hint = "the file was not imported; nothing was changed"
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{source}: not valid JSON: {exc}", hint=hint) from None
    try:
        if not isinstance(doc, dict):
            raise _Bad("$", f"must be an object, got {type(doc).__name__}")
        fmt = _field(doc, "format", "")
        if fmt != EXPORT_FORMAT:
            raise _Bad("format", f"must be {EXPORT_FORMAT!r}, got {fmt!r}")
        version = _field(doc, "version", "")
        if isinstance(version, bool) or not isinstance(version, int):
            raise _Bad("version", f"must be an integer, got {version!r}")
        if version != EXPORT_VERSION:
            newer = " (written by a newer voiceid; upgrade voiceid)" if version > 1 else ""
            raise _Bad("version", f"unsupported version {version}{newer}")
        items = _field(doc, "profiles", "")
        if not isinstance(items, list):
            raise _Bad("profiles", f"must be a list, got {type(items).__name__}")
        profiles = [_parse_profile(item, f"profiles[{i}]") for i, item in enumerate(items)]
        seen_names: dict[str, int] = {}
        seen_ids: dict[str, int] = {}
        for i, p in enumerate(profiles):
            if p.name.lower() in seen_names:
                raise _Bad(
                    f"profiles[{i}].name",
                    f"duplicate of profiles[{seen_names[p.name.lower()]}].name ({p.name!r})",
                )
            if p.id in seen_ids:
                raise _Bad(f"profiles[{i}].id", f"duplicate of profiles[{seen_ids[p.id]}].id")
            seen_names[p.name.lower()] = i
            seen_ids[p.id] = i
    except _Bad as bad:
        raise ProfileError(f"{source}: {bad.where}: {bad.message}", hint=hint) from None
    return profiles
