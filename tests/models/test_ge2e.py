"""Resemblyzer's pretrained GE2E: fetched from PyPI, converted without torch, checked
against Resemblyzer's own outputs (shared/reference-ge2e.json).

The download (``pip download resemblyzer==0.1.4``, ~16 MB) is cached in
``$VOICEID_TEST_CACHE`` (default ``/tmp/voiceid-test-cache``) across runs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf

from voiceid.errors import DownloadError, ModelError
from voiceid.frontend.ge2e_preprocess import preprocess_utterance
from voiceid.frontend.melpower import mel_power_spectrogram
from voiceid.models.ge2e import (
    ONNX_FILENAME,
    PRETRAINED_MEMBER,
    PRETRAINED_SHA256,
    build_ge2e_onnx,
    ensure_ge2e_onnx,
    fetch_resemblyzer_weights,
)
from voiceid.models.segments import padded_length, segment_slices
from voiceid.models.torchpickle import load_legacy_torch

CACHE = Path(os.environ.get("VOICEID_TEST_CACHE", "/tmp/voiceid-test-cache"))


@pytest.fixture(scope="module")
def weights() -> Path:
    return fetch_resemblyzer_weights(CACHE)


@pytest.fixture(scope="module")
def state(weights: Path) -> dict[str, np.ndarray]:
    return load_legacy_torch(weights)


@pytest.fixture(scope="module")
def onnx_path(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Converted afresh each session (from a copy of the cached weights): never stale."""
    models = tmp_path_factory.mktemp("ge2e-models")
    shutil.copyfile(weights, models / weights.name)
    t0 = time.perf_counter()
    path = ensure_ge2e_onnx(models)
    print(f"GE2E conversion (load + build + check + write): {time.perf_counter() - t0:.3f} s")
    return path


@pytest.fixture(scope="module")
def session(onnx_path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def reference(shared_dir: Path) -> dict[str, Any]:
    path = shared_dir / "reference-ge2e.json"
    if not path.is_file():
        pytest.skip(f"Resemblyzer reference outputs not found at {path}")
    files: dict[str, Any] = json.loads(path.read_text())["files"]
    return files


def embed_utterance(
    session: ort.InferenceSession, wav: np.ndarray
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Resemblyzer's ``embed_utterance(preprocess_wav(wav))`` with our parts."""
    pre = preprocess_utterance(wav)
    slices = segment_slices(len(pre))
    padded = np.pad(pre, (0, max(0, padded_length(slices) - len(pre))))
    mel = mel_power_spectrogram(padded)
    partials = np.stack([mel[a:b] for a, b in slices])
    embs = session.run(["embs"], {"feats": partials})[0]
    mean = embs.mean(axis=0)
    return mean / np.linalg.norm(mean), slices


def test_weights_hash_and_state(weights: Path, state: dict[str, np.ndarray]) -> None:
    import hashlib

    assert hashlib.sha256(weights.read_bytes()).hexdigest() == PRETRAINED_SHA256
    assert state["lstm.weight_ih_l0"].shape == (1024, 40)
    for layer in range(3):
        assert state[f"lstm.weight_hh_l{layer}"].shape == (1024, 256)
        assert state[f"lstm.bias_ih_l{layer}"].shape == (1024,)
    assert state["linear.weight"].shape == (256, 256)
    n_params = sum(v.size for k, v in state.items() if k.startswith(("lstm.", "linear.")))
    assert n_params == 1_423_616  # FACTS: 1.42 M parameters
    # a second fetch reuses the file (no pip run): fast
    t0 = time.perf_counter()
    assert fetch_resemblyzer_weights(weights.parent) == weights
    assert time.perf_counter() - t0 < 1.0


def test_graph(state: dict[str, np.ndarray], onnx_path: Path) -> None:
    model = build_ge2e_onnx(state)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert [n.op_type for n in model.graph.node].count("LSTM") == 3
    props = {p.key: p.value for p in model.metadata_props}
    assert props["framework"] == "resemblyzer-ge2e"
    assert props["sample_rate"] == "16000"
    assert props["output_dim"] == "256"
    assert PRETRAINED_SHA256 in props["comment"]
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "feats" and out.name == "embs"
    assert [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim] == ["B", "T", 40]
    # the cached file is the same graph
    assert onnx.load(str(onnx_path)).SerializeToString() == model.SerializeToString()
    t0 = time.perf_counter()
    assert ensure_ge2e_onnx(onnx_path.parent) == onnx_path
    assert time.perf_counter() - t0 < 0.5


def test_output_is_unit_norm_and_batch_independent(session: ort.InferenceSession) -> None:
    rng = np.random.default_rng(0)
    feats = (rng.random((4, 160, 40)) ** 4 * 0.05).astype(np.float32)
    batch = session.run(["embs"], {"feats": feats})[0]
    assert batch.shape == (4, 256)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-5)
    assert np.all(batch >= 0)  # ReLU before the norm
    one = session.run(["embs"], {"feats": feats[2:3]})[0]
    np.testing.assert_allclose(one[0], batch[2], atol=1e-6)
    # other lengths work (T is dynamic)
    assert session.run(["embs"], {"feats": feats[:, :37]})[0].shape == (4, 256)


def test_matches_resemblyzer(
    session: ort.InferenceSession, reference: dict[str, Any], shared_dir: Path
) -> None:
    for rel, ref in reference.items():
        path = shared_dir / rel
        if not path.is_file():
            pytest.skip(f"reference audio {path} missing")
        wav, sr = sf.read(path, dtype="float32")
        assert sr == 16000
        emb, slices = embed_utterance(session, wav)
        assert len(slices) == ref["n_partials"], rel
        assert [[a * 160, b * 160] for a, b in slices] == ref["partial_slices_in_samples"], rel
        cosine = float(emb @ np.asarray(ref["embedding"], dtype=np.float64))
        assert cosine >= 0.9999, (rel, cosine)


def _fake_wheel(directory: Path, payload: bytes) -> Path:
    """A wheel that pip accepts as resemblyzer 0.1.4, carrying ``payload`` as pretrained.pt."""
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / "Resemblyzer-0.1.4-py3-none-any.whl"
    info = "Resemblyzer-0.1.4.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(PRETRAINED_MEMBER, payload)
        zf.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: Resemblyzer\nVersion: 0.1.4\n"
        )
        zf.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{info}/RECORD", "")
    return wheel


