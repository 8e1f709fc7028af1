"""ProfileStore: round trips, names, migrations, refusal of bad files, permissions,
secure delete and crash safety (kill -9 of a writer)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from voiceid.errors import ProfileError, StoreError
from voiceid.profiles import store as store_mod
from voiceid.profiles.model import Utterance, centroid
from voiceid.profiles.store import ProfileStore

DIM = 64


def utts(seed: int, n: int = 3, dim: int = DIM) -> list[Utterance]:
    rng = np.random.default_rng(seed)
    return [
        Utterance(rng.standard_normal(dim).astype(np.float32), 1.5 + i, f"utt{i}.flac")
        for i in range(n)
    ]


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "profiles.db"


@pytest.fixture()
def store(db: Path) -> Iterator[ProfileStore]:
    with ProfileStore.open(db) as s:
        yield s


def file_bytes(path: Path) -> dict[str, bytes]:
    """Every file in path's directory (the DB, -wal, -shm), by name."""
    return {p.name: p.read_bytes() for p in sorted(path.parent.iterdir()) if p.is_file()}


# ------------------------------------------------------------------ basics


def test_default_path_under_state_dir(voiceid_home: Path) -> None:
    with ProfileStore.open() as s:
        assert s.path == voiceid_home / "profiles.db"
    assert (voiceid_home / "profiles.db").is_file()


def test_pragmas_and_schema(store: ProfileStore, db: Path) -> None:
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA application_id").fetchone()[0] == store_mod.APPLICATION_ID
    version = store_mod.schema_version()
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(version,)]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"profiles", "centroids", "utterances", "thresholds", "schema_version"} <= tables
    conn.close()
    assert store.integrity_check() == "ok"


def test_add_get_round_trip(store: ProfileStore, db: Path) -> None:
    u = utts(1)
    p = store.add("Alice", "fp-a", "resnet34", u, {"lang": "en"})
    assert len(p.id) == 32 and p.name == "Alice" and p.created == p.updated
    assert np.allclose(np.linalg.norm(p.centroid), 1.0, atol=1e-6)
    assert np.array_equal(p.centroid, centroid([x.embedding for x in u]))
    assert store.get("Alice") == p
    assert store.get("aLiCe") == p
    assert store.get(p.id) == p
    # survives reopening
    store.close()
    with ProfileStore.open(db) as again:
        got = again.get("alice")
        assert got == p
        assert got.utterances == tuple(u)
        assert got.metadata == {"lang": "en"}
        assert got.speech_s == pytest.approx(1.5 + 2.5 + 3.5)


def test_list_summaries(store: ProfileStore) -> None:
    store.add("bob", "fp-a", "m", utts(2, n=2))
    store.add("Alice", "fp-a", "m", utts(1))
    store.add("carol", "fp-b", "other", utts(3, n=1))
    listed = store.list()
    assert [s.name for s in listed] == ["Alice", "bob", "carol"]
    assert [s.n_utterances for s in listed] == [3, 2, 1]
    assert listed[0].speech_s == pytest.approx(7.5)
    assert np.array_equal(listed[0].centroid, store.get("alice").centroid)
    assert [s.name for s in store.list(fingerprint="fp-b")] == ["carol"]
    assert store.names() == ["Alice", "bob", "carol"]
    assert store.count() == len(store) == 3
    assert "ALICE" in store and "dave" not in store


def test_duplicate_name_is_case_insensitive(store: ProfileStore) -> None:
    store.add("Alice", "fp", "m", utts(1))
    with pytest.raises(ProfileError, match="already exists") as err:
        store.add("ALICE", "fp", "m", utts(2))
    assert "'Alice'" in str(err.value)
    with pytest.raises(ProfileError, match="already exists"):
        store.add("  alice ", "fp", "m", utts(2))
    assert store.count() == 1
    assert store.get("alice").utterances == tuple(utts(1))


