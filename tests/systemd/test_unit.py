"""systemd/voiceid.service: ``systemd-analyze verify`` is clean (exit 0 and nothing on
stderr: it exits 0 on unknown keys) and ``systemd-analyze security`` rates it at most
2.0 (``--threshold=20``); the settings the daemon relies on are there."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "voiceid.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (Debian package: systemd)"
)


def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing to an existing executable (verify checks it)."""
    text = UNIT.read_text()
    text = text.replace("ExecStart=/usr/bin/voiceid", f"ExecStart={shutil.which('true')}")
    out = tmp_path / "voiceid.service"
    out.write_text(text)
    return out


def settings() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


@needs_analyze
def test_verify_is_clean(tmp_path: Path) -> None:
    assert ANALYZE is not None
    proc = subprocess.run(
        [ANALYZE, "verify", str(unit_copy(tmp_path))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr


@needs_analyze
def test_security_exposure(tmp_path: Path) -> None:
    assert ANALYZE is not None
    proc = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--threshold=20", str(unit_copy(tmp_path))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    print(f"systemd-analyze security exposure: {match.group(1)}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.0


def test_unit_settings() -> None:
    configparser.ConfigParser(strict=False, interpolation=None).read(UNIT)  # parses
    s = settings()
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert one["Restart"] == "on-failure"
    assert one["DynamicUser"] == "yes"
    assert one["ExecStart"] == (
        "/usr/bin/voiceid run --config ${CONFIGURATION_DIRECTORY}/config.yaml"
    )
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    for key in ("StateDirectory", "CacheDirectory", "ConfigurationDirectory"):
        assert one[key] == "voiceid"
    assert "WatchdogSec" in s
    assert one["CapabilityBoundingSet"] == ""
    assert one["UMask"] == "0077"
    assert "VOICEID_HOME" not in UNIT.read_text().replace("Environment=VOICEID_HOME=", "")
    assert "mqtt-password:/etc/voiceid/mqtt-password" in s["LoadCredential"]
    devices = " ".join(s["DeviceAllow"])
    for node in ("char-alsa", "/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm"):
        assert node in devices
    assert one["DevicePolicy"] == "closed"
    assert one["SupplementaryGroups"] == "audio"
    assert one["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6 AF_NETLINK"
    assert one["MemoryDenyWriteExecute"] == "no"  # cffi/PortAudio callbacks, CUDA
