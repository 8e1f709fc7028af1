"""``voiceid doctor``: a good setup passes; a missing model, a corrupt or unwritable
database, a bad config, a busy port, an unreachable broker and a wrong model hash each
fail with an explanation; warnings do not fail."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from voiceid.cli import main
from voiceid.models import registry


def write_config(path: Path, **sections: Any) -> Path:
    cfg: dict[str, Any] = {
        "model": {"name": "resemblyzer-ge2e", "device": "cpu", "threads": 1, "fetch": False},
        "db": str(path.parent / "profiles.db"),
        "websocket": {"port": 0},
        "http": {"port": 0},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(cfg))
    return path


def doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["doctor", "--json", *argv])
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] == (code == 0)
    return code, {c["name"]: c for c in report["checks"]}


@pytest.fixture()
def ge2e_cached(model_home: Path, ge2e_embedder: object) -> Path:
    """VOICEID_HOME with the GE2E model built (the session fixture builds it once)."""
    return model_home


def test_good_setup(tmp_path: Path, ge2e_cached: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "config.yaml")
    code, checks = doctor(capsys, "--config", str(config))
    assert code == 0, checks
    assert checks["config"]["status"] == "ok"
    assert checks["model"]["status"] == "ok" and "verified" in checks["model"]["message"]
    assert checks["provider"]["details"]["provider"] == "CPUExecutionProvider"
    assert checks["database"]["status"] == "ok"  # will be created
    assert checks["mqtt"]["status"] == "skip"
    # the text report says the same
    assert main(["doctor", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "no problems" in out and "provider" in out


def test_missing_model_says_how_to_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VOICEID_HOME", str(tmp_path / "empty"))
    config = write_config(tmp_path / "config.yaml")
    code, checks = doctor(capsys, "--config", str(config))
    assert code == 1
    assert checks["model"]["status"] == "fail"
    assert "voiceid models fetch resemblyzer-ge2e" in checks["model"]["hint"]
    assert checks["provider"]["status"] == "skip"
    # with fetch: true it is only a warning (the daemon downloads it at start)
    config = write_config(tmp_path / "config.yaml", model={"fetch": True})
    code, checks = doctor(capsys, "--config", str(config))
    assert code == 0 and checks["model"]["status"] == "warn"


def test_wrong_model_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("VOICEID_HOME", str(home))
    path = registry.model_path("wespeaker-resnet34-lm")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the model")
    config = write_config(tmp_path / "config.yaml", model={"name": "wespeaker-resnet34-lm"})
    code, checks = doctor(capsys, "--config", str(config))
    assert code == 1
    model = checks["model"]
    assert model["status"] == "fail"
    assert registry.WESPEAKER_SHA256 in model["message"]
    assert model["details"]["sha256"] in model["message"]  # both hashes
    assert "model.sha256" in model["hint"]


def test_corrupt_database(
    tmp_path: Path, ge2e_cached: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "profiles.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    config = write_config(tmp_path / "config.yaml")
    code, checks = doctor(capsys, "--config", str(config))
    assert code == 1
    assert checks["database"]["status"] == "fail"
    assert str(db) in checks["database"]["message"]
    assert checks["model"]["status"] == "ok"  # the other checks still ran


def test_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  name: resemblyzer-ge2e\n  devise: cpu\n")
    code, checks = doctor(capsys, "--config", str(config))
    assert code == 1
    assert checks["config"]["status"] == "fail"
    assert "config.yaml:3" in checks["config"]["message"]  # file:line of the typo
    assert {c["status"] for n, c in checks.items() if n != "config"} == {"skip"}


def test_busy_port_and_unreachable_broker(
    tmp_path: Path, ge2e_cached: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy, socket.socket() as closed:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        config = write_config(
            tmp_path / "config.yaml",
            websocket={"port": busy.getsockname()[1]},
            mqtt={"enabled": True, "host": "127.0.0.1", "port": closed.getsockname()[1]},
        )
        code, checks = doctor(capsys, "--config", str(config))
    assert code == 1
    assert checks["ports"]["status"] == "fail" and "in use" in checks["ports"]["message"]
    assert checks["mqtt"]["status"] == "fail" and "unreachable" in checks["mqtt"]["message"]


MDWE = """
import ctypes, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE
    sys.exit(77)
from voiceid.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_microphones_under_memory_deny_write_execute(tmp_path: Path, ge2e_cached: Path) -> None:
    """What systemd's MemoryDenyWriteExecute=yes does to PortAudio's cffi callbacks
    (the kernel's PR_SET_MDWE gives the same refusal): doctor names the setting."""
    pytest.importorskip("cffi")
    try:
        import sounddevice  # noqa: F401
    except OSError:
        pytest.skip("PortAudio (libportaudio2) not installed")
    config = write_config(tmp_path / "config.yaml", mics=[{"name": "mic"}])
    proc = subprocess.run(
        [sys.executable, "-c", MDWE, "doctor", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode == 77:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert proc.returncode == 1
    assert checks["audio"]["status"] == "fail", checks["audio"]
    assert "MemoryDenyWriteExecute" in checks["audio"]["hint"]
