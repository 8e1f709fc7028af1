"""`voiceid models quantize` and the int8 variant through --precision / registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from voiceid.cli import main
from voiceid.errors import ModelError
from voiceid.models import registry


def test_quantize_makes_a_variant_with_its_own_fingerprint(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    speakers: dict[str, list[Path]],
) -> None:
    monkeypatch.setenv("VOICEID_HOME", str(tmp_path / "home"))
    name = "wespeaker-resnet34-random"
    with pytest.raises(ModelError, match="voiceid models quantize"):
        registry.resolve(name, fetch=True, precision="int8")
    calib = tmp_path / "calib"
    calib.mkdir()
    for files in speakers.values():  # one file per speaker is enough here
        (calib / files[0].name).symlink_to(files[0])
    assert main(["models", "quantize", name, "--calibration", str(calib)]) == 0
    assert "int8" in capsys.readouterr().out
    fp32 = registry.resolve(name)
    int8 = registry.resolve(name, precision="int8")
    assert int8.path != fp32.path and int8.path.is_file()
    assert int8.fingerprint != fp32.fingerprint

    probe = str(speakers[sorted(speakers)[0]][1])
    vecs = []
    for precision in ("fp32", "int8"):
        args = ["embed", probe, "--model", name, "--precision", precision, "--json"]
        assert main([*args, "--device", "cpu"]) == 0
        vecs.append(np.array(json.loads(capsys.readouterr().out)["embedding"]))
    cosine = float(vecs[0] @ vecs[1])
    print(f"int8 vs fp32 cosine on a real utterance: {cosine:.5f}")
    assert cosine > 0.99


def test_quantize_refuses_a_model_without_convolutions(
    model_home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["models", "quantize", "resemblyzer-ge2e", "--calibration", str(tmp_path)])
    assert code == 4
    assert "no convolutional trunk" in capsys.readouterr().err
