"""The ``voiceid`` command line: ``models``, ``embed``, ``compare``; JSON schemas, exit codes
and one-line errors; plus the acceptance test on real speech (same speaker scores above
different speakers).

Most calls run in-process (``voiceid.cli.main``) with ``capsys``; a few run the installed
console script in a subprocess to prove it works. ``--device cpu`` keeps stderr free of
the "CUDA unavailable" warning on machines with onnxruntime-gpu but no GPU.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voiceid import __version__
from voiceid.audio.io import load_audio, write_wav
from voiceid.cli import main
from voiceid.errors import AudioError
from voiceid.models import registry
from voiceid.models.download import sha256_file
from voiceid.models.embedder import Embedder

GE2E = "resemblyzer-ge2e"
EMBED = ("--model", GE2E, "--device", "cpu", "--threads", "2")
SCRIPT = Path(sys.executable).parent / "voiceid"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    assert err == ""
    assert out.endswith("\n") and out.count("\n") == 1  # one JSON document, one line
    return json.loads(out)


def assert_one_line_error(err: str, *fragments: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("voiceid: error: ")
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def unit_norm(vec: list[float]) -> np.ndarray:
    v = np.asarray(vec, dtype=np.float64)
    assert v.shape == (256,)
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    return v


@pytest.fixture(autouse=True)
def ge2e_cached(model_home: Path) -> Path:
    """Every test runs with VOICEID_HOME at the shared model cache (GE2E built there once)."""
    registry.resolve(GE2E, fetch=True, cache=model_home / "models")
    return model_home


@pytest.fixture(scope="module")
def a_file(speakers: dict[str, list[Path]]) -> Path:
    return speakers["1688"][0]  # 15.0 s, male


@pytest.fixture()
def bad_files(tmp_path: Path, a_file: Path) -> dict[str, Path]:
    speech = load_audio(a_file)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(0).bytes(8192))
    return {
        "missing": tmp_path / "missing.wav",
        "garbage": garbage,
        "silence": write_wav(tmp_path / "silence.wav", np.zeros(3 * 16000, np.float32)),
        "short": write_wav(tmp_path / "short.wav", speech[16000 : 16000 + 4800]),
    }


# -- models ------------------------------------------------------------------------------


def test_models_list_json(capsys: pytest.CaptureFixture[str], model_home: Path) -> None:
    rows = run_json(capsys, "models", "list")
    assert [r["name"] for r in rows] == registry.names()
    for r in rows:
        assert set(r) == {"name", "dim", "frontend", "cached", "path", "description"}
        assert r["dim"] == 256
        assert r["path"] == str(model_home / "models" / registry.card(r["name"]).filename)
        assert r["cached"] == Path(r["path"]).is_file()
    by_name = {r["name"]: r for r in rows}
    assert by_name[GE2E]["cached"] is True
    assert by_name[GE2E]["frontend"] == "mel_power"
    assert by_name["wespeaker-resnet34-lm"]["frontend"] == "kaldi_fbank"


def test_models_list_fresh_home(capsys: pytest.CaptureFixture[str], voiceid_home: Path) -> None:
    rows = run_json(capsys, "models", "list")
    assert [r["cached"] for r in rows] == [False, False, False]
    assert all(r["path"].startswith(str(voiceid_home / "models")) for r in rows)
    code, out, _ = run(capsys, "models", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["name", "dim", "frontend", "cached", "description"]
    assert set(lines[1]) == {"-", " "}
    assert [ln.split()[0] for ln in lines[2:]] == registry.names()
    assert all(ln.split()[3] == "no" for ln in lines[2:])


def test_models_info_json(
    capsys: pytest.CaptureFixture[str], model_home: Path, ge2e_embedder: Embedder
) -> None:
    info = run_json(capsys, "models", "info", GE2E)
    path = model_home / "models" / "resemblyzer-ge2e.onnx"
    assert info["name"] == GE2E and info["dim"] == 256
    assert info["inputs"] == [{"name": "feats", "shape": ["B", "T", 40]}]
    assert info["outputs"] == [{"name": "embs", "shape": ["B", 256]}]
    assert info["fingerprint"] == ge2e_embedder.fingerprint
    assert info["fingerprint"] == registry.resolve(GE2E).fingerprint
    assert info["cached"] is True and info["path"] == str(path)
    assert info["file_sha256"] == sha256_file(path)
    assert info["size_bytes"] == path.stat().st_size
    assert info["opset"] == 17
    assert info["threshold"] == 0.75
    assert info["frontend"]["kind"] == "mel_power" and info["frontend"]["num_bins"] == 40
    assert info["metadata"]["framework"] == GE2E


def test_models_info_uncached(capsys: pytest.CaptureFixture[str], voiceid_home: Path) -> None:
    info = run_json(capsys, "models", "info", "wespeaker-resnet34-lm")
    assert info["cached"] is False
    assert info["sha256"] == registry.WESPEAKER_SHA256
    assert info["fingerprint"] == registry.card("wespeaker-resnet34-lm").fingerprint()
    assert "inputs" not in info and "file_sha256" not in info


def test_models_info_fingerprint_of_unpinned_model(
    capsys: pytest.CaptureFixture[str], model_home: Path
) -> None:
    name = "wespeaker-resnet34-random"
    resolved = registry.resolve(name, fetch=True, cache=model_home / "models")
    assert run_json(capsys, "models", "info", name)["fingerprint"] == resolved.fingerprint


def test_models_fetch_offline(
    capsys: pytest.CaptureFixture[str], voiceid_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No network (name lookup fails, as on this machine): exit 4, one line saying where to
    put the file and which sha256 it must have."""

    def offline(*args: object, **kwargs: object) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    code, out, err = run(capsys, "models", "fetch", "wespeaker-resnet34-lm")
    dest = voiceid_home / "models" / "voxceleb_resnet34_LM.onnx"
    assert code == 4
    assert out == ""
    assert_one_line_error(
        err,
        "cannot reach huggingface.co",
        "offline",
        f"place the file by hand at {dest}",
        f"sha256 {registry.WESPEAKER_SHA256}",
    )
    assert not dest.exists()
    assert not dest.with_name(dest.name + ".part").exists()


