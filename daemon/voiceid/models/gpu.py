"""GPU helpers for :class:`voiceid.models.inference.EmbeddingModel`.

Three things make ONNX Runtime's CUDA provider fast on the ResNet34 graph (measured in
docs/performance.md):

* **fp16** (:func:`to_fp16`): ``onnxruntime.transformers.float16`` with
  ``keep_io_types=True`` (the model still takes and returns float32). By default only the
  convolutional trunk is converted: the pooling head (mean/std over time, the final
  Linear) stays float32, because squared deviations of the last stage's activations can
  exceed the fp16 range (65,504) on loud inputs, and the head is < 1 % of the FLOPs.
* **static shapes** (:func:`fix_shape`): one copy of the graph per (batch, frames) bucket,
  with both dims fixed. ONNX Runtime then folds the shape arithmetic of the pooling
  (``Shape`` -> ``Gather`` -> ``ReduceProd`` -> ``Cast``, which otherwise runs on the CPU)
  into constants, so every node runs on the GPU and the provider can capture the whole
  run as one **CUDA graph** (``enable_cuda_graph``): one launch instead of ~80.
* **IO binding** (:class:`StaticRunner`, :class:`BoundRunner`): input and output live in
  device buffers allocated once per shape; a batch is one host-to-device copy in, one
  run, one device-to-host copy of the [B, D] output.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
Precision = Literal["auto", "fp32", "fp16"]
AlgoSearch = Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"]

#: CUDA provider options used unless the caller overrides them (chosen by measurement,
#: docs/performance.md): NHWC convolutions (tensor cores want channels-last fp16) and the
#: exhaustive cuDNN algorithm search, done once per shape at warm-up.
DEFAULT_CUDA_OPTIONS: dict[str, str] = {
    "prefer_nhwc": "1",
    "cudnn_conv_algo_search": "EXHAUSTIVE",
    "cudnn_conv_use_max_workspace": "1",
    "fuse_conv_bias": "1",  # cuDNN-frontend conv + bias fusion: +41 % at B=512 (H200)
}


# -- graph rewriting ---------------------------------------------------------------------


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node of the main graph a unique name (block lists need names)."""
    seen = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"voiceid_node_{i}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)


def head_nodes(graph: onnx.GraphProto, trunk_ops: tuple[str, ...] = ("Conv",)) -> list[str]:
    """Names of the nodes no ``trunk_ops`` node depends on: the head after the conv trunk.

    For the ResNet34 graph these are the TSTP pooling (ReduceMean, Sub, Mul, Sqrt, the
    Shape arithmetic), the Flatten/Concat and the final Gemm/Sub.
    """
    producer: dict[str, onnx.NodeProto] = {o: n for n in graph.node for o in n.output}
    feeds_trunk: set[str] = set()
    stack = [n for n in graph.node if n.op_type in trunk_ops]
    while stack:
        node = stack.pop()
        if node.name in feeds_trunk:
            continue
        feeds_trunk.add(node.name)
        stack.extend(producer[i] for i in node.input if i in producer)
    return [n.name for n in graph.node if n.name not in feeds_trunk]


def to_fp16(model: onnx.ModelProto, *, fp32_head: bool = True) -> onnx.ModelProto:
    """A float16 copy of ``model`` that still takes and returns float32.

    ``fp32_head`` (default): only the convolutional trunk (every Conv and the nodes that
    feed one) runs in fp16 (:func:`trunk_to_fp16`); the pooling and Linear after it stay
    float32. Otherwise the whole graph is converted by ONNX Runtime's
    ``convert_float_to_float16(keep_io_types=True)``.
    """
    if fp32_head:
        return trunk_to_fp16(model)
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = onnx.ModelProto()
    m.CopyFrom(model)
    name_nodes(m)
    out: onnx.ModelProto = convert_float_to_float16(m, keep_io_types=True)
    merge_duplicate_casts(out.graph)
    return out


