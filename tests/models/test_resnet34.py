"""The torch-free WeSpeaker ResNet34 graph: structure, parameter count, and it runs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray

from voiceid.models.resnet34 import (
    MODEL_URL,
    NUM_PARAMETERS,
    build_resnet34_onnx,
    count_flops,
    count_macs,
    count_parameters,
    resnet34_parameters,
    save_resnet34,
)

ort = pytest.importorskip("onnxruntime")

Array = NDArray[np.float32]


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return build_resnet34_onnx(seed=0)


@pytest.fixture(scope="module")
def session(model: onnx.ModelProto) -> object:
    return _session(model)


def _session(model: onnx.ModelProto, optimize: bool = True) -> object:
    so = ort.SessionOptions()
    if not optimize:  # else onnxruntime would fuse the BatchNormalization nodes itself
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _run(session: object, x: Array) -> Array:
    out: Array = session.run(["embs"], {"feats": x})[0]  # type: ignore[attr-defined]
    return out


def _feats(seed: int, batch: int, frames: int) -> Array:
    return np.random.default_rng(seed).standard_normal((batch, frames, 80)).astype(np.float32)


def _cos(a: Array, b: Array) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_checker_and_io(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "feats" and out.name == "embs"
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert in_dims == ["B", "T", 80]
    assert out_dims == ["B", 256]
    assert model.opset_import[0].version == 14  # as export_onnx.py


def test_graph_ops_like_the_torch_export(model: onnx.ModelProto) -> None:
    ops = Counter(n.op_type for n in model.graph.node)
    # stem + 16 blocks x 2 + 3 downsample shortcuts; BN folded into Conv (eval export)
    assert ops["Conv"] == 1 + 32 + 3
    assert ops["BatchNormalization"] == 0
    assert ops["Relu"] == 1 + 16 * 2
    assert ops["Add"] == 16 + 1  # residuals + pooling eps
    assert ops["Gemm"] == 1 and ops["Sqrt"] == 1 and ops["Concat"] == 1
    assert all(len(n.input) == 3 for n in model.graph.node if n.op_type == "Conv")


def test_parameter_count() -> None:
    params, buffers = resnet34_parameters(seed=0)
    assert count_parameters(params) == NUM_PARAMETERS == 6_634_336
    assert all(k.endswith(("running_mean", "running_var")) for k in buffers)
    # Unfolded graph: initializers = trainable params + BN buffers + a few constants.
    unfolded = build_resnet34_onnx(seed=0, fold_bn=False)
    by_name = {i.name: int(np.prod(i.dims)) for i in unfolded.graph.initializer}
    assert sum(by_name[k] for k in params) == NUM_PARAMETERS
    # File size ~ the real 26.5 MB model.
    size = build_resnet34_onnx(seed=0).ByteSize()
    assert 26.0e6 < size < 27.0e6


def test_macs() -> None:
    assert round(count_macs(200) / 1e9, 2) == 4.53  # FACTS §1
    assert count_flops(200) == 2 * count_macs(200)
    assert abs(count_macs(400) / count_macs(200) - 2.0) < 0.01


def test_metadata(model: onnx.ModelProto) -> None:
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["framework"] == "wespeaker"
    assert meta["language"] == "English"
    assert meta["sample_rate"] == "16000"
    assert meta["output_dim"] == "256"
    assert meta["normalize_samples"] == "0"
    assert meta["feature_normalize_type"] == "global-mean"
    assert meta["url"] == MODEL_URL
    assert meta["comment"].startswith("random weights (seed 0), same graph as voxceleb_resnet34_LM")


@pytest.mark.parametrize(("batch", "frames"), [(1, 200), (3, 200), (1, 150), (3, 150)])
def test_runs_dynamic_shapes(session: object, batch: int, frames: int) -> None:
    out = _run(session, _feats(1, batch, frames))
    assert out.shape == (batch, 256)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert np.abs(out).max() > 1e-3


def test_batch_equals_single(session: object) -> None:
    x = _feats(2, 3, 200)
    batched = _run(session, x)
    for i in range(3):
        np.testing.assert_allclose(batched[i], _run(session, x[i : i + 1])[0], rtol=1e-4, atol=1e-4)


def test_different_inputs_differ(session: object) -> None:
    e = _run(session, _feats(3, 3, 200))
    assert max(_cos(e[0], e[1]), _cos(e[0], e[2]), _cos(e[1], e[2])) < 0.999
    # Structured (spectrum-like) inputs are far apart.
    f = np.linspace(0.0, 1.0, 80, dtype=np.float32)
    x = np.stack([2 * np.sin(2 * np.pi * k * f) + _feats(k, 1, 200)[0] for k in (1, 4)])
    s = _run(session, x.astype(np.float32))
    assert _cos(s[0], s[1]) < 0.99


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a = build_resnet34_onnx(seed=7).SerializeToString()
    b = build_resnet34_onnx(seed=7).SerializeToString()
    assert a == b
    path = save_resnet34(tmp_path / "sub" / "rn34.onnx", seed=7)
    assert path.read_bytes() == a
    assert not [p for p in path.parent.iterdir() if p != path]  # no temp file left
    pa, _ = resnet34_parameters(seed=7)
    pb, _ = resnet34_parameters(seed=8)
    assert not np.array_equal(pa["conv1.weight"], pb["conv1.weight"])


def test_folding_matches_explicit_batchnorm(session: object) -> None:
    x = _feats(4, 2, 120)
    unfolded = _session(build_resnet34_onnx(seed=0, fold_bn=False), optimize=False)
    assert unfolded.get_providers() == ["CPUExecutionProvider"]  # type: ignore[attr-defined]
    np.testing.assert_allclose(_run(unfolded, x), _run(session, x), rtol=1e-4, atol=1e-4)


def test_other_opsets_same_output(session: object) -> None:
    x = _feats(5, 1, 64)
    ref = _run(session, x)
    for opset in (17, 18):  # ReduceMean takes axes as an input from opset 18 on
        model = build_resnet34_onnx(seed=0, opset=opset)
        assert model.opset_import[0].version == opset
        np.testing.assert_allclose(_run(_session(model), x), ref, rtol=1e-5, atol=1e-5)