def test_tampered_weights_hash_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    payload = b"not the pretrained GE2E weights"
    wrong = hashlib.sha256(payload).hexdigest()
    index = tmp_path / "index"
    _fake_wheel(index, payload)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    dest = tmp_path / "models"
    with pytest.raises(DownloadError) as info:
        fetch_resemblyzer_weights(dest)
    message = str(info.value)
    assert wrong in message and PRETRAINED_SHA256 in message
    assert not (dest / "pretrained.pt").exists()
    assert list(dest.iterdir()) == []  # no temp file left behind


def test_pip_failure_says_what_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-index"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    dest = tmp_path / "models"
    with pytest.raises(DownloadError) as info:
        fetch_resemblyzer_weights(dest)
    err = info.value
    assert "pip download resemblyzer==0.1.4" in err.message
    assert "resemblyzer" in err.message.lower() and "ERROR" in err.message
    assert err.hint is not None and str(dest / "pretrained.pt") in err.hint
    assert isinstance(err, ModelError)


def test_wrong_cached_weights_are_replaced_not_trusted(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A corrupt pretrained.pt in the cache is not reused: a fetch is attempted (here it is
    # served the real wheel's member from a local index built from the cached weights).
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "pretrained.pt").write_bytes(b"corrupt")
    index = tmp_path / "index"
    _fake_wheel(index, weights.read_bytes())
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    got = fetch_resemblyzer_weights(dest)
    assert got.read_bytes() == weights.read_bytes()
    path = ensure_ge2e_onnx(dest)
    assert path == dest / ONNX_FILENAME and path.stat().st_size > 5_000_000


def _resemblyzer_partial_slices(n_samples: int) -> list[tuple[int, int]]:
    """``VoiceEncoder.compute_partial_slices(n_samples, 1.3, 0.75)`` (resemblyzer 0.1.4),
    transcribed: the oracle for :func:`segment_slices`."""
    samples_per_frame = int(16000 * 10 / 1000)
    n_frames = int(np.ceil((n_samples + 1) / samples_per_frame))
    frame_step = int(np.round((16000 / 1.3) / samples_per_frame))
    mel_slices = []
    steps = max(1, n_frames - 160 + frame_step + 1)
    for i in range(0, steps, frame_step):
        mel_slices.append((i, i + 160))
    last_start, last_stop = mel_slices[-1][0] * 160, mel_slices[-1][1] * 160
    coverage = (n_samples - last_start) / (last_stop - last_start)
    if coverage < 0.75 and len(mel_slices) > 1:
        mel_slices = mel_slices[:-1]
    return mel_slices


def test_segment_slices_match_resemblyzer() -> None:
    lengths = [0, 1, 159, 160, 16000, 25599, 25600, 25601, 36000, 71520, 127200]
    lengths += list(range(30000, 60000, 37))
    for n in lengths:
        expected = _resemblyzer_partial_slices(n)
        assert segment_slices(n) == expected, n
        assert padded_length(expected) == expected[-1][1] * 160
    assert segment_slices(0) == [(0, 160)]  # always one partial, even for no audio
    assert segment_slices(36000) == [(0, 160), (77, 237)]
    # a third partial starts at frame 154 (sample 24640) once n ≥ 37760; it is kept only
    # when ≥ 75 % of its 25600 samples are audio, i.e. n ≥ 43840
    assert segment_slices(40000) == [(0, 160), (77, 237)]
    assert segment_slices(43839) == [(0, 160), (77, 237)]
    assert segment_slices(43840) == [(0, 160), (77, 237), (154, 314)]
    assert padded_length(segment_slices(43840)) == 314 * 160  # > 43840: pad
    assert padded_length(segment_slices(40000)) == 237 * 160  # < 40000: no padding