def trunk_to_fp16(
    model: onnx.ModelProto, trunk_ops: tuple[str, ...] = ("Conv",)
) -> onnx.ModelProto:
    """fp16 for the trunk (the ``trunk_ops`` nodes and every node feeding one), fp32 after.

    Float initializers and ``Constant`` outputs used only by trunk nodes become fp16; a
    float graph input read by the trunk gets one ``Cast`` to fp16; each trunk tensor read
    by a later node (or a graph output) gets one ``Cast`` back to float32. Shape
    annotations of intermediate tensors are dropped (types change).
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    name_nodes(m)
    g = m.graph
    head = set(head_nodes(g, trunk_ops))
    trunk = [n for n in g.node if n.name not in head]
    trunk_names = {n.name for n in trunk}
    users: dict[str, set[str]] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, set()).add(n.name)
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    # initializers read only by the trunk: to fp16 (shared ones get an fp16 copy)
    inits = {t.name: t for t in g.initializer}
    renamed: dict[str, str] = {}
    for name, t in list(inits.items()):
        if t.data_type != fp32 or not (users.get(name, set()) & trunk_names):
            continue
        arr = onnx.numpy_helper.to_array(t).astype(np.float16)
        if users[name] <= trunk_names:
            t.CopyFrom(onnx.numpy_helper.from_array(arr, name))
        else:
            copy = f"{name}_fp16"
            g.initializer.append(onnx.numpy_helper.from_array(arr, copy))
            renamed[name] = copy
    for n in trunk:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == fp32:
                    arr = onnx.numpy_helper.to_array(a.t).astype(np.float16)
                    a.t.CopyFrom(onnx.numpy_helper.from_array(arr))
        for i, name in enumerate(n.input):
            if name in renamed:
                n.input[i] = renamed[name]
    new_nodes: list[onnx.NodeProto] = []
    # graph inputs (float) read by the trunk: one Cast to fp16
    for inp in g.input:
        if inp.name in inits or inp.type.tensor_type.elem_type != fp32:
            continue
        if not (users.get(inp.name, set()) & trunk_names):
            continue
        half = f"{inp.name}_fp16"
        new_nodes.append(
            onnx.helper.make_node("Cast", [inp.name], [half], name=f"{half}_cast", to=fp16)
        )
        for n in trunk:
            for i, name in enumerate(n.input):
                if name == inp.name:
                    n.input[i] = half
    # trunk outputs read after the trunk: one Cast back to float32
    graph_outputs = {o.name for o in g.output}
    produced = {o: n for n in trunk for o in n.output}
    head_nodes_l = [n for n in g.node if n.name in head]
    for tensor in list(produced):
        readers = users.get(tensor, set()) & head
        if not readers and tensor not in graph_outputs:
            continue
        if produced[tensor].op_type in ("Shape", "Size"):
            continue  # integer outputs
        full = f"{tensor}_fp32"
        new_nodes.append(
            onnx.helper.make_node("Cast", [tensor], [full], name=f"{full}_cast", to=fp32)
        )
        for n in head_nodes_l:
            for i, name in enumerate(n.input):
                if name == tensor:
                    n.input[i] = full
        for o in g.output:
            if o.name == tensor:  # a graph output straight from the trunk: rename
                produced[tensor].output[list(produced[tensor].output).index(tensor)] = (
                    f"{tensor}_half"
                )
                new_nodes[-1].input[0] = f"{tensor}_half"
                new_nodes[-1].output[0] = tensor
    del g.value_info[:]
    nodes = list(g.node)
    casts_in = [c for c in new_nodes if c.output[0].endswith("_fp16")]
    casts_out = [c for c in new_nodes if c not in casts_in]
    # keep a topological order: input casts first, each output cast right after its producer
    ordered: list[onnx.NodeProto] = [*casts_in]
    after: dict[str, list[onnx.NodeProto]] = {}
    for c in casts_out:
        after.setdefault(c.input[0], []).append(c)
    for n in nodes:
        ordered.append(n)
        for o in n.output:
            ordered.extend(after.get(o, []))
    del g.node[:]
    g.node.extend(ordered)
    return m


def merge_duplicate_casts(graph: onnx.GraphProto) -> int:
    """Keep one ``Cast`` per (input, target type); rewire the consumers of the others.

    The fp16 converter inserts one Cast per consumer at an fp16/fp32 boundary, all with
    the same node name (an invalid model when a tensor has several fp32 consumers).
    Returns the number of Casts removed.
    """
    keep: dict[tuple[str, int], str] = {}
    rename: dict[str, str] = {}
    drop: list[onnx.NodeProto] = []
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type != "Cast" or node.output[0] in outputs:
            continue
        to = next((a.i for a in node.attribute if a.name == "to"), -1)
        key = (node.input[0], to)
        if key in keep:
            rename[node.output[0]] = keep[key]
            drop.append(node)
        else:
            keep[key] = node.output[0]
    for node in drop:
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    seen: set[str] = set()
    for i, node in enumerate(graph.node):  # any other clash: make names unique
        if node.name in seen:
            node.name = f"{node.name}_{i}"
        seen.add(node.name)
    topo_sort(graph)
    return len(drop)


def topo_sort(graph: onnx.GraphProto) -> None:
    """Order the nodes so that each comes after the producers of its inputs (stable)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or a missing input: leave the rest as is
            ordered.extend(rest)
            break
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def input_dims(model: onnx.ModelProto, input_name: str) -> list[int | str | None]:
    """The input's dims: an int where fixed, the symbol's name where symbolic, else None."""
    for i in model.graph.input:
        if i.name == input_name:
            dims: list[int | str | None] = []
            for d in i.type.tensor_type.shape.dim:
                if d.HasField("dim_value") and d.dim_value > 0:
                    dims.append(int(d.dim_value))
                elif d.HasField("dim_param") and d.dim_param:
                    dims.append(d.dim_param)
                else:
                    dims.append(None)
            return dims
    raise ValueError(f"model has no input {input_name!r}")