def test_unknown_profile(store: ProfileStore) -> None:
    store.add("Alice", "fp", "m", utts(1))
    for call in (store.get, store.delete):
        with pytest.raises(ProfileError, match="no profile named 'bob'") as err:
            call("bob")
        assert "voiceid profiles list" in str(err.value)
    with pytest.raises(ProfileError, match="voiceid profiles list"):
        store.replace_utterances("bob", utts(3))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a\nb", "control"),
        ("x" * 101, "longer"),
        ("0123456789abcdef0123456789ABCDEF", "looks like a profile id"),
    ],
)
def test_bad_names(store: ProfileStore, name: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        store.add(name, "fp", "m", utts(1))
    assert store.count() == 0


def test_bad_utterances(store: ProfileStore) -> None:
    good = utts(1)
    with pytest.raises(ProfileError, match="at least one"):
        store.add("a", "fp", "m", [])
    with pytest.raises(ProfileError, match="dimension"):
        store.add("a", "fp", "m", [*good, *utts(2, n=1, dim=DIM + 1)])
    nan = np.ones(DIM, np.float32)
    nan[3] = np.nan
    with pytest.raises(ProfileError, match="NaN"):
        store.add("a", "fp", "m", [*good, Utterance(nan, 1.0)])
    with pytest.raises(ProfileError, match="zeros"):
        store.add("a", "fp", "m", [Utterance(np.zeros(DIM, np.float32), 1.0)])
    with pytest.raises(ProfileError, match="speech_s"):
        store.add("a", "fp", "m", [Utterance(np.ones(DIM, np.float32), -1.0)])
    with pytest.raises(ProfileError, match="fingerprint"):
        store.add("a", "", "m", good)
    with pytest.raises(ProfileError, match="metadata"):
        store.add("a", "fp", "m", good, {"k": 1})  # type: ignore[dict-item]
    assert store.count() == 0


def test_replace_add_update(store: ProfileStore) -> None:
    p = store.add("Alice", "fp-old", "old-model", utts(1), {"k": "v"})
    q = store.replace_utterances("alice", utts(5, n=2), fingerprint="fp-new", model_name="new")
    assert (q.id, q.name, q.created, q.metadata) == (p.id, p.name, p.created, p.metadata)
    assert (q.fingerprint, q.model_name, len(q.utterances)) == ("fp-new", "new", 2)
    assert q.updated >= p.updated
    assert store.get(p.id) == q

    with pytest.raises(ProfileError, match="enrolled with model new"):
        store.add_utterances("Alice", "fp-old", utts(6, n=1))
    r = store.add_utterances("Alice", "fp-new", utts(6, n=1))
    assert len(r.utterances) == 3
    assert np.array_equal(r.centroid, centroid([u.embedding for u in r.utterances]))
    assert store.get("alice") == r

    store.add("Bob", "fp-new", "new", utts(7))
    with pytest.raises(ProfileError, match="already exists"):
        store.update("alice", name="BOB")
    s = store.update("alice", name="Alicia", metadata={"x": "y"})
    assert (s.name, s.metadata, s.id) == ("Alicia", {"x": "y"}, p.id)
    assert store.get("alicia") == s
    assert store.update("alicia", name="ALICIA").name == "ALICIA"  # case-only rename
    with pytest.raises(ProfileError):
        store.get("Alice")


def test_thresholds(store: ProfileStore) -> None:
    assert store.get_threshold("fp") is None
    store.set_threshold("fp", 0.42, "calibrated on voxceleb")
    assert store.get_threshold("fp") == pytest.approx(0.42)
    store.set_threshold("fp", 0.5, "manual")
    assert store.get_threshold("fp") == pytest.approx(0.5)
    assert store.get_threshold("other") is None
    with pytest.raises(ProfileError, match=r"\[-1, 1\]"):
        store.set_threshold("fp", float("nan"), "x")
    with pytest.raises(ProfileError, match=r"\[-1, 1\]"):
        store.set_threshold("fp", 1.5, "x")


def test_closed_store(db: Path) -> None:
    s = ProfileStore.open(db)
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.names()


def test_threads_share_one_store(store: ProfileStore) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(10):
                store.add(f"t{t}-{i}", "fp", "m", utts(t * 100 + i, n=1))
                store.list()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count() == 40
    assert store.integrity_check() == "ok"


# ------------------------------------------------------------- secure delete


def _present(blobs: dict[str, bytes], needle: bytes) -> list[str]:
    return [name for name, data in blobs.items() if needle in data]


def test_delete_leaves_no_trace(store: ProfileStore, db: Path) -> None:
    for i in range(5):
        store.add(f"other{i}", "fp", "m", utts(100 + i))
    # A distinctive payload: no other bytes in the file look like this.
    secret_utts = [
        Utterance(np.linspace(1.0 + i, 2.0 + i, DIM, dtype=np.float32) * 1.2345, 2.0, "s.wav")
        for i in range(3)
    ]
    secret = store.add("ZZSecretSpeakerQQ", "fp", "m", secret_utts, {"who": "XXmetaYY"})
    for i in range(5, 8):
        store.add(f"other{i}", "fp", "m", utts(100 + i))
    needles = [u.embedding.astype("<f4").tobytes() for u in secret_utts]
    needles.append(secret.centroid.astype("<f4").tobytes())
    needles.append(b"ZZSecretSpeakerQQ")
    needles.append(b"XXmetaYY")
    before = file_bytes(db)
    assert all(_present(before, n) for n in needles), "test payload not found before delete"

    assert store.delete("zzsecretspeakerqq") == "ZZSecretSpeakerQQ"
    after = file_bytes(db)
    for n in needles:
        assert _present(after, n) == [], f"{n[:16]!r} still on disk"
    assert len(after.get("profiles.db-wal", b"")) == 0
    store.close()
    for n in needles:
        assert _present(file_bytes(db), n) == []
    with ProfileStore.open(db) as again:
        assert again.count() == 8
        assert again.integrity_check() == "ok"
        assert "ZZSecretSpeakerQQ" not in again


def test_reenroll_leaves_no_trace_of_old_embeddings(store: ProfileStore, db: Path) -> None:
    old = [Utterance(np.linspace(-3, 7, DIM, dtype=np.float32) * (i + 1.5), 1.0) for i in range(3)]
    store.add("Alice", "fp", "m", old)
    store.add("Bob", "fp", "m", utts(9))
    store.replace_utterances("Alice", utts(10))
    blobs = file_bytes(db)
    for u in old:
        assert _present(blobs, u.embedding.astype("<f4").tobytes()) == []


# ----------------------------------------------------------------- migrations

# A frozen copy of schema v1 as released: a v1 file written by old code.
V1_FIXTURE = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version (version) VALUES (1);
CREATE TABLE profiles (
    id TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 32),
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    fingerprint TEXT NOT NULL, model_name TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, metadata TEXT NOT NULL DEFAULT '{}');
CREATE INDEX profiles_by_fingerprint ON profiles (fingerprint);
CREATE TABLE centroids (
    profile_id TEXT NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL CHECK (idx >= 0), kind TEXT NOT NULL DEFAULT 'mean',
    dim INTEGER NOT NULL CHECK (dim > 0),
    vector BLOB NOT NULL CHECK (length(vector) = 4 * dim), PRIMARY KEY (profile_id, idx));