def test_models_fetch_builds_random(capsys: pytest.CaptureFixture[str], voiceid_home: Path) -> None:
    code, out, err = run(capsys, "models", "fetch", "wespeaker-resnet34-random")
    path = voiceid_home / "models" / "wespeaker-resnet34-random-seed0.onnx"
    assert (code, err) == (0, "")
    assert out == f"wespeaker-resnet34-random: {path}\n"
    assert path.is_file()


# -- embed ----------------------------------------------------------------------------------


def test_embed_json(
    capsys: pytest.CaptureFixture[str], a_file: Path, ge2e_embedder: Embedder
) -> None:
    doc = run_json(capsys, "embed", str(a_file), *EMBED)
    assert set(doc) == {"model", "fingerprint", "dim", "duration_s", "embedding"}
    assert doc["model"] == GE2E and doc["dim"] == 256
    assert doc["fingerprint"] == ge2e_embedder.fingerprint
    samples = load_audio(a_file)
    assert doc["duration_s"] == round(len(samples) / 16000, 3) == 15.0
    emb = unit_norm(doc["embedding"])
    assert float(emb @ ge2e_embedder.embed(samples)) > 0.99999


def test_embed_text(capsys: pytest.CaptureFixture[str], a_file: Path) -> None:
    code, out, err = run(capsys, "embed", str(a_file), *EMBED)
    assert (code, err) == (0, "")
    head, values = out.splitlines()
    assert head == f"{a_file}: {GE2E} dim=256 duration=15.0 s"
    assert len(values.split()) == 9 and values.endswith("...")


def test_embed_sliding_json(capsys: pytest.CaptureFixture[str], a_file: Path) -> None:
    doc = run_json(
        capsys,
        "embed",
        str(a_file),
        *EMBED,
        "--window",
        "sliding",
        "--duration",
        "2",
        "--step",
        "1",
    )
    assert set(doc) == {"model", "fingerprint", "dim", "duration_s", "embeddings"}
    windows = doc["embeddings"]
    assert [w["start_s"] for w in windows] == [float(k) for k in range(14)]
    for w in windows:
        assert set(w) == {"start_s", "end_s", "embedding"}
        assert w["end_s"] == w["start_s"] + 2.0
        unit_norm(w["embedding"])
    assert windows[-1]["end_s"] <= doc["duration_s"]


