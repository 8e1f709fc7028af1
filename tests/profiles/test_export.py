"""Export/import of profiles (docs/profiles-format.md): round trips, validation with
JSON paths, all-or-nothing import."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voiceid.errors import ProfileError, StoreError
from voiceid.profiles.model import Profile, Utterance
from voiceid.profiles.store import ProfileStore, parse_export

DIM = 32


def utts(seed: int, n: int = 3) -> list[Utterance]:
    rng = np.random.default_rng(seed)
    return [
        Utterance(rng.standard_normal(DIM).astype(np.float32), 2.0 + i, f"f{i}.wav")
        for i in range(n)
    ]


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[ProfileStore]:
    with ProfileStore.open(tmp_path / "a" / "profiles.db") as s:
        s.add("Alice", "fp1", "resnet34", utts(1), {"lang": "en"})
        s.add("Bob", "fp1", "resnet34", utts(2, n=1))
        s.add("Émile", "fp2", "ecapa", utts(3, n=2))
        yield s


@pytest.fixture()
def other(tmp_path: Path) -> Iterator[ProfileStore]:
    with ProfileStore.open(tmp_path / "b" / "profiles.db") as s:
        yield s


def snapshot(s: ProfileStore) -> list[Profile]:
    return [s.get(p.id) for p in s.list()]


def b64(vec: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vec, "<f4").tobytes()).decode()


def test_round_trip(store: ProfileStore, other: ProfileStore, tmp_path: Path) -> None:
    out = tmp_path / "exports" / "all.json"
    assert store.export_json(out) == ["Alice", "Bob", "Émile"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in out.parent.iterdir()] == ["all.json"]  # no temp files left
    assert other.import_json(out) == ["Alice", "Bob", "Émile"]
    assert snapshot(other) == snapshot(store)  # ids, times, metadata, exact bytes
    # And back out again: byte-identical document.
    again = tmp_path / "again.json"
    other.export_json(again)
    assert json.loads(again.read_text()) == json.loads(out.read_text())


def test_document_layout(store: ProfileStore, tmp_path: Path) -> None:
    out = tmp_path / "one.json"
    assert store.export_json(out, names=["alice"]) == ["Alice"]
    doc = json.loads(out.read_text())
    assert doc["format"] == "voiceid-profiles" and doc["version"] == 1
    (p,) = doc["profiles"]
    assert set(p) == {
        "id",
        "name",
        "fingerprint",
        "model_name",
        "created",
        "updated",
        "metadata",
        "centroid",
        "dim",
        "utterances",
    }
    assert p["dim"] == DIM and len(base64.b64decode(p["centroid"])) == 4 * DIM
    assert set(p["utterances"][0]) == {"embedding", "speech_s", "source"}
    emb = np.frombuffer(base64.b64decode(p["utterances"][0]["embedding"]), "<f4")
    assert np.array_equal(emb, store.get("Alice").utterances[0].embedding)


def test_export_unknown_name(store: ProfileStore, tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no profile named 'zed'"):
        store.export_json(tmp_path / "x.json", names=["alice", "zed"])
    assert not (tmp_path / "x.json").exists()


def test_export_unwritable(store: ProfileStore, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot write"):
        store.export_json(blocker / "out.json")


def test_export_replaces_atomically(store: ProfileStore, tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    out.write_text("old contents")
    store.export_json(out, names=["Bob"])
    assert [p["name"] for p in json.loads(out.read_text())["profiles"]] == ["Bob"]


def _doc(store: ProfileStore, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "base.json"
    store.export_json(out)
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def _nan_vec() -> str:
    v = np.ones(DIM, np.float32)
    v[5] = np.nan
    return b64(v)


BAD_CASES: list[tuple[str, Any, str]] = [
    ("profiles.2.utterances.0.embedding", "!!notbase64!!", "not valid base64"),
    ("profiles.2.utterances.1.embedding", _nan_vec(), "NaN"),
    ("profiles.0.utterances.0.embedding", b64(np.ones(DIM + 1)), "wrong size"),
    ("profiles.1.centroid", b64(np.ones(DIM - 1)), "wrong size"),
    ("profiles.1.centroid", b64(np.ones(DIM)), "unit norm"),
    ("profiles.0.centroid", b64(np.eye(DIM)[0]), "does not match its utterances"),
    ("profiles.0.dim", 0, "integer in 1.."),
    ("profiles.0.dim", "32", "integer in 1.."),
    ("profiles.1.id", "not-an-id", "32 lowercase hex"),
    ("profiles.1.name", "", "empty"),
    ("profiles.1.created", "yesterday", "must be a number"),
    ("profiles.1.metadata", {"k": 1}, "strings"),
    ("profiles.0.utterances", [], "non-empty list"),
    ("profiles.0.utterances.0.speech_s", -1, ">= 0"),
    ("version", 2, "unsupported version 2"),
    ("version", "1", "must be an integer"),
    ("format", "something-else", "must be 'voiceid-profiles'"),
    ("profiles", {}, "must be a list"),
]


def _set(doc: dict[str, Any], dotted: str, value: Any) -> str:
    """Set a field by dotted path; return its JSON path as errors spell it."""
    keys = dotted.split(".")
    node: Any = doc
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(keys[-1]) if isinstance(node, list) else keys[-1]] = value
    out = ""
    for key in keys:
        out += f"[{key}]" if key.isdigit() else (f".{key}" if out else key)
    return out


@pytest.mark.parametrize(("field", "value", "message"), BAD_CASES)
def test_bad_import_names_the_field_and_changes_nothing(
    store: ProfileStore, tmp_path: Path, field: str, value: Any, message: str
) -> None:
    doc = _doc(store, tmp_path)
    for p in doc["profiles"]:
        p["name"] += "-imported"  # would otherwise be duplicates
        p["id"] = p["id"][::-1]
    where = _set(doc, field, value)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    before = snapshot(store)
    with pytest.raises(ProfileError) as err:
        store.import_json(bad)
    text = str(err.value)
    assert f"{bad}: {where}:" in text, text
    assert message in text, text
    assert "nothing was changed" in text
    assert snapshot(store) == before


def test_missing_field(store: ProfileStore, tmp_path: Path) -> None:
    doc = _doc(store, tmp_path)
    del doc["profiles"][1]["utterances"][0]["speech_s"]
    with pytest.raises(ProfileError, match=r"profiles\[1\]\.utterances\[0\]\.speech_s: missing"):
        parse_export(json.dumps(doc))


def test_not_json(store: ProfileStore, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        store.import_json(bad)
    with pytest.raises(ProfileError, match="cannot read"):
        store.import_json(tmp_path / "missing.json")


def test_duplicates_inside_file(store: ProfileStore, other: ProfileStore, tmp_path: Path) -> None:
    doc = _doc(store, tmp_path)
    doc["profiles"][2]["name"] = "ALICE"
    bad = tmp_path / "dup.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ProfileError, match=r"profiles\[2\]\.name: duplicate of profiles\[0\]"):
        other.import_json(bad)
    assert other.count() == 0


def test_conflicts_need_replace(store: ProfileStore, other: ProfileStore, tmp_path: Path) -> None:
    out = tmp_path / "all.json"
    store.export_json(out)
    other.add("alice", "fp9", "m9", utts(9))
    other.add("Zoe", "fp9", "m9", utts(10))
    before = snapshot(other)
    with pytest.raises(ProfileError, match="already enrolled: alice") as err:
        other.import_json(out)
    assert "--replace" in str(err.value)
    assert snapshot(other) == before

    assert other.import_json(out, replace=True) == ["Alice", "Bob", "Émile"]
    assert other.get("ALICE") == store.get("alice")
    assert other.get("Zoe") == before[1]
    assert other.count() == 4
    # Importing the same file again (same ids) also needs replace.
    with pytest.raises(ProfileError, match="already enrolled"):
        other.import_json(out)
    assert other.import_json(out, replace=True) == ["Alice", "Bob", "Émile"]
    assert other.integrity_check() == "ok"


def test_last_profile_bad_means_none_imported(
    store: ProfileStore, other: ProfileStore, tmp_path: Path
) -> None:
    doc = _doc(store, tmp_path)
    doc["profiles"][2]["utterances"][1]["embedding"] = b64(np.zeros(DIM))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ProfileError, match=r"profiles\[2\]\.utterances\[1\]\.embedding"):
        other.import_json(bad)
    assert other.count() == 0
