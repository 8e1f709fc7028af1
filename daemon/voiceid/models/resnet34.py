"""WeSpeaker ResNet34 as ONNX, built torch-free with seeded random weights (speed tests only).

The graph is the one ``wespeaker/bin/export_onnx.py`` writes for ``ResNet34(feat_dim=80,
embed_dim=256, pooling_func="TSTP", two_emb_layer=False)`` (``voxceleb_resnet34_LM.onnx``):

- input ``feats`` float32 [B, T, 80] (B, T dynamic) -> ``Transpose`` [B, 80, T] ->
  ``Unsqueeze`` [B, 1, 80, T];
- ``Conv`` 3x3 (1 -> 32, stride 1, pad 1) + ``Relu``;
- four stages of BasicBlocks, [3, 4, 6, 3] blocks, 32/64/128/256 channels, first-block
  strides 1/2/2/2: ``Conv`` 3x3 + ``Relu`` + ``Conv`` 3x3, ``Add`` the shortcut (a 1x1
  strided ``Conv`` where stride != 1 or channels change, else identity), ``Relu``;
  output [B, 256, 10, T'] with T' = ceil(T / 8);
- TSTP pooling over the last (time) axis, as ``torch.onnx`` writes ``x.mean(-1)`` and
  ``torch.sqrt(torch.var(x, -1) + 1e-7)`` (unbiased variance: ``ReduceMean`` of squared
  deviations times n / (n - 1), n read from ``Shape``), each ``Flatten``-ed to
  [B, 2560], ``Concat`` -> [B, 5120];
- ``Gemm`` (Linear 5120 -> 256, ``transB=1``), then ``Sub`` of the exporter's
  ``mean_vec`` buffer (zeros unless exported with ``--mean_vec``) -> output ``embs``
  [B, 256], not normalised.

BatchNorm: ``torch.onnx.export`` of a model in eval mode (``model.eval()`` in
export_onnx.py) fuses every Conv -> BatchNorm pair into the Conv (its ONNX eval peephole
pass), so the real file holds ``Conv`` nodes *with a bias* and no ``BatchNormalization``
nodes. ``fold_bn=True`` (default) reproduces that; ``fold_bn=False`` keeps explicit
``BatchNormalization`` nodes (eps 1e-5, as ``nn.BatchNorm2d``) for checking the folding.

Parameters are created as the torch model holds them (conv weights without bias, BN
weight/bias, Linear weight/bias: 6,634,336 trainable values; BN running mean 0 / var 1 are
buffers) and then folded. He-normal conv init; BN weight ~1 +- 0.1, bias ~0 +- 0.1, except
the last BN of each residual branch and of each projection shortcut, whose weight is
scaled by 1/sqrt(2), so that activations stay bounded through 16 blocks (RMS ~1 after
the stem, ~40 at the last block for unit-variance input); ``seg_1`` rows are centred per
(statistic, channel) over frequency (see :func:`resnet34_parameters`). Generation is pure
numpy (``default_rng(seed)``): for a given seed the file's bytes, hence its sha256, do not
depend on the machine (only, at most, on the numpy version).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

MODEL_URL = (
    "https://huggingface.co/Wespeaker/wespeaker-resnet34-LM/resolve/"
    "f0c48c298fd835726c27956a5d617bad7115627e/voxceleb_resnet34_LM.onnx"
)
MODEL_SHA256 = "7bb2f06e9df17cdf1ef14ee8a15ab08ed28e8d0ef5054ee135741560df2ec068"
NUM_PARAMETERS = 6_634_336  # trainable parameters of ResNet34(feat_dim=80, embed_dim=256)
BLOCKS = (3, 4, 6, 3)
STRIDES = (1, 2, 2, 2)
BN_EPS = 1e-5  # nn.BatchNorm2d default
POOL_EPS = 1e-7  # wespeaker TSTP: sqrt(var + 1e-7)

Array = NDArray[np.float32]


def _stages(base_channels: int) -> list[tuple[str, int, int, int]]:
    """(prefix, in_channels, out_channels, stride) of every BasicBlock, in order."""
    out: list[tuple[str, int, int, int]] = []
    cin = base_channels
    for i, (n, stride) in enumerate(zip(BLOCKS, STRIDES, strict=True)):
        planes = base_channels * 2**i
        for b in range(n):
            out.append((f"layer{i + 1}.{b}", cin, planes, stride if b == 0 else 1))
            cin = planes
    return out


def _has_shortcut(cin: int, cout: int, stride: int) -> bool:
    return stride != 1 or cin != cout


def _stats_dim(num_bins: int, base_channels: int) -> int:
    # ResNet.stats_dim = int(feat_dim / 8) * m_channels * 8; TSTP doubles it.
    return int(num_bins / 8) * base_channels * 8


def resnet34_parameters(
    seed: int = 0, embed_dim: int = 256, num_bins: int = 80, base_channels: int = 32
) -> tuple[dict[str, Array], dict[str, Array]]:
    """Seeded (trainable parameters, buffers) named as in the torch ``state_dict``.

    Trainable: ``*.conv*.weight`` / ``*.shortcut.0.weight`` (no conv bias), BN ``weight``
    and ``bias``, ``seg_1.weight`` [embed_dim, 2*stats_dim] and ``seg_1.bias``. Buffers:
    BN ``running_mean`` (0) and ``running_var`` (1).
    """
    if num_bins % 8:
        raise ValueError(
            f"num_bins must be a multiple of 8 (three stride-2 stages), not {num_bins}"
        )
    rng = np.random.default_rng(seed)
    params: dict[str, Array] = {}
    buffers: dict[str, Array] = {}

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        std = np.sqrt(2.0 / (cin * k * k))  # He normal, fan_in, for ReLU
        params[name] = (rng.standard_normal((cout, cin, k, k)) * std).astype(np.float32)

    def bn(name: str, c: int, gain: float) -> None:
        params[f"{name}.weight"] = (gain * (1.0 + 0.1 * rng.standard_normal(c))).astype(np.float32)
        params[f"{name}.bias"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        buffers[f"{name}.running_mean"] = np.zeros(c, np.float32)
        buffers[f"{name}.running_var"] = np.ones(c, np.float32)

    conv("conv1.weight", base_channels, 1, 3)
    bn("bn1", base_channels, 1.0)
    for prefix, cin, cout, stride in _stages(base_channels):
        conv(f"{prefix}.conv1.weight", cout, cin, 3)
        bn(f"{prefix}.bn1", cout, 1.0)
        conv(f"{prefix}.conv2.weight", cout, cout, 3)
        bn(f"{prefix}.bn2", cout, float(np.sqrt(0.5)))
        if _has_shortcut(cin, cout, stride):
            conv(f"{prefix}.shortcut.0.weight", cout, cin, 1)
            bn(f"{prefix}.shortcut.1", cout, float(np.sqrt(0.5)))
    in_dim = 2 * _stats_dim(num_bins, base_channels)
    bound = 1.0 / np.sqrt(in_dim)  # nn.Linear default init range
    w = rng.uniform(-bound, bound, (embed_dim, 2, 8 * base_channels, num_bins // 8))
    # Each row sums to zero over the frequency positions of every (stat, channel): the
    # input-independent positive offset of pooled ReLU statistics cancels, so embeddings of
    # different inputs differ more (iid-noise inputs: cosine ~0.99 instead of ~0.999).
    w -= w.mean(axis=-1, keepdims=True)
    params["seg_1.weight"] = w.reshape(embed_dim, in_dim).astype(np.float32)
    params["seg_1.bias"] = rng.uniform(-bound, bound, embed_dim).astype(np.float32)
    return params, buffers


def count_parameters(params: dict[str, Array]) -> int:
    return int(sum(a.size for a in params.values()))


def count_macs(
    num_frames: int = 200, num_bins: int = 80, base_channels: int = 32, embed_dim: int = 256
) -> int:
    """Multiply-accumulates of one window of ``num_frames`` frames (convs + Linear).

    BN (folded), ReLU, residual adds and pooling are not counted (< 0.5 %).
    200 frames -> 4,527,902,720 (4.53 GMAC); about linear in T.
    """
    h, w = num_bins, num_frames
    total = base_channels * 9 * h * w
    for _prefix, cin, cout, stride in _stages(base_channels):
        h, w = (h - 1) // stride + 1, (w - 1) // stride + 1  # k3 p1 and k1 p0 agree
        total += cout * cin * 9 * h * w + cout * cout * 9 * h * w
        if _has_shortcut(cin, cout, stride):
            total += cout * cin * h * w
    return total + 2 * _stats_dim(num_bins, base_channels) * embed_dim


def count_flops(
    num_frames: int = 200, num_bins: int = 80, base_channels: int = 32, embed_dim: int = 256
) -> int:
    """2 x :func:`count_macs` (9.06 GFLOP per 200-frame window)."""
    return 2 * count_macs(num_frames, num_bins, base_channels, embed_dim)


class _Graph:
    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, op: str) -> str:
        self._n += 1
        return f"/{op}_{self._n}"

    def const(self, name: str, value: NDArray[np.generic]) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        node_name = self.name(op_type)
        out = out or f"{node_name}_output_0"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=node_name, **attrs))
        return out

    def reduce_mean(self, x: str, axis: int, keepdims: int) -> str:
        if self.opset >= 18:  # axes became an input in opset 18
            axes = self.const(f"{self.name('axes')}", np.array([axis], np.int64))
            return self.op("ReduceMean", [x, axes], keepdims=keepdims)
        return self.op("ReduceMean", [x], axes=[axis], keepdims=keepdims)


def _fold(w: Array, p: dict[str, Array], b: dict[str, Array], bn: str) -> tuple[Array, Array]:
    scale = p[f"{bn}.weight"] / np.sqrt(b[f"{bn}.running_var"] + np.float32(BN_EPS))
    w2 = (w * scale[:, None, None, None]).astype(np.float32)
    bias = (p[f"{bn}.bias"] - b[f"{bn}.running_mean"] * scale).astype(np.float32)
    return w2, bias


def build_resnet34_onnx(
    seed: int = 0,
    embed_dim: int = 256,
    num_bins: int = 80,
    base_channels: int = 32,
    opset: int = 14,
    *,
    fold_bn: bool = True,
) -> onnx.ModelProto:
    """The WeSpeaker ResNet34 graph (see module docstring) with seeded random weights.

    ``opset`` 14 is what export_onnx.py uses; 13..21 work (ReduceMean axes follow the opset).
    """
    if not 13 <= opset <= 21:
        raise ValueError(f"opset {opset} not supported (13..21)")
    params, buffers = resnet34_parameters(seed, embed_dim, num_bins, base_channels)
    g = _Graph(opset)

    def conv_bn(x: str, conv: str, bn: str, stride: int, k: int) -> str:
        w = params[conv]
        attrs: dict[str, Any] = {
            "kernel_shape": [k, k],
            "strides": [stride, stride],
            "pads": [k // 2] * 4,
            "dilations": [1, 1],
            "group": 1,
        }
        if fold_bn:
            wf, bf = _fold(w, params, buffers, bn)
            ins = [x, g.const(conv, wf), g.const(conv.removesuffix("weight") + "bias", bf)]
            return g.op("Conv", ins, **attrs)
        y = g.op("Conv", [x, g.const(conv, w)], **attrs)
        names = [f"{bn}.weight", f"{bn}.bias", f"{bn}.running_mean", f"{bn}.running_var"]
        ins = [g.const(n, params[n] if n in params else buffers[n]) for n in names]
        return g.op("BatchNormalization", [y, *ins], epsilon=BN_EPS, momentum=0.9)

    x = g.op("Transpose", ["feats"], perm=[0, 2, 1])
    x = g.op("Unsqueeze", [x, g.const("unsqueeze_axes", np.array([1], np.int64))])
    x = g.op("Relu", [conv_bn(x, "conv1.weight", "bn1", 1, 3)])
    for prefix, cin, cout, stride in _stages(base_channels):
        y = g.op("Relu", [conv_bn(x, f"{prefix}.conv1.weight", f"{prefix}.bn1", stride, 3)])
        y = conv_bn(y, f"{prefix}.conv2.weight", f"{prefix}.bn2", 1, 3)
        if _has_shortcut(cin, cout, stride):
            sc = conv_bn(x, f"{prefix}.shortcut.0.weight", f"{prefix}.shortcut.1", stride, 1)
        else:
            sc = x
        x = g.op("Relu", [g.op("Add", [y, sc])])

    # TSTP, as torch.onnx exports x.mean(-1) and torch.var(x, -1) (unbiased).
    mean = g.reduce_mean(x, -1, 0)
    t_mean = g.reduce_mean(x, -1, 1)
    dev = g.op("Sub", [x, t_mean])
    var = g.reduce_mean(g.op("Mul", [dev, dev]), -1, 0)
    shape = g.op("Shape", [x])
    dims = g.op("Gather", [shape, g.const("time_axis", np.array([-1], np.int64))], axis=0)
    n = g.op("Cast", [g.op("ReduceProd", [dims], keepdims=0)], to=TensorProto.FLOAT)
    one = g.const("one", np.array(1.0, np.float32))
    var = g.op("Div", [g.op("Mul", [var, n]), g.op("Sub", [n, one])])
    eps = g.const("pool_eps", np.array(POOL_EPS, np.float32))
    std = g.op("Sqrt", [g.op("Add", [var, eps])])
    stats = g.op(
        "Concat",
        [g.op("Flatten", [mean], axis=1), g.op("Flatten", [std], axis=1)],
        axis=1,
    )
    emb = g.op(
        "Gemm",
        [
            stats,
            g.const("seg_1.weight", params["seg_1.weight"]),
            g.const("seg_1.bias", params["seg_1.bias"]),
        ],
        alpha=1.0,
        beta=1.0,
        transB=1,
    )
    mean_vec = g.const("mean_vec", np.zeros(embed_dim, np.float32))
    g.op("Sub", [emb, mean_vec], out="embs")

    graph = helper.make_graph(
        g.nodes,
        "wespeaker_resnet34",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["B", "T", num_bins])],
        [helper.make_tensor_value_info("embs", TensorProto.FLOAT, ["B", embed_dim])],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph,
        producer_name="voiceid",
        opset_imports=[helper.make_opsetid("", opset)],
    )
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    helper.set_model_props(
        model,
        {
            "framework": "wespeaker",
            "language": "English",
            "sample_rate": "16000",
            "output_dim": str(embed_dim),
            "normalize_samples": "0",
            "feature_normalize_type": "global-mean",
            "url": MODEL_URL,
            "comment": (
                f"random weights (seed {seed}), same graph as voxceleb_resnet34_LM; "
                "for speed tests only"
            ),
        },
    )
    return model


def save_resnet34(path: Path, seed: int = 0) -> Path:
    """Write :func:`build_resnet34_onnx` to ``path`` atomically (temp file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = build_resnet34_onnx(seed).SerializeToString()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
