"""``EmbeddingModel``: one ONNX Runtime session behind a small batch interface.

``embed(feats)`` takes float32 features [B, T, F] and returns unit-norm float32
embeddings [B, D]. The provider actually in use is ``model.provider`` (ONNX Runtime
silently falls back to CPU when CUDA libraries are missing: we check and say so).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray

from voiceid.errors import ModelError
from voiceid.models import gpu
from voiceid.models.card import ModelCard
from voiceid.models.gpu import Precision

log = logging.getLogger(__name__)

Device = Literal["auto", "cuda", "cpu"]
CUDA = gpu.CUDA
CPU = gpu.CPU
__all__ = ["CPU", "CUDA", "Device", "EmbeddingModel", "Precision", "cuda_listed", "l2_normalize"]


def l2_normalize(x: NDArray[np.float32], axis: int = -1) -> NDArray[np.float32]:
    """Unit-norm rows (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    out: NDArray[np.float32] = (x / np.maximum(norm, 1e-12)).astype(np.float32, copy=False)
    return out


def cuda_listed() -> bool:
    """True when this ONNX Runtime build has the CUDA provider (it may still fail to load)."""
    return CUDA in ort.get_available_providers()


class EmbeddingModel:
    """A speaker-embedding ONNX model on CPU or CUDA.

    ``intra_threads``: threads per operator (None = ONNX Runtime's default, all cores).

    On CUDA (see :mod:`voiceid.models.gpu` and docs/performance.md for the measurements
    behind each default):

    - ``precision``: ``"auto"`` is fp16 on CUDA (trunk in fp16, pooling head fp32; the
      model still takes and returns float32) and fp32 on CPU; ``"fp32"`` / ``"fp16"``
      force one (fp16 also runs on ONNX Runtime's CPU provider, slowly: tests only);
    - ``cuda_options``: CUDA provider options merged over
      :data:`voiceid.models.gpu.DEFAULT_CUDA_OPTIONS` (``prefer_nhwc=1``,
      ``cudnn_conv_algo_search=EXHAUSTIVE``, ...);
    - ``session_config``: ONNX Runtime session config entries (e.g.
      ``{"session.intra_op.allow_spinning": "0"}``);
    - ``fp32_head``: with fp16, keep the pooling head (after the last Conv) in fp32;
    - ``io_binding``: inputs and outputs in device buffers made once per shape;
    - ``static_shapes``: one session per (batch, frames) shape given to :meth:`prepare`
      or run ``static_after`` times (at most ``max_static``: the batching engine's
      buckets), whose shape arithmetic ONNX Runtime folds away, so that
    - ``cuda_graph``: each static session replays one captured CUDA graph per batch.

    Any other shape runs on the shared dynamic-shape session.
    """

    def __init__(
        self,
        path: Path,
        card: ModelCard,
        *,
        device: Device = "auto",
        intra_threads: int | None = None,
        inter_threads: int = 1,
        cuda_options: Mapping[str, str] | None = None,
        precision: Precision = "auto",
        io_binding: bool = True,
        static_shapes: bool = True,
        cuda_graph: bool = True,
        max_static: int = 48,
        static_after: int = 2,
        device_id: int = 0,
        fp32_head: bool = True,
        session_config: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.card = card
        self.device_id = device_id
        self.intra_threads = intra_threads
        opts = gpu.session_options(intra_threads, inter_threads)
        for key, value in (session_config or {}).items():
            opts.add_session_config_entry(key, str(value))
        if device == "cuda" and not cuda_listed():
            raise ModelError(
                "device 'cuda' requested but this ONNX Runtime has no CUDA provider",
                hint="install onnxruntime-gpu (Linux x86-64) or set device: auto|cpu",
            )
        want_cuda = device in ("auto", "cuda") and gpu.cuda_usable(device_id)
        self.cuda_options = gpu.cuda_options(cuda_options)
        self.cuda_options["device_id"] = str(device_id)
        providers: list[str | tuple[str, dict[str, str]]] = [CPU]
        if want_cuda:
            providers = [(CUDA, dict(self.cuda_options)), CPU]
        fp16 = precision == "fp16" or (precision == "auto" and want_cuda)
        self._proto: onnx.ModelProto | None = None
        source: str | bytes = str(self.path)
        try:
            if fp16 or want_cuda:
                self._proto = onnx.load(str(self.path))
                if fp16:
                    self._proto = gpu.to_fp16(self._proto, fp32_head=fp32_head)
                    source = gpu.serialized(self._proto)
            self.session = ort.InferenceSession(source, opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(
                f"cannot load ONNX model {self.path}: {exc}".splitlines()[0],
                hint="the file may be truncated or not an ONNX model; fetch it again",
            ) from exc
        self.provider: str = self.session.get_providers()[0]
        if device == "cuda" and self.provider != CUDA:
            raise ModelError(
                "device 'cuda' requested but CUDA could not be initialised "
                "(CUDA 13 / cuDNN 9 libraries or the GPU are missing)",
                hint="check `nvidia-smi` and the CUDA libraries, or set device: auto|cpu",
            )
        if device == "auto" and cuda_listed() and self.provider != CUDA:
            log.warning("device auto: CUDA unavailable, running %s on CPU", card.name)
        on_gpu = self.provider == CUDA
        self.precision: str = "fp16" if fp16 else "fp32"
        self.io_binding = io_binding and on_gpu
        self.static_shapes = static_shapes and on_gpu and self._proto is not None
        self.cuda_graph = cuda_graph and self.static_shapes
        self.max_static = max_static
        self.static_after = max(1, static_after)
        if not on_gpu and not fp16:
            self._proto = None  # not needed on CPU: free it
        log.info(
            "model %s on %s (%s%s%s)",
            card.name,
            self.provider,
            self.precision,
            ", static shapes" if self.static_shapes else "",
            ", CUDA graphs" if self.cuda_graph else "",
        )
        inputs = self.session.get_inputs()
        if card.input_name not in {i.name for i in inputs}:
            raise ModelError(
                f"model {self.path} has no input {card.input_name!r} "
                f"(it has {[i.name for i in inputs]})",
                hint="fix input_name in the model card",
            )
        self._lock = threading.Lock()
        self._bound: gpu.BoundRunner | None = None
        if self.io_binding:
            self._bound = gpu.BoundRunner(
                self.session, card.input_name, card.output_name, card.dim, device_id=device_id
            )
        self._static: dict[tuple[int, ...], gpu.StaticRunner | None] = {}
        self._seen: dict[tuple[int, ...], int] = {}  # shapes run, not (yet) static

    @property
    def static_sessions(self) -> list[tuple[int, ...]]:
        """Shapes that have their own static-shape session (built and warmed)."""
        return sorted(s for s, r in self._static.items() if r is not None)

    def describe(self) -> dict[str, object]:
        """How the model runs (for benchmarks and logs)."""
        return {
            "provider": self.provider,
            "precision": self.precision,
            "io_binding": self.io_binding,
            "static_shapes": self.static_shapes,
            "cuda_graph": self.cuda_graph,
            "cuda_options": dict(self.cuda_options) if self.provider == CUDA else {},
        }

    def prepare(self, shapes: Iterable[tuple[int, int]]) -> None:
        """Build and warm the static sessions of these (batch, frames) shapes now."""
        for batch, frames in shapes:
            self._runner((batch, frames, self.card.frontend.num_bins), build=True)

    def runner_for(self, shape: tuple[int, ...]) -> gpu.BoundRunner | None:
        """The IO-bound runner :meth:`embed` uses for ``shape`` (None: plain ``session.run``)."""
        if self.provider != CUDA:
            return None
        runner = self._runner(shape)
        return runner if runner is not None else self._bound

    def _runner(self, shape: tuple[int, ...], *, build: bool = False) -> gpu.StaticRunner | None:
        """The static session of ``shape``: built now if ``build`` or seen ``static_after`` times.

        One-off shapes (a whole utterance of some length) stay on the dynamic session, so
        they never pay a build (cuDNN search + graph capture, 0.5-2.5 s).
        """
        if not self.static_shapes:
            return None
        if shape in self._static:
            return self._static[shape]
        with self._lock:
            if shape in self._static:
                return self._static[shape]
            seen = self._seen.get(shape, 0) + 1
            if not build and seen < self.static_after:
                self._seen[shape] = seen
                return None
            self._seen.pop(shape, None)
            runner: gpu.StaticRunner | None = None
            if len(self._static) < self.max_static and self._proto is not None:
                runner = self._build_static(shape)
            self._static[shape] = runner
            return runner

    def _build_static(self, shape: tuple[int, ...]) -> gpu.StaticRunner | None:
        assert self._proto is not None and len(shape) == 3
        fixed = gpu.serialized(gpu.fix_shape(self._proto, self.card.input_name, shape))
        dims = (shape[0], shape[1], shape[2])
        for graph in (True, False) if self.cuda_graph else (False,):
            try:
                runner = gpu.StaticRunner(
                    fixed,
                    dims,
                    input_name=self.card.input_name,
                    output_name=self.card.output_name,
                    dim=self.card.dim,
                    options=self.cuda_options,
                    cuda_graph=graph,
                    device_id=self.device_id,
                    intra_threads=self.intra_threads,
                )
            except Exception as exc:
                log.warning(
                    "static session for %s%s failed: %s",
                    shape,
                    " with a CUDA graph" if graph else "",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                )
                continue
            log.info("static session for %s ready%s", shape, " (CUDA graph)" if graph else "")
            return runner
        return None

    def embed(self, feats: NDArray[np.float32]) -> NDArray[np.float32]:
        """Features [B, T, F] -> unit-norm embeddings [B, D]."""
        if feats.ndim != 3 or feats.shape[2] != self.card.frontend.num_bins:
            raise ModelError(
                f"expected features [B, T, {self.card.frontend.num_bins}], got {feats.shape}"
            )
        return l2_normalize(self.embed_raw(feats))

    def embed_raw(self, feats: NDArray[np.float32]) -> NDArray[np.float32]:
        """The model's output [B, D] for features [B, T, F] (not normalised, not checked)."""
        x = np.ascontiguousarray(feats, dtype=np.float32)
        if self.provider == CUDA:
            runner = self._runner(tuple(x.shape))
            if runner is not None:
                return runner.run(x)
            if self._bound is not None:
                return self._bound.run(x)
        out = self.session.run([self.card.output_name], {self.card.input_name: x})[0]
        return np.asarray(out, dtype=np.float32)
