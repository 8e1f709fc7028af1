"""``voiceid enroll|verify|identify|profiles|threshold`` through the real CLI entry point
(``voiceid.cli.main``) on real speech, with a real SQLite file per test.

Exit codes (docs/cli.md): 0 ok / accepted / identified, 1 rejected / unknown speaker,
2 usage, 3 audio, 4 model, 5 profile, 6 profile database.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voiceid.audio.io import load_audio, write_wav
from voiceid.cli import main

GE2E = ("--model", "resemblyzer-ge2e", "--device", "cpu", "--threads", "2")
RANDOM = ("--model", "wespeaker-resnet34-random", "--device", "cpu", "--threads", "2")
A, B, C = "1688", "2609", "3005"  # three speakers


def run(capsys: pytest.CaptureFixture[str], db: Path, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--db", str(db), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], db: Path, *argv: str, code: int = 0) -> Any:
    got, out, err = run(capsys, db, *argv, "--json")
    assert got == code, (got, out, err)
    assert out.count("\n") == 1, out  # one JSON document on one line
    return json.loads(out)


def one_line_error(err: str, *fragments: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("voiceid: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def files(speakers: dict[str, list[Path]], spk: str, *idx: int) -> list[str]:
    return [str(speakers[spk][i]) for i in idx]


def snapshot(db: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(db.parent.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def template(
    speakers: dict[str, list[Path]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:
    """A DB with A and B enrolled (utterances 0-2) through the CLI, made once; tests
    work on copies (see ``db``)."""
    from tests.conftest import MODEL_CACHE

    path = tmp_path_factory.mktemp("template") / "profiles.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VOICEID_HOME", str(MODEL_CACHE))
        for name, spk in (("alice", A), ("bob", B)):
            code = main(["--db", str(path), "enroll", name, *files(speakers, spk, 0, 1, 2), *GE2E])
            assert code == 0
    yield path


@pytest.fixture()
def db(template: Path, tmp_path: Path, model_home: Path) -> Path:
    """A private copy of the template DB (alice = A, bob = B)."""
    dest = tmp_path / "state" / "profiles.db"
    dest.parent.mkdir()
    shutil.copy(template, dest)
    return dest


@pytest.fixture()
def empty_db(tmp_path: Path, model_home: Path) -> Path:
    return tmp_path / "empty" / "profiles.db"


# ------------------------------------------------------------------------ enroll


def test_enroll_prints_feedback_and_progress(
    capsys: pytest.CaptureFixture[str], empty_db: Path, speakers: dict[str, list[Path]]
) -> None:
    code, out, err = run(
        capsys,
        empty_db,
        "enroll",
        "carol",
        *files(speakers, C, 0, 1, 2),
        *GE2E,
        "--meta",
        "lang=en",
        "--meta",
        "room=office",
    )
    assert code == 0, err
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith("enrolling 'carol' with resemblyzer-ge2e: needs 3 accepted")
    assert lines[1].startswith("[1/3] ") and ": ok  speech " in lines[1]
    assert "1/3 utterances" in lines[1] and "/10 s" in lines[1]
    assert "3/3 utterances, 100%" in lines[3]
    assert lines[4].startswith("enrolled 'carol': 3 utterances")
    shown = run_json(capsys, empty_db, "profiles", "show", "carol")
    assert shown["metadata"] == {"lang": "en", "room": "office"}
    assert shown["utterances"] == 3 and shown["model"] == "resemblyzer-ge2e"


def test_enroll_json(
    capsys: pytest.CaptureFixture[str], empty_db: Path, speakers: dict[str, list[Path]]
) -> None:
    doc = run_json(capsys, empty_db, "enroll", "carol", *files(speakers, C, 0, 1, 2), *GE2E)
    assert doc["committed"] is True and doc["name"] == "carol"
    assert [u["feedback"] for u in doc["utterances"]] == [["ok"]] * 3
    assert doc["progress"]["complete"] is True and doc["progress"]["percent"] == 100
    total = sum(u["speech_s"] for u in doc["utterances"])
    assert doc["profile"]["speech_s"] == pytest.approx(total, abs=0.05)
    assert doc["utterances"][1]["consistency"] > 0.75
    assert "centroid" not in json.dumps(doc) and "embedding" not in json.dumps(doc)


def test_enroll_incomplete_writes_nothing(
    capsys: pytest.CaptureFixture[str],
    empty_db: Path,
    speakers: dict[str, list[Path]],
    tmp_path: Path,
) -> None:
    silence = write_wav(tmp_path / "silence.wav", np.zeros(3 * 16000, np.float32))
    args = ("enroll", "carol", files(speakers, C, 2)[0], str(silence), *GE2E)
    code, out, err = run(capsys, empty_db, *args)
    assert code == 3
    assert "no_voice" in out and "(no speech found" in out
    line = one_line_error(err, "enrollment of 'carol' is incomplete", "1/3 utterances")
    assert "2 more accepted utterances" in line and "nothing was written" in line
    assert run_json(capsys, empty_db, "profiles", "list") == []
    doc = run_json(capsys, empty_db, *args, code=3)
    assert doc["committed"] is False and doc["profile"] is None
    assert [u["feedback"] for u in doc["utterances"]] == [["ok"], ["no_voice"]]


def test_enroll_policy_overrides(
    capsys: pytest.CaptureFixture[str], empty_db: Path, speakers: dict[str, list[Path]]
) -> None:
    one = files(speakers, C, 0)
    doc = run_json(
        capsys,
        empty_db,
        "enroll",
        "carol",
        *one,
        *GE2E,
        "--min-utterances",
        "1",
        "--min-speech",
        "2",
    )
    assert doc["committed"] and doc["progress"]["required_utterances"] == 1
    assert doc["progress"]["required_s"] == 2.0
    code, _, err = run(capsys, empty_db, "enroll", "dave", *one, *GE2E, "--min-utterances", "0")
    assert code == 2
    one_line_error(err, "--min-utterances must be >= 1")
    code, _, err = run(capsys, empty_db, "enroll", "dave", *one, *GE2E, "--meta", "novalue")
    assert code == 2
    one_line_error(err, "--meta wants KEY=VALUE")


def test_enroll_inconsistent_speaker_is_not_counted(
    capsys: pytest.CaptureFixture[str], empty_db: Path, speakers: dict[str, list[Path]]
) -> None:
    mixed = [*files(speakers, A, 0, 1), *files(speakers, B, 0), *files(speakers, A, 2)]
    doc = run_json(capsys, empty_db, "enroll", "alice", *mixed, *GE2E)
    assert [u["feedback"] for u in doc["utterances"]] == [["ok"], ["ok"], ["inconsistent"], ["ok"]]
    assert doc["committed"] and doc["profile"]["utterances"] == 3


def test_enroll_incomplete_after_inconsistent_suggests_reordering(
    capsys: pytest.CaptureFixture[str], empty_db: Path, speakers: dict[str, list[Path]]
) -> None:
    argv = ("enroll", "carol", *files(speakers, A, 2), *files(speakers, B, 0), *GE2E)
    code, out, err = run(capsys, empty_db, *argv)
    assert code == 3
    assert ": inconsistent  speech" in out and "only the enrolling person should speak" in out
    one_line_error(err, "1 of 2 files rejected", "the first may be the odd one")
    assert run_json(capsys, empty_db, "profiles", "list") == []


def test_duplicate_name_and_replace(
    capsys: pytest.CaptureFixture[str], db: Path, speakers: dict[str, list[Path]]
) -> None:
    before = run_json(capsys, db, "profiles", "show", "alice")
    code, out, err = run(capsys, db, "enroll", "Alice", *files(speakers, A, 3, 4, 5), *GE2E)
    assert code == 5 and out == ""
    one_line_error(err, "a profile named 'Alice' already exists", "--replace")
    doc = run_json(
        capsys, db, "enroll", "Alice", *files(speakers, A, 3, 4, 5, 6), *GE2E, "--replace"
    )
    assert doc["committed"]
    after = run_json(capsys, db, "profiles", "show", "alice")
    assert after["id"] == before["id"] and after["created"] == before["created"]
    assert after["utterances"] == 4 and after["updated"] >= before["updated"]
    assert [u["source"] for u in after["utterance_list"]] == [
        speakers[A][i].name for i in (3, 4, 5, 6)
    ]


# ---------------------------------------------------------------- verify/identify


def test_verify_accept_reject_exit_codes(
    capsys: pytest.CaptureFixture[str], db: Path, speakers: dict[str, list[Path]]
) -> None:
    probe_a, probe_b = files(speakers, A, 7)[0], files(speakers, B, 7)[0]
    doc = run_json(capsys, db, "verify", "alice", probe_a, *GE2E)
    assert set(doc) == {"name", "score", "threshold", "accepted"}
    assert doc["accepted"] is True and doc["threshold"] == 0.75 and doc["score"] >= 0.75
    doc = run_json(capsys, db, "verify", "alice", probe_b, *GE2E, code=1)
    assert doc["accepted"] is False and doc["score"] < 0.75
    code, out, err = run(capsys, db, "verify", "ALICE", probe_a, *GE2E)
    assert code == 0 and err == "" and out.startswith("alice: score ")
    assert out.rstrip().endswith("accepted")
    code, out, _ = run(capsys, db, "verify", "alice", probe_b, *GE2E, "--threshold", "-1")
    assert code == 0 and "(threshold -1.00): accepted" in out
    code, _, err = run(capsys, db, "verify", "alice", probe_a, *GE2E, "--threshold", "1.5")
    assert code == 2
    one_line_error(err, "--threshold must be a cosine in [-1, 1]")


def test_identify(
    capsys: pytest.CaptureFixture[str], db: Path, speakers: dict[str, list[Path]]
) -> None:
    doc = run_json(capsys, db, "identify", files(speakers, B, 8)[0], *GE2E)
    assert set(doc) == {"decision", "threshold", "matches"}
    assert doc["decision"] == "bob" and doc["threshold"] == 0.75
    assert [m["name"] for m in doc["matches"]] == ["bob", "alice"]
    assert doc["matches"][0]["score"] > doc["matches"][1]["score"]
    doc = run_json(capsys, db, "identify", files(speakers, B, 8)[0], *GE2E, "--top-k", "1")
    assert len(doc["matches"]) == 1
    # A speaker who is not enrolled: nobody above the threshold, exit 1.
    doc = run_json(capsys, db, "identify", files(speakers, C, 5)[0], *GE2E, code=1)
    assert doc["decision"] is None and len(doc["matches"]) == 2
    code, out, _ = run(capsys, db, "identify", files(speakers, C, 5)[0], *GE2E)
    assert code == 1 and out.startswith("unknown speaker (threshold 0.75)")
    code, _, err = run(capsys, db, "identify", files(speakers, C, 5)[0], *GE2E, "--top-k", "0")
    assert code == 2
    one_line_error(err, "--top-k must be >= 1")


def test_threshold_show_set_and_use(
    capsys: pytest.CaptureFixture[str], db: Path, speakers: dict[str, list[Path]]
) -> None:
    model = ("--model", "resemblyzer-ge2e")
    doc = run_json(capsys, db, "threshold", "show", *model)
    assert doc["threshold"] == 0.75 and doc["source"] == "model card"
    fp = doc["fingerprint"]
    doc = run_json(capsys, db, "threshold", "set", "0.99", *model, "--source", "strict test")
    assert doc == {
        "model": "resemblyzer-ge2e",
        "fingerprint": fp,
        "threshold": 0.99,
        "source": "strict test",
    }
    doc = run_json(capsys, db, "threshold", "show", *model)
    assert doc["threshold"] == 0.99 and doc["source"] == "database"
    assert doc["card_threshold"] == 0.75
    # verify and identify now use it.
    doc = run_json(capsys, db, "verify", "alice", files(speakers, A, 7)[0], *GE2E, code=1)
    assert doc["threshold"] == 0.99 and not doc["accepted"]
    # Another model's threshold is separate.
    other = run_json(capsys, db, "threshold", "show", "--model", "wespeaker-resnet34-random")
    assert other["source"] == "model card" and other["fingerprint"] != fp
    code, _, err = run(capsys, db, "threshold", "set", "2", *model)
    assert code == 2
    one_line_error(err, "threshold must be a cosine in [-1, 1]")
    code, _, err = run(capsys, db, "threshold", "show", "--model", "no-such-model")
    assert code == 4
    one_line_error(err, "unknown model 'no-such-model'")


# ---------------------------------------------------------------------- profiles


def test_profiles_list_show_delete(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    rows = run_json(capsys, db, "profiles", "list")
    assert [r["name"] for r in rows] == ["alice", "bob"]
    assert all(r["utterances"] == 3 and r["speech_s"] > 10 for r in rows)
    code, out, _ = run(capsys, db, "profiles", "list")
    assert code == 0 and out.splitlines()[0].split() == [
        "name",
        "model",
        "utterances",
        "speech",
        "updated",
    ]
    code, out, _ = run(capsys, db, "profiles", "show", "alice")
    assert code == 0
    for key in ("name:", "id:", "model:", "utterances:", "speech:", "created:", "updated:"):
        assert key in out
    assert "resemblyzer-ge2e" in out
    doc = run_json(capsys, db, "profiles", "show", "alice")
    assert "centroid" not in doc
    assert all("embedding" not in u for u in doc["utterance_list"])
    vec = run_json(capsys, db, "profiles", "show", "alice", "--vectors")
    assert vec["dim"] == 256 and len(vec["centroid"]) == 256
    assert np.linalg.norm(vec["centroid"]) == pytest.approx(1.0, abs=1e-5)
    assert all(len(u["embedding"]) == 256 for u in vec["utterance_list"])
    code, _, err = run(capsys, db, "profiles", "show", "alice", "--vectors")
    assert code == 2
    one_line_error(err, "--vectors needs --json")
    assert run_json(capsys, db, "profiles", "delete", "ALICE") == {"deleted": "alice"}
    assert [r["name"] for r in run_json(capsys, db, "profiles", "list")] == ["bob"]


def test_unknown_profile(
    capsys: pytest.CaptureFixture[str], db: Path, speakers: dict[str, list[Path]]
) -> None:
    probe = files(speakers, A, 7)[0]
    for argv in (
        ("verify", "nobody", probe, *GE2E),
        ("profiles", "show", "nobody"),
        ("profiles", "delete", "nobody"),
        ("profiles", "export", str(db.parent / "x.json"), "nobody"),
    ):
        code, out, err = run(capsys, db, *argv)
        assert code == 5, argv
        assert out == ""
        one_line_error(err, "no profile named 'nobody'", "voiceid profiles list")
    assert not (db.parent / "x.json").exists()


def test_bad_audio(
    capsys: pytest.CaptureFixture[str],
    db: Path,
    speakers: dict[str, list[Path]],
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.flac"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    silence = write_wav(tmp_path / "silence.wav", np.zeros(2 * 16000, np.float32))
    before = snapshot(db)
    good = files(speakers, C, 0, 1)
    cases = [
        (("enroll", "carol", *good, str(empty)), "audio file is empty"),
        (("enroll", "carol", str(garbage), *good), "cannot read audio file"),
        (("enroll", "carol", *good, str(tmp_path / "missing.wav")), "audio file not found"),
        (("verify", "alice", str(empty)), "audio file is empty"),
        (("verify", "alice", str(garbage)), "cannot read audio file"),
        (("verify", "alice", str(silence)), "holds no speech"),
        (("identify", str(silence)), "holds no speech"),
    ]
    for argv, fragment in cases:
        code, out, err = run(capsys, db, *argv, *GE2E)
        assert code == 3, (argv, err)
        assert out == ""  # every file is read before any output
        one_line_error(err, fragment)
    assert "carol" not in [r["name"] for r in run_json(capsys, db, "profiles", "list")]
    assert snapshot(db) == before


def test_profile_of_another_model(
    capsys: pytest.CaptureFixture[str], db: Path, speakers: dict[str, list[Path]]
) -> None:
    probe = files(speakers, A, 7)[0]
    code, out, err = run(capsys, db, "verify", "alice", probe, *RANDOM)
    assert code == 5 and out == ""
    one_line_error(
        err,
        "profile 'alice' was enrolled with model resemblyzer-ge2e",
        "re-enroll alice with model wespeaker-resnet34-random",
        "or score with --model resemblyzer-ge2e",
    )
    code, _, err = run(capsys, db, "identify", probe, *RANDOM)
    assert code == 5
    one_line_error(err, "enrolled with other models: alice (resemblyzer-ge2e), bob")


def test_corrupt_database_is_refused_and_untouched(
    capsys: pytest.CaptureFixture[str], empty_db: Path, speakers: dict[str, list[Path]]
) -> None:
    empty_db.parent.mkdir()
    empty_db.write_bytes(np.random.default_rng(7).bytes(8192))
    before = snapshot(empty_db)
    for argv in (
        ("profiles", "list"),
        ("enroll", "carol", *files(speakers, C, 0, 1, 2), *GE2E),
        ("verify", "alice", files(speakers, A, 7)[0], *GE2E),
        ("threshold", "set", "0.5", "--model", "resemblyzer-ge2e"),
        ("profiles", "import", str(empty_db)),
    ):
        code, out, err = run(capsys, empty_db, *argv)
        assert code == 6, (argv, err)
        assert out == ""
        one_line_error(err, "is corrupt or not a voiceid database", "move it aside")
        assert snapshot(empty_db) == before


def test_database_path_not_writable(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    model_home: Path,
    speakers: dict[str, list[Path]],
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    db = blocker / "profiles.db"
    for argv in (
        ("profiles", "list"),
        ("enroll", "carol", *files(speakers, C, 0, 1, 2), *GE2E),
    ):
        code, out, err = run(capsys, db, *argv)
        assert code == 6 and out == ""
        one_line_error(err, "cannot write", "choose another --db or fix permissions")
    assert blocker.read_text() == "a file, not a directory"


NOBODY = 65534


def _main_as_nobody(argv: list[str]) -> tuple[int, str]:
    """Run ``main(argv)`` in a forked child that dropped root (root ignores file
    permissions); returns (exit code, stderr). Without root, runs in-process."""

    def attempt() -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        return code, err.getvalue()

    if os.geteuid() != 0:
        return attempt()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop root for good, run, report, exit without cleanup
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code, err = attempt()
            msg = json.dumps([code, err])
        except BaseException as exc:
            msg = json.dumps([99, f"child failed: {exc!r}"])
        os.write(write_fd, msg.encode())
        os.close(write_fd)
        os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    code, err = json.loads(b"".join(chunks).decode())
    return int(code), str(err)


def test_read_only_database_directory(template: Path, model_home: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="voiceid-cli-perm-"))
    try:
        root.chmod(0o755)
        ro = root / "ro"
        ro.mkdir()
        db = ro / "profiles.db"
        shutil.copy(template, db)
        db.chmod(0o666)
        ro.chmod(0o555)
        before = db.read_bytes()
        export = root / "export.json"
        for argv in (
            ["--db", str(db), "profiles", "list"],
            ["--db", str(db), "profiles", "delete", "alice"],
            ["--db", str(db), "threshold", "set", "0.5", "--model", "resemblyzer-ge2e"],
            ["--db", str(ro / "new.db"), "profiles", "import", str(export)],
        ):
            code, err = _main_as_nobody(argv)
            assert code == 6, (argv, err)
            one_line_error(err, "cannot write", "fix permissions")
        assert db.read_bytes() == before
        assert sorted(p.name for p in ro.iterdir()) == ["profiles.db"]
    finally:
        for p in [root, *root.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(root)


# ------------------------------------------------------------------ export/import


def test_export_import_round_trip(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path
) -> None:
    before = {n: run_json(capsys, db, "profiles", "show", n, "--vectors") for n in ("alice", "bob")}
    export = tmp_path / "out" / "profiles.json"
    doc = run_json(capsys, db, "profiles", "export", str(export))
    assert doc == {"file": str(export), "profiles": ["alice", "bob"]}
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    data = json.loads(export.read_text())
    assert data["format"] == "voiceid-profiles" and data["version"] == 1
    code, out, _ = run(capsys, db, "profiles", "export", str(tmp_path / "one.json"), "bob")
    assert code == 0 and "exported 1 profile to" in out and "biometric" in out
    assert [p["name"] for p in json.loads((tmp_path / "one.json").read_text())["profiles"]] == [
        "bob"
    ]
    # Import into a fresh DB: identical profiles, vectors included.
    fresh = tmp_path / "fresh" / "profiles.db"
    assert run_json(capsys, fresh, "profiles", "import", str(export))["profiles"] == [
        "alice",
        "bob",
    ]
    for name, want in before.items():
        assert run_json(capsys, fresh, "profiles", "show", name, "--vectors") == want
    # Again: conflict, nothing changed; --replace succeeds.
    snap = snapshot(fresh)
    code, _, err = run(capsys, fresh, "profiles", "import", str(export))
    assert code == 5
    one_line_error(err, "profiles already enrolled: alice, bob", "--replace")
    assert snapshot(fresh) == snap
    code, out, _ = run(capsys, fresh, "profiles", "import", str(export), "--replace")
    assert code == 0 and out.startswith("imported 2 profiles: alice, bob")
    # A broken export file is refused with the JSON path of the problem.
    bad = tmp_path / "bad.json"
    data["profiles"][1]["centroid"] = "!!!"
    bad.write_text(json.dumps(data))
    code, _, err = run(capsys, fresh, "profiles", "import", str(bad), "--replace")
    assert code == 5
    one_line_error(err, "profiles[1].centroid", "nothing was changed")


def test_usage_errors(capsys: pytest.CaptureFixture[str], empty_db: Path) -> None:
    for argv in (["enroll", "x"], ["verify", "x"], ["profiles"], ["threshold", "set"]):
        with pytest.raises(SystemExit) as exc:
            main(["--db", str(empty_db), *argv])
        assert exc.value.code == 2
    capsys.readouterr()


def test_scores_are_the_library_scores(
    capsys: pytest.CaptureFixture[str],
    db: Path,
    speakers: dict[str, list[Path]],
    ge2e_embedder: Any,
) -> None:
    """The CLI score is the cosine of the probe embedding with the stored centroid."""
    probe = speakers[A][8]
    doc = run_json(capsys, db, "verify", "alice", str(probe), *GE2E)
    centroid = np.array(run_json(capsys, db, "profiles", "show", "alice", "--vectors")["centroid"])
    emb = ge2e_embedder.embed(load_audio(probe, 16000))
    assert doc["score"] == pytest.approx(float(centroid @ emb), abs=1e-5)