CREATE TABLE utterances (
    profile_id TEXT NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL CHECK (idx >= 0), dim INTEGER NOT NULL CHECK (dim > 0),
    embedding BLOB NOT NULL CHECK (length(embedding) = 4 * dim),
    speech_s REAL NOT NULL, source TEXT NOT NULL DEFAULT '', PRIMARY KEY (profile_id, idx));
CREATE TABLE thresholds (
    fingerprint TEXT PRIMARY KEY NOT NULL, value REAL NOT NULL,
    source TEXT NOT NULL DEFAULT '', updated REAL NOT NULL);
PRAGMA application_id = 1447250244;
"""
V1_ID = "0123456789abcdef0123456789abcdef"


def make_v1_fixture(path: Path) -> list[Utterance]:
    u = utts(42, n=2, dim=4)
    c = centroid([x.embedding for x in u])
    conn = sqlite3.connect(path)
    conn.executescript(V1_FIXTURE)
    conn.execute(
        "INSERT INTO profiles VALUES (?, 'Legacy', 'fp-v1', 'm1', 100.0, 200.0, '{\"a\": \"b\"}')",
        (V1_ID,),
    )
    conn.execute(
        "INSERT INTO centroids VALUES (?, 0, 'mean', 4, ?)", (V1_ID, c.astype("<f4").tobytes())
    )
    for i, x in enumerate(u):
        conn.execute(
            "INSERT INTO utterances VALUES (?, ?, 4, ?, ?, ?)",
            (V1_ID, i, x.embedding.astype("<f4").tobytes(), x.speech_s, x.source),
        )
    conn.execute("INSERT INTO thresholds VALUES ('fp-v1', 0.3, 'cal', 1.0)")
    conn.commit()
    conn.close()
    return u


def test_v0_empty_files_are_migrated(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()  # 0 bytes: a valid, empty SQLite database
    blank = tmp_path / "blank.db"
    sqlite3.connect(blank).execute("VACUUM").connection.close()
    for path in (empty, blank):
        with ProfileStore.open(path) as s:
            assert s.count() == 0
            s.add("a", "fp", "m", utts(1))
        conn = sqlite3.connect(path)
        version = store_mod.schema_version()
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(version,)]
        conn.close()


def test_v1_fixture_opens(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    u = make_v1_fixture(path)
    with ProfileStore.open(path) as s:
        p = s.get("legacy")
        assert (p.id, p.fingerprint, p.model_name, p.created, p.updated) == (
            V1_ID,
            "fp-v1",
            "m1",
            100.0,
            200.0,
        )
        assert p.utterances == tuple(u) and p.metadata == {"a": "b"}
        assert s.get_threshold("fp-v1") == pytest.approx(0.3)
        assert s.integrity_check() == "ok"


def test_forward_migration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v1.db"
    make_v1_fixture(path)
    v2 = "ALTER TABLE profiles ADD COLUMN note TEXT NOT NULL DEFAULT ''; -- a comment; with ;\n"
    v2 += "CREATE INDEX centroids_kind ON centroids (kind);"
    current = store_mod.schema_version()
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, v2])
    with ProfileStore.open(path) as s:
        assert s.get("Legacy").id == V1_ID
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(current + 1,)]
    assert conn.execute("SELECT note FROM profiles").fetchall() == [("",)]
    conn.close()


def test_failed_migration_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v1.db"
    make_v1_fixture(path)
    bad = "CREATE TABLE half_done (a); INSERT INTO no_such_table VALUES (1);"
    current = store_mod.schema_version()
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, bad])
    with pytest.raises(StoreError):
        ProfileStore.open(path)
    conn = sqlite3.connect(path)
    # the good migrations (v1 -> current) are committed one by one; the bad one is not
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(current,)]
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name='half_done'").fetchall() == []
    conn.close()


def test_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    make_v1_fixture(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    before = file_bytes(path)
    with pytest.raises(StoreError, match="created by a newer voiceid") as err:
        ProfileStore.open(path)
    assert str(path) in str(err.value) and "99" in str(err.value)
    assert file_bytes(path) == before


# -------------------------------------------------------------- refused files


def _assert_refused_unchanged(path: Path) -> StoreError:
    before = file_bytes(path)
    with pytest.raises(StoreError) as err:
        ProfileStore.open(path)
    assert str(path) in str(err.value)
    assert "move it aside; voiceid never overwrites it" in str(err.value)
    assert file_bytes(path) == before, "a refused database file was modified"
    return err.value


def test_random_bytes_refused(tmp_path: Path) -> None:
    path = tmp_path / "random.db"
    path.write_bytes(np.random.default_rng(0).bytes(16384))
    _assert_refused_unchanged(path)


def test_text_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("hello, this is not a database\n" * 40)
    _assert_refused_unchanged(path)


def _real_db(path: Path, n: int = 40) -> None:
    with ProfileStore.open(path) as s:
        for i in range(n):
            s.add(f"p{i}", "fp", "m", utts(i, dim=256))
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_db_refused(tmp_path: Path, fraction: float) -> None:
    path = tmp_path / "trunc.db"
    _real_db(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    _assert_refused_unchanged(path)


def test_damaged_pages_refused(tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    _real_db(path)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    page = 4096
    for p in range(1, len(data) // page, 3):  # keep the header page, trash every 3rd page
        data[p * page : (p + 1) * page] = rng.bytes(page)
    path.write_bytes(bytes(data))
    _assert_refused_unchanged(path)


def test_other_application_db_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)")
    conn.execute("INSERT INTO moz_places (url) VALUES ('https://example.org')")
    conn.commit()
    conn.close()
    err = _assert_refused_unchanged(path)
    assert "another application" in str(err)


def test_directory_as_db_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="not a regular file"):
        ProfileStore.open(tmp_path / "dir.db")


# ---------------------------------------------------------------- permissions


def test_parent_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("I am a file")
    for path in (blocker / "profiles.db", blocker / "sub" / "profiles.db"):
        with pytest.raises(StoreError, match="cannot write") as err:
            ProfileStore.open(path)
        assert str(path) in str(err.value)
        assert "choose another --db or fix permissions" in str(err.value)
    assert blocker.read_text() == "I am a file"


NOBODY = 65534


def _open_unprivileged(path: Path) -> str:
    """Open ``path`` as a user without write access: as ``nobody`` in a forked
    child when running as root (root ignores permissions; the venv's interpreter
    lives under /root, so exec'ing it as nobody is not possible), else in this
    process."""

    def attempt() -> str:
        try:
            ProfileStore.open(path).close()
        except StoreError as exc:
            return f"StoreError: {exc}"
        return "opened"

    if os.geteuid() != 0:
        return attempt()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop root for good, try, report, exit without cleanup
        code = 0
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            msg = attempt()
        except BaseException as exc:
            msg, code = f"child failed: {exc!r}", 1
        os.write(write_fd, msg.encode())
        os.close(write_fd)
        os._exit(code)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    out = b"".join(chunks).decode()
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out


@pytest.fixture()
def shared_tmp() -> Iterator[Path]:
    """A temp dir that an unprivileged user can traverse (pytest's tmp is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="voiceid-perm-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        for p in [root, *root.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(root)


def test_read_only_directory(shared_tmp: Path) -> None:
    ro = shared_tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    out = _open_unprivileged(ro / "profiles.db")
    assert out.startswith("StoreError: cannot write"), out
    assert str(ro / "profiles.db") in out
    assert "choose another --db or fix permissions" in out
    assert list(ro.iterdir()) == []


def test_existing_db_in_read_only_directory(shared_tmp: Path) -> None:
    ro = shared_tmp / "ro"
    ro.mkdir()
    path = ro / "profiles.db"
    _real_db(path, n=2)
    path.chmod(0o666)
    ro.chmod(0o555)
    before = file_bytes(path)
    out = _open_unprivileged(path)
    assert out.startswith("StoreError: cannot write"), out
    assert file_bytes(path) == before


def test_read_only_file(shared_tmp: Path) -> None:
    rw = shared_tmp / "rw"
    rw.mkdir()
    path = rw / "profiles.db"
    _real_db(path, n=2)
    path.chmod(0o444)
    rw.chmod(0o777)
    before = file_bytes(path)
    out = _open_unprivileged(path)
    assert out.startswith("StoreError: cannot write"), out
    assert file_bytes(path) == before


# ---------------------------------------------------------------------- locks


def test_locked_database(db: Path) -> None:
    with ProfileStore.open(db, timeout=0.3) as s:
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="locked") as err:
            s.add("a", "fp", "m", utts(1))
        assert time.monotonic() - t0 >= 0.25
        assert str(db) in str(err.value)
        assert s.count() == 0  # readers are not blocked in WAL mode
        other.execute("ROLLBACK")
        other.close()
        s.add("a", "fp", "m", utts(1))
        assert s.count() == 1


# --------------------------------------------------------------- crash safety

_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from voiceid.profiles.model import Utterance
    from voiceid.profiles.store import ProfileStore

    db, run = sys.argv[1], int(sys.argv[2])
    store = ProfileStore.open(db)
    out = sys.stdout
    out.write("ready\\n")
    out.flush()
    rng = np.random.default_rng(run)
    for i in range(10**9):
        name = f"r{run}-{i}"
        utts = [Utterance(rng.standard_normal(192).astype(np.float32), 1.0 + j, f"u{j}")
                for j in range(3)]
        store.add(name, "fp", "m", utts)
        out.write(f"added {name}\\n")
        out.flush()
        if i % 4 == 3:
            victim = f"r{run}-{i - 2}"
            out.write(f"deleting {victim}\\n")
            out.flush()
            store.delete(victim)
            out.write(f"deleted {victim}\\n")
            out.flush()
    """
)


@pytest.mark.slow
def test_kill_9_never_leaves_half_written_profiles(tmp_path: Path) -> None:
    db = tmp_path / "crash" / "profiles.db"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    rng = random.Random(1234)
    added: set[str] = set()
    deleting: set[str] = set()
    deleted: set[str] = set()
    kills = 0
    t_start = time.monotonic()
    for run in range(55):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(db), str(run)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if first != b"ready\n":
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"writer {run} did not start: {first!r} {err.decode()[-2000:]}")
        time.sleep(rng.uniform(0.0, 0.06))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
        kills += 1
        for line in out.decode().splitlines(keepends=True):
            if not line.endswith("\n"):
                continue  # cut mid-write: nothing is promised
            verb, name = line.split()
            {"added": added, "deleting": deleting, "deleted": deleted}[verb].add(name)
    elapsed = time.monotonic() - t_start
    assert kills >= 50
    assert len(added) > kills, "the writer never got going; kills did not hit writes"

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    orphans = conn.execute(
        "SELECT count(*) FROM utterances u WHERE NOT EXISTS"
        " (SELECT 1 FROM profiles p WHERE p.id = u.profile_id)"
    ).fetchone()[0]
    assert orphans == 0
    conn.close()

    with ProfileStore.open(db) as s:
        assert s.integrity_check() == "ok"
        present = {p.name for p in s.list()}
        for summary in s.list():
            assert summary.n_utterances == 3, summary.name
            p = s.get(summary.id)
            assert len(p.utterances) == 3 and p.dim == 192
            assert [u.source for u in p.utterances] == ["u0", "u1", "u2"]
            assert np.array_equal(p.centroid, centroid([u.embedding for u in p.utterances]))
    missing = (added - deleting) - present
    assert not missing, f"committed profiles lost: {sorted(missing)[:5]}"
    assert not (deleted & present), "deleted profiles came back"
    print(f"{kills} kills, {len(added)} adds, {len(deleted)} deletes in {elapsed:.1f}s")
