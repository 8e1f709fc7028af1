"""GPU helpers (``voiceid.models.gpu``) and the CUDA path of ``EmbeddingModel``.

The graph rewriting (fp16 trunk, fixed shapes, Cast merging) is checked on the CPU with
ONNX Runtime's CPU provider, which runs fp16 graphs; tests that need a GPU skip with the
reason when CUDA is not usable here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.conftest import MODEL_CACHE
from voiceid.audio.io import load_audio
from voiceid.frontend.fbank import fbank
from voiceid.models import gpu, registry
from voiceid.models.inference import CPU, CUDA, EmbeddingModel
from voiceid.models.registry import ResolvedModel
from voiceid.models.resnet34 import build_resnet34_onnx

RANDOM = "wespeaker-resnet34-random"
needs_gpu = pytest.mark.skipif(
    not gpu.cuda_usable(), reason="needs a usable CUDA GPU (onnxruntime-gpu, CUDA 13, cuDNN 9)"
)


@pytest.fixture(scope="module")
def model32() -> onnx.ModelProto:
    m: onnx.ModelProto = build_resnet34_onnx(0)
    return m


@pytest.fixture(scope="module")
def resnet() -> ResolvedModel:
    return registry.resolve(RANDOM, fetch=True, cache=MODEL_CACHE / "models")


@pytest.fixture(scope="module")
def speech(speakers: dict[str, list[Path]]) -> np.ndarray:
    """Eight CMN'd 2 s windows (198 frames) of real speech, [8, 198, 80]."""
    samples = np.concatenate([load_audio(f) for f in speakers["1688"][:3]])
    feats = fbank(samples)
    wins = np.stack([feats[i * 150 : i * 150 + 198] for i in range(8)])
    out: np.ndarray = (wins - wins.mean(axis=1, keepdims=True)).astype(np.float32)
    return out


def run_cpu(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=[CPU])
    return np.asarray(sess.run(None, {"feats": x})[0], dtype=np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    out: np.ndarray = np.asarray((a * b).sum(axis=1))
    return out


# -- graph rewriting (CPU) -------------------------------------------------------------


def test_head_is_everything_after_the_last_conv(model32: onnx.ModelProto) -> None:
    head = set(gpu.head_nodes(model32.graph))
    ops = Counter(n.op_type for n in model32.graph.node if n.name in head)
    assert ops["Conv"] == 0
    assert ops["Gemm"] == 1 and ops["ReduceMean"] == 3 and ops["Shape"] == 1
    trunk = [n for n in model32.graph.node if n.name not in head]
    assert Counter(n.op_type for n in trunk)["Conv"] == 36
    assert trunk[0].op_type == "Transpose"  # the input's layout change feeds the convs


def test_trunk_fp16_types_and_io(model32: onnx.ModelProto) -> None:
    m = gpu.to_fp16(model32)
    onnx.checker.check_model(m)
    inits = {t.name: t.data_type for t in m.graph.initializer}
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert inits["conv1.weight"] == fp16 and inits["layer4.2.conv2.bias"] == fp16
    assert inits["seg_1.weight"] == fp32 and inits["mean_vec"] == fp32  # head stays fp32
    assert m.graph.input[0].type.tensor_type.elem_type == fp32
    assert m.graph.output[0].type.tensor_type.elem_type == fp32
    casts = [n for n in m.graph.node if n.op_type == "Cast"]
    # in: feats -> fp16; out: the last conv and the last block's shortcut -> fp32; the
    # graph's own Cast of the frame count (int -> float) is untouched
    assert len(casts) == 4
    assert len({n.name for n in m.graph.node}) == len(m.graph.node)


def test_trunk_fp16_matches_fp32_on_speech(model32: onnx.ModelProto, speech: np.ndarray) -> None:
    cos = cosine(run_cpu(gpu.to_fp16(model32), speech), run_cpu(model32, speech))
    assert cos.min() >= 0.9999, cos


def test_whole_graph_fp16_is_a_valid_model(model32: onnx.ModelProto, speech: np.ndarray) -> None:
    """ORT's converter with keep_io_types: one Cast per (tensor, type), topologically sorted.

    (On the GPU this variant overflowed to NaN on real speech: docs/performance.md.)
    """
    m = gpu.to_fp16(model32, fp32_head=False)
    onnx.checker.check_model(m)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    cos = cosine(run_cpu(m, speech[:2]), run_cpu(model32, speech[:2]))
    assert cos.min() >= 0.9999, cos


def test_merge_duplicate_casts_rewires_consumers() -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, [2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    nodes = [
        onnx.helper.make_node("Cast", ["x"], ["a"], name="c", to=onnx.TensorProto.FLOAT),
        onnx.helper.make_node("Cast", ["x"], ["b"], name="c", to=onnx.TensorProto.FLOAT),
        onnx.helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    g = onnx.helper.make_graph(nodes, "g", [x], [y])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 14)])
    m.ir_version = 8
    assert gpu.merge_duplicate_casts(m.graph) == 1
    onnx.checker.check_model(m)
    assert [n.op_type for n in m.graph.node] == ["Cast", "Add"]
    assert list(m.graph.node[1].input) == ["a", "a"]
    out = run_cpu_any(m, {"x": np.array([1.0, 2.0], np.float16)})
    np.testing.assert_allclose(out, [2.0, 4.0])