def fix_shape(model: onnx.ModelProto, input_name: str, shape: tuple[int, ...]) -> onnx.ModelProto:
    """A copy of ``model`` whose input ``input_name`` has the fixed ``shape`` everywhere.

    Symbolic dims are replaced throughout the graph (outputs included); intermediate
    shape annotations are dropped and inferred again, so ONNX Runtime sees static shapes
    and folds the shape arithmetic into constants.
    """
    from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

    m = onnx.ModelProto()
    m.CopyFrom(model)
    make_input_shape_fixed(m.graph, input_name, list(shape))
    del m.graph.value_info[:]
    inferred: onnx.ModelProto = onnx.shape_inference.infer_shapes(m)
    return inferred


def serialized(model: onnx.ModelProto) -> bytes:
    data: bytes = model.SerializeToString()
    return data


# -- sessions ------------------------------------------------------------------------------


@functools.cache
def cuda_usable(device_id: int = 0) -> bool:
    """True when the CUDA provider really loads here (a one-node probe session, cached).

    ``onnxruntime-gpu`` lists the provider even where CUDA/cuDNN libraries or the GPU are
    missing and then silently runs on the CPU; only a session tells.
    """
    if CUDA not in ort.get_available_providers():
        return False
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    probe.ir_version = 8
    ort.set_default_logger_severity(4)
    try:
        sess = ort.InferenceSession(
            probe.SerializeToString(),
            providers=[(CUDA, {"device_id": str(device_id)}), CPU],
        )
        return bool(sess.get_providers()[0] == CUDA)
    except Exception:
        return False
    finally:
        ort.set_default_logger_severity(2)