def test_embed_sliding_with_start_end(capsys: pytest.CaptureFixture[str], a_file: Path) -> None:
    doc = run_json(
        capsys,
        "embed",
        str(a_file),
        *EMBED,
        "--window",
        "sliding",
        "--duration",
        "2",
        "--step",
        "1",
        "--start",
        "3",
        "--end",
        "9",
    )
    assert doc["duration_s"] == 6.0
    # times are in the file's clock, not the clip's
    assert [(w["start_s"], w["end_s"]) for w in doc["embeddings"]] == [
        (3.0, 5.0),
        (4.0, 6.0),
        (5.0, 7.0),
        (6.0, 8.0),
        (7.0, 9.0),
    ]


def test_embed_start_end(
    capsys: pytest.CaptureFixture[str], a_file: Path, ge2e_embedder: Embedder
) -> None:
    doc = run_json(capsys, "embed", str(a_file), *EMBED, "--start", "2.5", "--end", "7.25")
    assert doc["duration_s"] == 4.75
    emb = unit_norm(doc["embedding"])
    clip = ge2e_embedder.embed(load_audio(a_file, start=2.5, end=7.25))
    whole = ge2e_embedder.embed(load_audio(a_file))
    assert float(emb @ clip) > 0.99999
    assert float(emb @ whole) < 0.9999  # really only the clip


def test_compare_json(
    capsys: pytest.CaptureFixture[str], speakers: dict[str, list[Path]], ge2e_embedder: Embedder
) -> None:
    a0, a1, b0 = speakers["1688"][0], speakers["1688"][1], speakers["367"][0]
    same = run_json(capsys, "compare", str(a0), str(a1), *EMBED)
    assert set(same) == {"model", "score", "threshold", "same_speaker"}
    assert same["model"] == GE2E and same["threshold"] == 0.75
    ea, ea1, eb = (ge2e_embedder.embed(load_audio(f)) for f in (a0, a1, b0))
    assert abs(same["score"] - float(ea @ ea1)) < 1e-5
    assert same["same_speaker"] is True
    diff = run_json(capsys, "compare", str(a0), str(b0), *EMBED)
    assert abs(diff["score"] - float(ea @ eb)) < 1e-5
    assert diff["same_speaker"] is False
    # --threshold overrides the card's
    strict = run_json(capsys, "compare", str(a0), str(a1), *EMBED, "--threshold", "0.99")
    assert strict["threshold"] == 0.99 and strict["same_speaker"] is False
    assert strict["score"] == same["score"]
    code, out, _ = run(capsys, "compare", str(a0), str(a1), *EMBED)
    assert code == 0 and out == f"score {same['score']:.4f} (threshold 0.75): same speaker\n"


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "code", "fragment"),
    [
        ("missing", 3, "audio file not found: "),
        ("garbage", 3, "cannot read audio file "),
        ("silence", 3, "holds no speech (0.00 s voiced of 3.0 s)"),
        ("short", 3, "is too short: 0.30 s"),
    ],
)
def test_embed_audio_errors(
    capsys: pytest.CaptureFixture[str],
    bad_files: dict[str, Path],
    a_file: Path,
    case: str,
    code: int,
    fragment: str,
) -> None:
    path = bad_files[case]
    got, out, err = run(capsys, "embed", str(path), *EMBED, "--json")
    assert got == code == AudioError.exit_code
    assert out == ""
    line = assert_one_line_error(err, fragment)
    assert str(path) in line
    # compare refuses it the same way, whichever side it is on
    for pair in ((path, a_file), (a_file, path)):
        got, out, err = run(capsys, "compare", *map(str, pair), *EMBED)
        assert (got, out) == (code, "")
        assert str(path) in assert_one_line_error(err, fragment)


