"""``quantize_int8``: which nodes it quantizes, that the int8 model runs with the same
interface, and that it agrees with fp32 on real speech windows (speed is not asserted;
see ``bench/cpu_speedups.py``). Uses the seeded random ResNet34 graph."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray

from tests.conftest import MODEL_CACHE
from voiceid.audio.io import load_audio
from voiceid.frontend.fbank import fbank
from voiceid.models import registry
from voiceid.models.quantize import name_nodes, quantize_int8, trunk_nodes
from voiceid.models.registry import ResolvedModel
from voiceid.models.resnet34 import build_resnet34_onnx

Array = NDArray[np.float32]
RANDOM = "wespeaker-resnet34-random"
FRAMES = 198  # 2 s


def _windows(path: Path, count: int, hop: int = 150) -> Array:
    feats = fbank(load_audio(path))
    out = [feats[i : i + FRAMES] for i in range(0, len(feats) - FRAMES + 1, hop)][:count]
    w = np.stack(out)
    cmn: Array = (w - w.mean(axis=1, keepdims=True)).astype(np.float32)
    return cmn


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _unit(x: Array) -> Array:
    out: Array = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


@pytest.fixture(scope="module")
def resnet() -> ResolvedModel:
    return registry.resolve(RANDOM, fetch=True, cache=MODEL_CACHE / "models")


@pytest.fixture(scope="module")
def calibration(speakers: dict[str, list[Path]]) -> list[Array]:
    """Up to two windows of the first file of each speaker, in batches of up to 10."""
    wins = np.concatenate([_windows(files[0], 2, hop=300) for files in speakers.values()])
    return [wins[:10], wins[10:]]


@pytest.fixture(scope="module")
def evaluation(speakers: dict[str, list[Path]]) -> Array:
    """Other utterances: three windows of the second file of four speakers, [12, 198, 80]."""
    return np.concatenate([_windows(files[1], 3) for files in list(speakers.values())[:4]])


@pytest.fixture(scope="module")
def int8(
    resnet: ResolvedModel, calibration: list[Array], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    dst = tmp_path_factory.mktemp("int8") / "resnet34-int8.onnx"
    assert quantize_int8(resnet.path, dst, calibration) == dst
    return dst


def test_trunk_is_convs_residual_adds_and_their_relus() -> None:
    model = name_nodes(build_resnet34_onnx(seed=0))
    picked = set(trunk_nodes(model))
    kinds = Counter(n.op_type for n in model.graph.node if n.name in picked)
    assert kinds == {"Conv": 36, "Relu": 32, "Add": 16}  # 16 BasicBlocks
    # the pooling head stays float: its Add (var + eps), the last Relu, stats, Gemm
    head = [n for n in model.graph.node if n.name not in picked]
    assert {"ReduceMean", "Sqrt", "Concat", "Gemm", "Mul"} <= {n.op_type for n in head}
    assert [n.op_type for n in head].count("Add") == 1
    last_relu = [n for n in model.graph.node if n.op_type == "Relu"][-1]
    assert last_relu.name not in picked


def test_name_nodes_fills_missing_and_duplicate_names() -> None:
    model = build_resnet34_onnx(seed=0)
    model.graph.node[0].name = ""
    model.graph.node[2].name = model.graph.node[1].name
    names = [n.name for n in name_nodes(model).graph.node]
    assert all(names) and len(set(names)) == len(names)


def test_int8_model_runs_and_agrees_with_fp32(
    resnet: ResolvedModel, int8: Path, evaluation: Array
) -> None:
    ref = _unit(_session(resnet.path).run(None, {"feats": evaluation})[0])
    q = _session(int8)
    out = q.run(None, {"feats": evaluation})[0]
    assert out.shape == (len(evaluation), 256) and out.dtype == np.float32
    assert np.isfinite(out).all()
    cos = (_unit(out) * ref).sum(axis=1)
    assert cos.min() >= 0.99, cos
    # one window alone gives the same embedding as inside the batch (no batch coupling)
    one = q.run(None, {"feats": evaluation[:1]})[0]
    np.testing.assert_allclose(one[0], out[0], rtol=1e-4, atol=1e-4)
    # dynamic T still works (a 3 s window)
    longer = np.zeros((1, 300, 80), dtype=np.float32)
    assert q.run(None, {"feats": longer})[0].shape == (1, 256)


def test_int8_file_is_quantized_and_keeps_metadata(
    resnet: ResolvedModel, int8: Path, calibration: list[Array]
) -> None:
    model = onnx.load(str(int8))
    kinds = Counter(n.op_type for n in model.graph.node)
    assert kinds["QuantizeLinear"] > 0 and kinds["DequantizeLinear"] > 0
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 36  # every conv weight
    # conv weights int8; the Gemm (1.3 M weights) stays float32: 10.7 MB of 26.5 MB
    assert int8.stat().st_size < resnet.path.stat().st_size / 2
    meta = {p.key: p.value for p in model.metadata_props}
    src = {p.key: p.value for p in onnx.load(str(resnet.path)).metadata_props}
    assert {k: meta[k] for k in src} == src
    windows = sum(len(b) for b in calibration)
    assert meta["quantization"].startswith("int8 static qdq: 84 trunk nodes")
    assert f"minmax calibration on {windows} windows" in meta["quantization"]
    assert [p.name for p in int8.parent.iterdir()] == [int8.name]  # no temp files left


def test_rewrites_existing_destination_atomically(
    resnet: ResolvedModel, calibration: list[Array], tmp_path: Path
) -> None:
    dst = tmp_path / "m.onnx"
    dst.write_bytes(b"old")
    quantize_int8(resnet.path, dst, iter(w for w in calibration[0][:4]), quant_format="qoperator")
    kinds = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert "QLinearConv" in kinds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_bad_calibration_is_refused(resnet: ResolvedModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no calibration windows"):
        quantize_int8(resnet.path, tmp_path / "a.onnx", [])
    with pytest.raises(ValueError, match="has no input 'wav'"):
        quantize_int8(resnet.path, tmp_path / "b.onnx", [np.zeros((1, 198, 80))], input_name="wav")
    with pytest.raises(ValueError, match=r"\[T, F\] or \[B, T, F\]"):
        quantize_int8(resnet.path, tmp_path / "c.onnx", [np.zeros(80, dtype=np.float32)])
    assert not (tmp_path / "c.onnx").exists()
    assert list(tmp_path.iterdir()) == []
