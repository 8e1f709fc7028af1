"""Resemblyzer's pretrained GE2E speaker encoder as ONNX, built without torch.

Source: the PyPI wheel ``resemblyzer==0.1.4`` (Apache-2.0), member
``resemblyzer/pretrained.pt``, a legacy torch checkpoint (see FACTS.md §2). It is fetched
with the user's own ``pip download`` (so proxies, indexes and ``PIP_*`` settings apply),
checked by sha256, read by :mod:`voiceid.models.torchpickle` and converted here.

Model (``resemblyzer/voice_encoder.py``): 3-layer LSTM (input 40, hidden 256, batch first)
→ last hidden state of layer 3 → Linear 256→256 → ReLU → L2 normalisation.

ONNX graph (opset 17): input ``feats`` float32 [B, T, 40] (40-bin mel **power** frames
from :class:`voiceid.frontend.melpower.MelPower40`, T = 160 for Resemblyzer's partials),
output ``embs`` float32 [B, 256], unit norm. Three chained ``LSTM`` ops, PyTorch gate
order i,f,g,o reordered to ONNX i,o,f,c and ``B = [b_ih | b_hh]``; the norm is guarded
with ``max(‖x‖, 1e-12)`` (Resemblyzer divides by ‖x‖ unguarded).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from voiceid.errors import DownloadError, ModelError

RESEMBLYZER_SPEC = "resemblyzer==0.1.4"
RESEMBLYZER_WHEEL = "Resemblyzer-0.1.4-py3-none-any.whl"
RESEMBLYZER_WHEEL_SHA256 = "8f12eb2f1a9982d32e8db7856de754709b59c93a77bcf0ff536584b619a9dd1f"
PRETRAINED_MEMBER = "resemblyzer/pretrained.pt"
PRETRAINED_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
WEIGHTS_FILENAME = "pretrained.pt"
ONNX_FILENAME = "resemblyzer-ge2e.onnx"

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17 (onnx 1.12); any runtime reads it
INPUT_NAME = "feats"
OUTPUT_NAME = "embs"
N_MELS = 40
HIDDEN = 256
EMBEDDING_DIM = 256
NUM_LAYERS = 3
NORM_EPSILON = 1e-12

_PIP_TIMEOUT_S = 900


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hint(target: Path) -> str:
    return (
        f"on a machine with internet run `pip download --no-deps {RESEMBLYZER_SPEC} -d DIR` "
        f"({RESEMBLYZER_WHEEL}, sha256 {RESEMBLYZER_WHEEL_SHA256}), copy DIR here and retry "
        f"with PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR; or extract {PRETRAINED_MEMBER} from the "
        f"wheel (a zip) and place it at {target} by hand (sha256 {PRETRAINED_SHA256})"
    )


def _last_pip_line(stderr: str, stdout: str) -> str:
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("[notice]")]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    if errors:
        return errors[-1]
    if lines:
        return lines[-1]
    out = [ln.strip() for ln in (stdout or "").splitlines() if ln.strip()]
    return out[-1] if out else "no output"


def _extract_member(archive: Path, dest: Path) -> str:
    """Copy ``resemblyzer/pretrained.pt`` from a wheel or sdist to ``dest``; return its sha256."""
    h = hashlib.sha256()
    with dest.open("wb") as out:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                names = [n for n in zf.namelist() if n.endswith(PRETRAINED_MEMBER)]
                if not names:
                    raise KeyError(PRETRAINED_MEMBER)
                with zf.open(min(names, key=len)) as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        h.update(block)
                        out.write(block)
        else:
            with tarfile.open(archive) as tf:
                members = [m for m in tf.getmembers() if m.name.endswith(PRETRAINED_MEMBER)]
                if not members:
                    raise KeyError(PRETRAINED_MEMBER)
                src_file = tf.extractfile(min(members, key=lambda m: len(m.name)))
                if src_file is None:
                    raise KeyError(PRETRAINED_MEMBER)
                with src_file as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        h.update(block)
                        out.write(block)
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest()


def fetch_resemblyzer_weights(dest_dir: Path) -> Path:
    """``dest_dir/pretrained.pt`` from the ``resemblyzer==0.1.4`` wheel, sha256-checked.

    Reuses a file already there with the right hash. Otherwise runs ``python -m pip download
    --no-deps resemblyzer==0.1.4`` (the user's pip configuration applies), checks the
    member's sha256 and writes it atomically. Any failure is a :class:`DownloadError` that
    says what failed and how to proceed by hand.
    """
    dest_dir = Path(dest_dir)
    target = dest_dir / WEIGHTS_FILENAME
    if target.is_file() and _sha256_file(target) == PRETRAINED_SHA256:
        return target
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {dest_dir}: {e}", hint="check permissions") from e
    with tempfile.TemporaryDirectory(prefix="voiceid-resemblyzer-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", RESEMBLYZER_SPEC, "-d", tmp]
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, env=env, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DownloadError(
                f"`pip download {RESEMBLYZER_SPEC}` could not run: {e}", hint=_hint(target)
            ) from e
        if proc.returncode != 0:
            raise DownloadError(
                f"`pip download {RESEMBLYZER_SPEC}` failed (exit {proc.returncode}): "
                f"{_last_pip_line(proc.stderr, proc.stdout)}",
                hint=_hint(target),
            )
        archives = sorted(
            p
            for p in Path(tmp).iterdir()
            if p.name.lower().startswith("resemblyzer-")
            and (p.suffix == ".whl" or p.name.endswith((".tar.gz", ".zip")))
        )
        if not archives:
            found = ", ".join(p.name for p in Path(tmp).iterdir()) or "nothing"
            raise DownloadError(
                f"`pip download {RESEMBLYZER_SPEC}` produced no resemblyzer archive ({found})",
                hint=_hint(target),
            )
        archive = archives[0]
        fd, part_name = tempfile.mkstemp(prefix=".pretrained-", suffix=".part", dir=dest_dir)
        os.close(fd)
        part = Path(part_name)
        try:
            try:
                digest = _extract_member(archive, part)
            except (KeyError, OSError, zipfile.BadZipFile, tarfile.TarError) as e:
                raise DownloadError(
                    f"cannot extract {PRETRAINED_MEMBER} from {archive.name}: "
                    f"{type(e).__name__}: {e}",
                    hint=_hint(target),
                ) from e
            if digest != PRETRAINED_SHA256:
                raise DownloadError(
                    f"{PRETRAINED_MEMBER} from {archive.name} has sha256 {digest}, "
                    f"expected {PRETRAINED_SHA256}",
                    hint=f"the package index served another file; {_hint(target)}",
                )
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
    return target


def _reorder_gates(w: np.ndarray) -> np.ndarray:
    """PyTorch LSTM gate blocks i,f,g,o (axis 0) → ONNX i,o,f,c."""
    i, f, g, o = np.split(w, 4, axis=0)
    return np.concatenate((i, o, f, g), axis=0)


def _param(state: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in state:
        raise ModelError(
            f"GE2E state dict lacks {name!r}",
            hint="expected Resemblyzer's model_state (lstm.*, linear.*)",
        )
    arr = np.asarray(state[name])
    if arr.shape != shape:
        raise ModelError(f"GE2E weight {name!r} has shape {arr.shape}, expected {shape}")
    return arr.astype(np.float32)


def build_ge2e_onnx(state: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The ONNX graph of Resemblyzer's ``VoiceEncoder`` from its state dict (numpy)."""
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    const("axes0", np.array([0], dtype=np.int64))
    const("axes1", np.array([1], dtype=np.int64))
    const("norm_eps", np.array(NORM_EPSILON, dtype=np.float32))

    nodes.append(helper.make_node("Transpose", [INPUT_NAME], ["x_tbf"], perm=[1, 0, 2]))
    x = "x_tbf"
    h_last = ""
    g4 = 4 * HIDDEN
    for layer in range(NUM_LAYERS):
        in_size = N_MELS if layer == 0 else HIDDEN
        w_ih = _param(state, f"lstm.weight_ih_l{layer}", (g4, in_size))
        w_hh = _param(state, f"lstm.weight_hh_l{layer}", (g4, HIDDEN))
        b_ih = _param(state, f"lstm.bias_ih_l{layer}", (g4,))
        b_hh = _param(state, f"lstm.bias_hh_l{layer}", (g4,))
        w = const(f"lstm{layer}_W", _reorder_gates(w_ih)[np.newaxis])
        r = const(f"lstm{layer}_R", _reorder_gates(w_hh)[np.newaxis])
        b = const(
            f"lstm{layer}_B",
            np.concatenate((_reorder_gates(b_ih), _reorder_gates(b_hh)))[np.newaxis],
        )
        last = layer == NUM_LAYERS - 1
        y = "" if last else f"lstm{layer}_Y"
        h_last = f"lstm{layer}_Yh"
        nodes.append(
            helper.make_node(
                "LSTM",
                [x, w, r, b],
                [y, h_last],
                name=f"lstm{layer}",
                hidden_size=HIDDEN,
                direction="forward",
            )
        )
        if not last:
            # Y [T, 1, B, H] -> [T, B, H]
            x = f"lstm{layer}_out"
            nodes.append(helper.make_node("Squeeze", [y, "axes1"], [x]))

    lin_w = const("linear_W", _param(state, "linear.weight", (EMBEDDING_DIM, HIDDEN)))
    lin_b = const("linear_B", _param(state, "linear.bias", (EMBEDDING_DIM,)))
    nodes += [
        helper.make_node("Squeeze", [h_last, "axes0"], ["hidden"]),  # [B, H]
        helper.make_node("Gemm", ["hidden", lin_w, lin_b], ["linear"], transB=1),
        helper.make_node("Relu", ["linear"], ["embeds_raw"]),
        helper.make_node("ReduceL2", ["embeds_raw"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Max", ["norm", "norm_eps"], ["norm_safe"]),
        helper.make_node("Div", ["embeds_raw", "norm_safe"], [OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes,
        "resemblyzer_ge2e",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["B", "T", N_MELS])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["B", EMBEDDING_DIM])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="voiceid",
        doc_string="Resemblyzer 0.1.4 GE2E speaker encoder (3-layer LSTM 40→256, Linear, ReLU, "
        "L2 norm); input: 40-bin mel power frames (not log), 160-frame partials",
    )
    helper.set_model_props(
        model,
        {
            "framework": "resemblyzer-ge2e",
            "sample_rate": "16000",
            "output_dim": str(EMBEDDING_DIM),
            "url": "https://pypi.org/project/Resemblyzer/0.1.4/",
            "comment": (
                f"Resemblyzer GE2E: {RESEMBLYZER_SPEC} ({RESEMBLYZER_WHEEL} sha256 "
                f"{RESEMBLYZER_WHEEL_SHA256}), {PRETRAINED_MEMBER} sha256 {PRETRAINED_SHA256}, "
                "Apache-2.0; converted to ONNX by voiceid without torch. Front-end: mel power "
                "40 bins (librosa defaults, n_fft 400, hop 160, center, slaney), -30 dBFS "
                "increase-only volume normalisation, webrtcvad silence trimming; output is "
                "L2-normalised"
            ),
        },
    )
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"converted GE2E graph fails the ONNX checker: {e}") from e
    return model


def ensure_ge2e_onnx(cache_dir: Path) -> Path:
    """``cache_dir/resemblyzer-ge2e.onnx``, fetched and converted first if it is absent."""
    cache_dir = Path(cache_dir)
    path = cache_dir / ONNX_FILENAME
    if path.is_file():
        return path
    from voiceid.models.torchpickle import load_legacy_torch

    weights = fetch_resemblyzer_weights(cache_dir)
    model = build_ge2e_onnx(load_legacy_torch(weights))
    data = model.SerializeToString()
    fd, part_name = tempfile.mkstemp(prefix=".ge2e-", suffix=".part", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part_name, path)
    except OSError as e:
        raise ModelError(
            f"cannot write {path}: {e}", hint="check permissions and disk space"
        ) from e
    finally:
        Path(part_name).unlink(missing_ok=True)
    return path
