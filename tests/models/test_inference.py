"""``EmbeddingModel``: providers (cpu / cuda / auto fallback), input checks, broken files,
unit-norm outputs and batch independence, on the seeded random ResNet34 graph."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MODEL_CACHE
from voiceid.audio.io import load_audio
from voiceid.errors import ModelError
from voiceid.frontend.fbank import fbank
from voiceid.models import inference, registry
from voiceid.models.inference import CPU, CUDA, EmbeddingModel, l2_normalize
from voiceid.models.registry import ResolvedModel

RANDOM = "wespeaker-resnet34-random"


@pytest.fixture(scope="module")
def resnet() -> ResolvedModel:
    return registry.resolve(RANDOM, fetch=True, cache=MODEL_CACHE / "models")


@pytest.fixture(scope="module")
def cpu_model(resnet: ResolvedModel) -> EmbeddingModel:
    return EmbeddingModel(resnet.path, resnet.card, device="cpu", intra_threads=2)


@pytest.fixture(scope="module")
def speech_feats(speakers: dict[str, list[Path]]) -> np.ndarray:
    """CMN'd fbank of three 2 s windows (200 frames) of real speech, [3, 200, 80]."""
    samples = load_audio(speakers["1688"][0])
    feats = fbank(samples[: 6 * 16000 + 240])
    windows = np.stack([feats[i * 200 : (i + 1) * 200] for i in range(3)])
    return (windows - windows.mean(axis=1, keepdims=True)).astype(np.float32)


def test_cpu_device_uses_cpu_provider(cpu_model: EmbeddingModel, resnet: ResolvedModel) -> None:
    assert cpu_model.provider == CPU
    assert cpu_model.session.get_providers() == [CPU]
    assert cpu_model.card is resnet.card and cpu_model.path == resnet.path


def test_cuda_without_usable_gpu_is_refused(resnet: ResolvedModel) -> None:
    try:
        model = EmbeddingModel(resnet.path, resnet.card, device="cuda", intra_threads=1)
    except ModelError as err:
        assert err.exit_code == 4
        assert "device 'cuda' requested but" in err.message
        # either this runtime has no CUDA provider, or it has one that cannot start
        if inference.cuda_listed():
            assert "CUDA could not be initialised" in err.message
            assert err.hint is not None and "nvidia-smi" in err.hint
        else:
            assert "no CUDA provider" in err.message
            assert err.hint is not None and "onnxruntime-gpu" in err.hint
        return
    assert model.provider == CUDA
    pytest.skip("CUDA works on this machine (a GPU is usable): nothing to refuse")


def test_cuda_refused_when_runtime_has_no_cuda_provider(
    resnet: ResolvedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU-only onnxruntime build (e.g. on aarch64): refused before any session is made."""
    monkeypatch.setattr(inference, "cuda_listed", lambda: False)
    with pytest.raises(ModelError) as info:
        EmbeddingModel(resnet.path, resnet.card, device="cuda")
    assert "this ONNX Runtime has no CUDA provider" in info.value.message
    assert info.value.hint is not None and "device: auto|cpu" in info.value.hint


def _cuda_usable(resnet: ResolvedModel) -> bool:
    if not inference.cuda_listed():
        return False
    try:
        EmbeddingModel(resnet.path, resnet.card, device="cuda", intra_threads=1)
    except ModelError:
        return False
    return True


def test_auto_falls_back_to_cpu_with_a_warning(
    resnet: ResolvedModel,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    if _cuda_usable(resnet):
        pytest.skip("CUDA works on this machine: device auto rightly picks it, no fallback")
    # CUDA "listed but unusable": real with onnxruntime-gpu on a GPU-less box; simulated
    # on a CPU-only onnxruntime build (ONNX Runtime then ignores the CUDA provider request).
    monkeypatch.setattr(inference, "cuda_listed", lambda: True)
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="voiceid.models.inference"):
        model = EmbeddingModel(resnet.path, resnet.card, device="auto", intra_threads=2)
    assert model.provider == CPU
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage() == (f"device auto: CUDA unavailable, running {RANDOM} on CPU")
    # ONNX Runtime's own provider-load errors are silenced: we said it in one line
    err = capfd.readouterr().err
    assert "Failed to load library" not in err and "CUDAExecutionProvider" not in err
    out = model.embed(np.zeros((1, 100, 80), np.float32))
    assert out.shape == (1, 256)


def test_auto_without_cuda_provider_is_silent(
    resnet: ResolvedModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(inference, "cuda_listed", lambda: False)
    with caplog.at_level(logging.WARNING, logger="voiceid.models.inference"):
        model = EmbeddingModel(resnet.path, resnet.card, device="auto", intra_threads=1)
    assert model.provider == CPU
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize(
    "shape",
    [(200, 80), (1, 200, 40), (1, 200, 81), (1, 1, 200, 80), (80,)],
    ids=["2d", "40-bins", "81-bins", "4d", "1d"],
)
def test_wrong_feature_shape(cpu_model: EmbeddingModel, shape: tuple[int, ...]) -> None:
    with pytest.raises(ModelError) as info:
        cpu_model.embed(np.zeros(shape, np.float32))
    assert info.value.message == f"expected features [B, T, 80], got {shape}"


def _truncated(src: Path, dest: Path) -> Path:
    dest.write_bytes(src.read_bytes()[: 1 << 20])
    return dest


@pytest.mark.parametrize("kind", ["truncated", "random-bytes", "text", "empty", "missing"])
def test_broken_onnx_file(
    kind: str, resnet: ResolvedModel, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.onnx"
    if kind == "truncated":
        _truncated(resnet.path, path)
    elif kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "text":
        path.write_text("this is not an ONNX model\n")
    elif kind == "empty":
        path.write_bytes(b"")
    with pytest.raises(ModelError) as info:
        EmbeddingModel(path, resnet.card, device="cpu")
    err = info.value
    assert type(err) is ModelError  # our error, not onnxruntime's Fail / InvalidProtobuf
    assert err.message.startswith(f"cannot load ONNX model {path}: ")
    assert "\n" not in str(err)
    assert err.hint is not None and "truncated" in err.hint
    assert err.__cause__ is not None  # the runtime's own exception is kept for --debug


def test_card_input_name_must_exist(resnet: ResolvedModel) -> None:
    card = resnet.card.model_copy(update={"input_name": "fbank"})
    with pytest.raises(ModelError) as info:
        EmbeddingModel(resnet.path, card, device="cpu")
    assert "has no input 'fbank'" in info.value.message and "['feats']" in info.value.message
    assert info.value.hint == "fix input_name in the model card"


def test_outputs_are_unit_norm(cpu_model: EmbeddingModel, speech_feats: np.ndarray) -> None:
    out = cpu_model.embed(speech_feats)
    assert out.dtype == np.float32 and out.shape == (3, 256)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    # not one vector three times: the windows differ
    assert float(out[0] @ out[1]) < 0.999999
    # any length works (T is dynamic)
    short = cpu_model.embed(speech_feats[:1, :57])
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, rtol=1e-5)


def test_batch_equals_singles(cpu_model: EmbeddingModel, speech_feats: np.ndarray) -> None:
    batch = cpu_model.embed(speech_feats)
    singles = np.concatenate([cpu_model.embed(speech_feats[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(batch, singles, rtol=1e-4, atol=1e-6)


def test_l2_normalize_keeps_zero_rows() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    out = l2_normalize(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float32
