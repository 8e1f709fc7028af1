"""ProfileStore with a template key: every embedding/centroid BLOB encrypted (AES-GCM,
bound to its profile, kind and index), clear errors for a missing or wrong key, explicit
encryption of a database in clear, key rotation in one transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from voiceid.errors import ConfigError, StoreError
from voiceid.profiles import store as store_mod
from voiceid.profiles.model import Utterance
from voiceid.profiles.store import KEY_ID, ProfileStore
from voiceid.security import templates
from voiceid.security.templates import OVERHEAD, TemplateKey

pytest.importorskip("cryptography", reason="pyproject: cryptography>=42")

DIM = 48


def utts(seed: int, n: int = 3) -> list[Utterance]:
    rng = np.random.default_rng(seed)
    return [
        Utterance(rng.standard_normal(DIM).astype(np.float32), 1.0 + i, f"u{i}.wav")
        for i in range(n)
    ]


def needles(store: ProfileStore) -> list[bytes]:
    """The float32 bytes of every vector in the store (what must not be on disk)."""
    out = []
    for s in store.list():
        p = store.get(s.id)
        out.append(p.centroid.astype("<f4").tobytes())
        out.extend(u.embedding.astype("<f4").tobytes() for u in p.utterances)
    return out


def on_disk(db: Path, needle: bytes) -> list[str]:
    return [f.name for f in sorted(db.parent.iterdir()) if f.is_file() and needle in f.read_bytes()]


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "profiles.db"


@pytest.fixture()
def key() -> TemplateKey:
    return TemplateKey(bytes(range(1, 33)), "key-a")


@pytest.fixture()
def key2() -> TemplateKey:
    return TemplateKey(bytes(range(101, 133)), "key-b")


@pytest.fixture()
def enc_store(db: Path, key: TemplateKey) -> Iterator[ProfileStore]:
    with ProfileStore.open(db, key=key) as s:
        yield s


def raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None)


def test_round_trip_and_nothing_in_clear(
    enc_store: ProfileStore, db: Path, key: TemplateKey
) -> None:
    assert enc_store.encrypted and enc_store.key_id == key.key_id
    alice = enc_store.add("Alice", "fp", "m", utts(1), {"k": "v"})
    enc_store.add("Bob", "fp", "m", utts(2, n=5))
    assert enc_store.get("alice") == alice
    summaries = {s.name: s for s in enc_store.list()}
    assert np.array_equal(summaries["Alice"].centroid, alice.centroid)
    assert summaries["Bob"].n_utterances == 5
    assert enc_store.integrity_check() == "ok"
    secrets = needles(enc_store)
    enc_store.close()
    for n in secrets:
        assert on_disk(db, n) == [], "a template is on disk in clear"
    conn = raw(db)
    assert conn.execute("SELECT value FROM meta WHERE key = ?", (KEY_ID,)).fetchall() == [
        (key.key_id,)
    ]
    assert {r[0] for r in conn.execute("SELECT enc FROM utterances")} == {1}
    assert {r[0] for r in conn.execute("SELECT enc FROM centroids")} == {1}
    lengths = {r[0] for r in conn.execute("SELECT length(embedding) FROM utterances")}
    assert lengths == {4 * DIM + OVERHEAD}
    conn.close()
    # the key bytes are nowhere in the files
    assert on_disk(db, bytes(range(1, 33))) == [] and on_disk(db, key.to_text().encode()) == []


def test_every_write_path_encrypts(enc_store: ProfileStore, db: Path) -> None:
    enc_store.add("A", "fp", "m", utts(1))
    enc_store.replace_utterances("A", utts(2))
    enc_store.add_utterances("A", "fp", utts(3, n=2))
    enc_store.update("A", name="A2", metadata={"x": "y"})
    export = db.parent / "export.json"
    enc_store.export_json(export)
    enc_store.delete("A2")
    assert enc_store.import_json(export) == ["A2"]
    p = enc_store.get("A2")
    assert len(p.utterances) == 5 and p.metadata == {"x": "y"}
    assert enc_store.integrity_check() == "ok"
    secrets = needles(enc_store)
    enc_store.close()
    for n in secrets:
        assert on_disk(db, n) == []


def test_export_of_encrypted_db_imports_anywhere(enc_store: ProfileStore, tmp_path: Path) -> None:
    enc_store.add("A", "fp", "m", utts(1))
    out = tmp_path / "x.json"
    enc_store.export_json(out)
    with ProfileStore.open(tmp_path / "plain.db") as plain:
        plain.import_json(out)
        assert plain.get("A") == enc_store.get("A")


def test_encrypted_db_without_key(enc_store: ProfileStore, db: Path) -> None:
    enc_store.add("A", "fp", "m", utts(1))
    enc_store.close()
    with pytest.raises(StoreError, match=r"is encrypted: configure security\.profile_key_file"):
        ProfileStore.open(db)


def test_wrong_key(enc_store: ProfileStore, db: Path, key: TemplateKey, key2: TemplateKey) -> None:
    enc_store.add("A", "fp", "m", utts(1))
    enc_store.close()
    with pytest.raises(StoreError, match="wrong profile key") as err:
        ProfileStore.open(db, key=key2)
    assert key.key_id in str(err.value) and key2.key_id in str(err.value)
    assert "key-b" in str(err.value)


def test_new_empty_db_is_bound_to_the_key(db: Path, key: TemplateKey) -> None:
    ProfileStore.open(db).close()  # an empty database in clear
    with ProfileStore.open(db, key=key) as s:  # no profiles: adopting the key is harmless
        assert s.encrypted and s.encrypted_on_open == 0
    with pytest.raises(StoreError, match="is encrypted"):
        ProfileStore.open(db)


def test_clear_db_with_profiles_is_not_encrypted_silently(db: Path, key: TemplateKey) -> None:
    with ProfileStore.open(db) as s:
        s.add("A", "fp", "m", utts(1))
    before = {f.name: f.read_bytes() for f in db.parent.iterdir()}
    with pytest.raises(StoreError, match=r"holds 1 profile\(s\) in clear") as err:
        ProfileStore.open(db, key=key)
    assert "voiceid" in str(err.value) and "profiles encrypt" in str(err.value)
    assert {f.name: f.read_bytes() for f in db.parent.iterdir()} == before
    with ProfileStore.open(db) as s:  # still usable in clear
        assert s.count() == 1 and not s.encrypted


def test_explicit_encryption(db: Path, key: TemplateKey) -> None:
    with ProfileStore.open(db) as s:
        for i in range(6):
            s.add(f"p{i}", "fp", "m", utts(i))
        s.delete("p5")
        profiles = {p.name: s.get(p.id) for p in s.list()}
        secrets = needles(s)
    assert all(on_disk(db, n) for n in secrets[:1])
    with pytest.raises(ConfigError):
        ProfileStore.open(db, encrypt=True)
    with ProfileStore.open(db, key=key, encrypt=True) as s:
        assert s.encrypted_on_open == 5
        assert {p.name: s.get(p.id) for p in s.list()} == profiles
        assert s.integrity_check() == "ok"
    for n in secrets:
        assert on_disk(db, n) == [], "a template in clear survived encryption"
    with ProfileStore.open(db, key=key, encrypt=True) as s:
        assert s.encrypted_on_open == 0  # already encrypted: nothing to do


def test_v1_database_migrates_then_encrypts(tmp_path: Path, key: TemplateKey) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    script = "".join(store_mod.MIGRATIONS[:1])
    for stmt in store_mod._split_sql(script):
        conn.execute(stmt)
    conn.execute("UPDATE schema_version SET version = 1")
    pid = "ab" * 16
    vec = np.ones(4, dtype="<f4") / 2
    conn.execute("INSERT INTO profiles VALUES (?, 'Old', 'fp', 'm', 1.0, 2.0, '{}')", (pid,))
    conn.execute("INSERT INTO centroids VALUES (?, 0, 'mean', 4, ?)", (pid, vec.tobytes()))
    conn.execute("INSERT INTO utterances VALUES (?, 0, 4, ?, 1.0, '')", (pid, vec.tobytes()))
    conn.commit()
    conn.close()
    with ProfileStore.open(path) as s:
        old = s.get("Old")
    assert raw(path).execute("SELECT version FROM schema_version").fetchone() == (2,)
    with ProfileStore.open(path, key=key, encrypt=True) as s:
        assert s.get("Old") == old and s.integrity_check() == "ok"


def test_swapped_blobs_fail_authentication(
    enc_store: ProfileStore, db: Path, key: TemplateKey
) -> None:
    a = enc_store.add("Alice", "fp", "m", utts(1))
    b = enc_store.add("Mallory", "fp", "m", utts(2))
    enc_store.close()
    conn = raw(db)
    # Mallory's centroid copied over Alice's: verifying as Alice would accept Mallory
    (blob,) = conn.execute("SELECT vector FROM centroids WHERE profile_id = ?", (b.id,)).fetchone()
    conn.execute("UPDATE centroids SET vector = ? WHERE profile_id = ?", (blob, a.id))
    conn.close()
    with ProfileStore.open(db, key=key) as s:
        with pytest.raises(StoreError, match="fails authentication") as err:
            s.get("Alice")
        assert "Alice" in str(err.value)
        with pytest.raises(StoreError, match="fails authentication"):
            s.list()
        assert s.get("Mallory") == b
        report = s.integrity_check()
        assert "Alice" in report and "fails authentication" in report


def test_reordered_utterances_fail_authentication(
    enc_store: ProfileStore, db: Path, key: TemplateKey
) -> None:
    a = enc_store.add("Alice", "fp", "m", utts(1))
    enc_store.close()
    conn = raw(db)
    for old, new in ((0, 100), (2, 0), (100, 2)):  # swap utterances 0 and 2
        conn.execute(
            "UPDATE utterances SET idx = ? WHERE profile_id = ? AND idx = ?", (new, a.id, old)
        )
    conn.close()
    with ProfileStore.open(db, key=key) as s, pytest.raises(StoreError, match="utterance"):
        s.get("Alice")


def test_row_in_clear_in_encrypted_db_is_refused(
    enc_store: ProfileStore, db: Path, key: TemplateKey
) -> None:
    a = enc_store.add("Alice", "fp", "m", utts(1))
    enc_store.close()
    conn = raw(db)
    planted = (np.ones(DIM) / np.sqrt(DIM)).astype("<f4").tobytes()
    conn.execute("UPDATE centroids SET enc = 0, vector = ? WHERE profile_id = ?", (planted, a.id))
    conn.close()
    with ProfileStore.open(db, key=key) as s:
        with pytest.raises(StoreError, match="stored in clear in an encrypted database"):
            s.get("Alice")
        assert "stored in clear" in s.integrity_check()


def test_removed_key_id_is_refused(enc_store: ProfileStore, db: Path, key: TemplateKey) -> None:
    enc_store.add("Alice", "fp", "m", utts(1))
    enc_store.close()
    conn = raw(db)
    conn.execute("DELETE FROM meta")
    conn.close()
    with pytest.raises(StoreError, match="in clear"):  # key given: refuses to adopt
        ProfileStore.open(db, key=key)
    with ProfileStore.open(db) as s, pytest.raises(StoreError, match="is encrypted but"):
        s.get("Alice")


def test_rotate_key(enc_store: ProfileStore, db: Path, key: TemplateKey, key2: TemplateKey) -> None:
    for i in range(4):
        enc_store.add(f"p{i}", "fp", "m", utts(i))
    before = {p.name: enc_store.get(p.id) for p in enc_store.list()}
    conn = raw(db)
    old_blobs = [r[0] for r in conn.execute("SELECT embedding FROM utterances")]
    conn.close()
    with pytest.raises(StoreError, match="not the key"):
        enc_store.rotate_key(key2, key)
    with pytest.raises(ConfigError, match="new key is the old key"):
        enc_store.rotate_key(key, key)
    assert enc_store.rotate_key(key, key2) == 4
    assert enc_store.key_id == key2.key_id
    enc_store.add("after", "fp", "m", utts(9))
    assert enc_store.integrity_check() == "ok"
    enc_store.close()
    for blob in old_blobs:
        assert on_disk(db, blob) == [], "an old ciphertext survived the rotation"
    with pytest.raises(StoreError, match="wrong profile key"):
        ProfileStore.open(db, key=key)
    with ProfileStore.open(db, key=key2) as s:
        assert {p.name: s.get(p.id) for p in s.list() if p.name != "after"} == before


def test_rotation_is_one_transaction(
    enc_store: ProfileStore,
    db: Path,
    key: TemplateKey,
    key2: TemplateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for i in range(5):
        enc_store.add(f"p{i}", "fp", "m", utts(i))
    before = {p.name: enc_store.get(p.id) for p in enc_store.list()}
    calls = 0
    real = TemplateKey.encrypt

    def failing(self: TemplateKey, plaintext: bytes, **kw: object) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 9:
            raise OSError("simulated crash in the middle of the rotation")
        return real(self, plaintext, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(templates.TemplateKey, "encrypt", failing)
    with pytest.raises(OSError, match="simulated"):
        enc_store.rotate_key(key, key2)
    monkeypatch.undo()
    assert enc_store.key_id == key.key_id
    assert {p.name: enc_store.get(p.id) for p in enc_store.list()} == before
    assert enc_store.integrity_check() == "ok"
    enc_store.close()
    with ProfileStore.open(db, key=key) as s:
        assert s.count() == 5
    with pytest.raises(StoreError, match="wrong profile key"):
        ProfileStore.open(db, key=key2)


def test_other_process_after_rotation_refuses(
    enc_store: ProfileStore, db: Path, key: TemplateKey, key2: TemplateKey
) -> None:
    enc_store.add("A", "fp", "m", utts(1))
    with ProfileStore.open(db, key=key) as other:
        enc_store.rotate_key(key, key2)
        with pytest.raises(StoreError, match="was changed"):
            other.add("B", "fp", "m", utts(2))  # would write with the old key
        with pytest.raises(StoreError, match="was changed"):
            other.list()


def test_clear_store_sees_concurrent_encryption(db: Path, key: TemplateKey) -> None:
    with ProfileStore.open(db) as clear:
        clear.add("A", "fp", "m", utts(1))
        with ProfileStore.open(db, key=key, encrypt=True):
            pass
        with pytest.raises(StoreError, match="encrypted by another process"):
            clear.add("B", "fp", "m", utts(2))


def test_rotate_needs_an_encrypted_db(db: Path, key: TemplateKey, key2: TemplateKey) -> None:
    with ProfileStore.open(db) as s, pytest.raises(StoreError, match="not encrypted"):
        s.rotate_key(key, key2)


# ------------------------------------------------------------------------- CLI


def test_cli_key_new_encrypt_rotate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from voiceid.cli import main

    db = tmp_path / "p.db"
    with ProfileStore.open(db) as s:
        for i in range(3):
            s.add(f"p{i}", "fp", "m", utts(i))
        before = {p.name: s.get(p.id) for p in s.list()}
    k1, k2 = tmp_path / "k1", tmp_path / "k2"
    assert main(["key", "new", str(k1)]) == 0
    assert (k1.stat().st_mode & 0o777) == 0o600
    assert main(["key", "new", str(k1)]) == 2  # never overwrites
    assert main(["key", "new", str(k2), "--json"]) == 0
    assert main(["key", "id", str(k1)]) == 0
    kid1 = capsys.readouterr().out.strip().splitlines()[-1]
    assert kid1 == templates.load_key_file(k1).key_id

    assert main(["--db", str(db), "profiles", "encrypt", "--key-file", str(k1), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"encrypted": 3' in out and kid1 in out
    assert main(["--db", str(db), "profiles", "list"]) == 6  # StoreError: needs the key
    assert "is encrypted" in capsys.readouterr().err

    assert main(["--db", str(db), "key", "rotate", "--old", str(k2), "--new", str(k1)]) == 6
    assert "wrong profile key" in capsys.readouterr().err
    assert main(["--db", str(db), "key", "rotate", "--old", str(k1), "--new", str(k1)]) == 2
    assert main(["--db", str(db), "key", "rotate", "--old", str(k1), "--new", str(k2)]) == 0
    assert "re-encrypted 3 profile(s)" in capsys.readouterr().out
    with ProfileStore.open(db, key=templates.load_key_file(k2)) as s:
        assert {p.name: s.get(p.id) for p in s.list()} == before