def run_cpu_any(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=[CPU])
    return np.asarray(sess.run(None, feeds)[0])


def test_fixed_shapes_fold_the_shape_arithmetic(
    model32: onnx.ModelProto, speech: np.ndarray, tmp_path: Path
) -> None:
    assert gpu.input_dims(model32, "feats") == ["B", "T", 80]
    fixed = gpu.fix_shape(gpu.to_fp16(model32), "feats", (4, 198, 80))
    assert gpu.input_dims(fixed, "feats") == [4, 198, 80]
    out_dims = [d.dim_value for d in fixed.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims == [4, 256]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = ort.InferenceSession(fixed.SerializeToString(), opts, providers=[CPU])
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    # what kept CUDA graphs from capturing: these ran on the CPU; now they are constants
    assert ops["Shape"] == 0 and ops["Gather"] == 0 and ops["ReduceProd"] == 0
    got = np.asarray(sess.run(None, {"feats": speech[:4]})[0])
    want = run_cpu(gpu.to_fp16(model32), speech[:4])
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    with pytest.raises(Exception, match=r"dimension|shape|Got invalid"):
        sess.run(None, {"feats": speech[:2]})


# -- EmbeddingModel on the CPU ----------------------------------------------------------


def test_auto_precision_is_fp32_without_a_gpu(resnet: ResolvedModel) -> None:
    if gpu.cuda_usable():
        pytest.skip("a GPU is usable here: auto means fp16 on it")
    m = EmbeddingModel(resnet.path, resnet.card, device="auto", intra_threads=1)
    assert m.provider == CPU and m.precision == "fp32"
    d = m.describe()
    assert d["static_shapes"] is False and d["cuda_graph"] is False and d["io_binding"] is False
    assert m.runner_for((1, 198, 80)) is None


def test_fp16_runs_on_the_cpu_provider(resnet: ResolvedModel, speech: np.ndarray) -> None:
    m16 = EmbeddingModel(resnet.path, resnet.card, device="cpu", precision="fp16", intra_threads=2)
    m32 = EmbeddingModel(resnet.path, resnet.card, device="cpu", intra_threads=2)
    assert m16.precision == "fp16" and m16.provider == CPU
    cos = (m16.embed(speech) * m32.embed(speech)).sum(axis=1)
    assert cos.min() >= 0.9999, cos


def test_cuda_usable_is_cached_and_boolean() -> None:
    first = gpu.cuda_usable()
    assert isinstance(first, bool) and gpu.cuda_usable() is first


def test_cuda_options_merge_over_defaults() -> None:
    opts = gpu.cuda_options({"prefer_nhwc": "0", "gpu_mem_limit": str(1 << 30)})
    assert opts["prefer_nhwc"] == "0"
    assert opts["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert opts["gpu_mem_limit"] == str(1 << 30)


# -- GPU only -----------------------------------------------------------------------------


@needs_gpu
def test_cuda_default_path_static_graphs_match_cpu(
    resnet: ResolvedModel, speech: np.ndarray
) -> None:
    m = EmbeddingModel(resnet.path, resnet.card, device="cuda")
    assert m.provider == CUDA and m.precision == "fp16" and m.cuda_graph
    ref = EmbeddingModel(resnet.path, resnet.card, device="cpu").embed(speech)
    first = m.embed(speech)  # a new shape runs on the dynamic session ...
    assert (8, 198, 80) not in m.static_sessions
    got = m.embed(speech)  # ... and gets its own static session when seen again
    assert (8, 198, 80) in m.static_sessions
    np.testing.assert_allclose(got, first, atol=2e-3)
    runner = m.runner_for((8, 198, 80))
    assert isinstance(runner, gpu.StaticRunner) and runner.cuda_graph
    assert float((got * ref).sum(axis=1).min()) >= 0.9999
    again = m.embed(speech[::-1].copy())  # replay with new inputs in the same buffers
    np.testing.assert_allclose(again, got[::-1], atol=2e-3)


@needs_gpu
def test_cuda_without_static_shapes_uses_io_binding(
    resnet: ResolvedModel, speech: np.ndarray
) -> None:
    m = EmbeddingModel(resnet.path, resnet.card, device="cuda", static_shapes=False)
    assert m.static_sessions == [] and isinstance(m.runner_for((3, 198, 80)), gpu.BoundRunner)
    a = m.embed(speech[:3])
    b = EmbeddingModel(resnet.path, resnet.card, device="cuda", io_binding=False).embed(speech[:3])
    assert float((a * b).sum(axis=1).min()) >= 0.9999


@needs_gpu
def test_static_session_cap_falls_back_to_dynamic(resnet: ResolvedModel) -> None:
    m = EmbeddingModel(resnet.path, resnet.card, device="cuda", max_static=1)
    m.prepare([(2, 98)])
    assert m.static_sessions == [(2, 98, 80)]
    x = np.zeros((3, 98, 80), np.float32)
    m.embed(x)
    m.embed(x)  # seen twice, but over the cap: stays on the shared session
    assert m.static_sessions == [(2, 98, 80)]
    assert m.runner_for((3, 98, 80)) is m._bound