def test_unknown_model_error(capsys: pytest.CaptureFixture[str], a_file: Path) -> None:
    for argv in (
        ("embed", str(a_file), "--model", "nope", "--device", "cpu"),
        ("compare", str(a_file), str(a_file), "--model", "nope", "--device", "cpu"),
        ("models", "info", "nope"),
        ("models", "fetch", "nope"),
    ):
        code, out, err = run(capsys, *argv)
        assert code == 4, argv
        assert out == ""
        assert_one_line_error(err, "unknown model 'nope'", GE2E, "voiceid models list")


def test_debug_shows_the_exception(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="audio file not found"):
        main(["--debug", "embed", str(tmp_path / "missing.wav"), *EMBED])


def test_console_script_and_module(a_file: Path, tmp_path: Path) -> None:
    """The installed ``voiceid`` script and ``python -m voiceid`` are the same CLI."""
    if not SCRIPT.is_file():
        pytest.skip(f"console script not installed next to {sys.executable}")
    version = subprocess.run(
        [sys.executable, "-m", "voiceid", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"voiceid {__version__}"
    missing = tmp_path / "missing.wav"
    proc = subprocess.run(
        [str(SCRIPT), "embed", str(missing), *EMBED],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert_one_line_error(proc.stderr, f"audio file not found: {missing}")


# -- acceptance: same speaker above different speakers ----------------------------------------


def _sex(audio_dir: Path) -> dict[str, str]:
    table = audio_dir / "SPEAKERS.TXT"
    if not table.is_file():
        pytest.skip(f"speaker table {table} missing")
    sex = {}
    for line in table.read_text().splitlines():
        if line.startswith(";") or "|" not in line:
            continue
        fields = [f.strip() for f in line.split("|")]
        sex[fields[0]] = fields[1]
    return sex


def test_acceptance_same_speaker_above_different(
    audio_dir: Path,
    speakers: dict[str, list[Path]],
    ge2e_embedder: Embedder,
    model_home: Path,
) -> None:
    """Issue acceptance: with resemblyzer-ge2e, every same-speaker pair of speaker A scores
    above every pair of A against a speaker B of the other sex."""
    sex = _sex(audio_dir)
    ids = sorted(speakers, key=int)
    a = next(s for s in ids if sex.get(s) == "M")
    b = next(s for s in ids if sex.get(s) == "F")
    assert len(speakers[a]) == len(speakers[b]) == 10
    emb_a = np.stack([ge2e_embedder.embed(load_audio(f)) for f in speakers[a]])
    emb_b = np.stack([ge2e_embedder.embed(load_audio(f)) for f in speakers[b]])
    same = [float(emb_a[i] @ emb_a[j]) for i, j in itertools.combinations(range(10), 2)]
    diff = [float(x @ y) for x in emb_a for y in emb_b]
    assert len(same) == 45 and len(diff) == 100
    margin = min(same) - max(diff)
    print(
        f"\nacceptance ({GE2E}): A={a} ({sex[a]}) B={b} ({sex[b]}): "
        f"{len(same)} same-speaker pairs min {min(same):.4f} mean {np.mean(same):.4f}; "
        f"{len(diff)} A-vs-B pairs max {max(diff):.4f} mean {np.mean(diff):.4f}; "
        f"margin {margin:+.4f}"
    )
    assert min(same) > max(diff)

    # and through the installed CLI, as a user would run it (two pairs)
    if not SCRIPT.is_file():
        pytest.skip(f"console script not installed next to {sys.executable}")
    pairs = (
        (speakers[a][1], float(emb_a[0] @ emb_a[1]), True),
        (speakers[b][0], float(emb_a[0] @ emb_b[0]), False),
    )
    for other, expected, want in pairs:
        proc = subprocess.run(
            [str(SCRIPT), "compare", str(speakers[a][0]), str(other), *EMBED, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
        doc = json.loads(proc.stdout)
        print(f"CLI compare {speakers[a][0].name} {other.name}: {doc}")
        assert abs(doc["score"] - expected) < 1e-5
        assert doc["same_speaker"] is want