def cuda_options(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """:data:`DEFAULT_CUDA_OPTIONS` updated with ``overrides`` (string values)."""
    out = dict(DEFAULT_CUDA_OPTIONS)
    out.update({k: str(v) for k, v in (overrides or {}).items()})
    return out


def session_options(intra_threads: int | None = None, inter_threads: int = 1) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_threads:
        opts.intra_op_num_threads = intra_threads
    opts.inter_op_num_threads = inter_threads
    return opts


class BoundRunner:
    """Runs one session with IO binding: per input shape, device buffers made once.

    Each call: one host-to-device copy of the features into the shape's input buffer,
    ``run_with_iobinding``, one device-to-host copy of the output.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        input_name: str,
        output_name: str,
        dim: int,
        *,
        device_id: int = 0,
        run_options: ort.RunOptions | None = None,
    ) -> None:
        self.session = session
        self.input_name = input_name
        self.output_name = output_name
        self.dim = dim
        self.device_id = device_id
        self.run_options = run_options
        self._lock = threading.Lock()
        self._bound: dict[tuple[int, ...], tuple[ort.IOBinding, ort.OrtValue, ort.OrtValue]] = {}

    def _binding(self, shape: tuple[int, ...]) -> tuple[ort.IOBinding, ort.OrtValue, ort.OrtValue]:
        got = self._bound.get(shape)
        if got is None:
            x = ort.OrtValue.ortvalue_from_shape_and_type(
                list(shape), np.float32, "cuda", self.device_id
            )
            y = ort.OrtValue.ortvalue_from_shape_and_type(
                [shape[0], self.dim], np.float32, "cuda", self.device_id
            )
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.input_name, x)
            binding.bind_ortvalue_output(self.output_name, y)
            got = (binding, x, y)
            self._bound[shape] = got
        return got

    def run(self, feats: NDArray[np.float32]) -> NDArray[np.float32]:
        with self._lock:  # the shape's buffers are shared: one run at a time
            binding, x, y = self._binding(tuple(feats.shape))
            x.update_inplace(np.ascontiguousarray(feats, dtype=np.float32))
            self.session.run_with_iobinding(binding, self.run_options)
            out: NDArray[np.float32] = y.numpy()
        return out

    def run_device(self, shape: tuple[int, ...]) -> None:
        """Run on whatever the shape's input buffer holds (compute-only timing)."""
        with self._lock:
            binding, _x, _y = self._binding(shape)
            self.session.run_with_iobinding(binding, self.run_options)


class StaticRunner(BoundRunner):
    """A session for one fixed (batch, frames) shape, optionally replayed as a CUDA graph.

    Built from a graph whose input shape was fixed (:func:`fix_shape`); warmed at
    construction (``warm_runs`` runs: the cuDNN search, then the CUDA graph capture), so
    the first real batch runs at full speed.
    """

    def __init__(
        self,
        model: bytes,
        shape: tuple[int, int, int],
        *,
        input_name: str,
        output_name: str,
        dim: int,
        options: Mapping[str, str],
        cuda_graph: bool,
        device_id: int = 0,
        warm_runs: int = 3,
        intra_threads: int | None = None,
    ) -> None:
        opts = session_options(intra_threads)
        if cuda_graph:
            # every node on the GPU or the session fails here (not silently slow)
            opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        provider = dict(options)
        provider["device_id"] = str(device_id)
        if cuda_graph:
            provider["enable_cuda_graph"] = "1"
        # with CUDA graphs: the CUDA provider alone (listing the CPU provider as well
        # conflicts with disable_cpu_ep_fallback)
        providers: list[str | tuple[str, dict[str, str]]] = [(CUDA, provider)]
        if not cuda_graph:
            providers.append(CPU)
        session = ort.InferenceSession(model, opts, providers=providers)
        if session.get_providers()[0] != CUDA:
            raise RuntimeError("CUDA provider did not load for a static-shape session")
        super().__init__(session, input_name, output_name, dim, device_id=device_id)
        self.shape = shape
        self.cuda_graph = cuda_graph
        zeros = np.zeros(shape, np.float32)
        for _ in range(max(1, warm_runs)):
            self.run(zeros)

    def run(self, feats: NDArray[np.float32]) -> NDArray[np.float32]:
        if tuple(feats.shape) != self.shape:
            raise ValueError(f"static session for {self.shape} got {feats.shape}")
        return super().run(feats)
