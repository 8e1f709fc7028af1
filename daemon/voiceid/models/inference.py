"""``EmbeddingModel``: one ONNX Runtime session behind a small batch interface.

``embed(feats)`` takes float32 features [B, T, F] and returns unit-norm float32
embeddings [B, D]. The provider actually in use is ``model.provider`` (ONNX Runtime
silently falls back to CPU when CUDA libraries are missing: we check and say so).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from voiceid.errors import ModelError
from voiceid.models.card import ModelCard

log = logging.getLogger(__name__)

Device = Literal["auto", "cuda", "cpu"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


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

    ``intra_threads``: threads per operator (None = ONNX Runtime's default, all cores);
    ``cuda_options``: CUDA provider options (e.g. ``{"prefer_nhwc": "1"}``).
    """

    def __init__(
        self,
        path: Path,
        card: ModelCard,
        *,
        device: Device = "auto",
        intra_threads: int | None = None,
        inter_threads: int = 1,
        cuda_options: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.card = card
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_threads:
            opts.intra_op_num_threads = intra_threads
        opts.inter_op_num_threads = inter_threads
        providers: list[str | tuple[str, dict[str, str]]] = [CPU]
        if device in ("auto", "cuda"):
            if not cuda_listed():
                if device == "cuda":
                    raise ModelError(
                        "device 'cuda' requested but this ONNX Runtime has no CUDA provider",
                        hint="install onnxruntime-gpu (Linux x86-64) or set device: auto|cpu",
                    )
            else:
                providers = [(CUDA, dict(cuda_options or {})), CPU]
        quiet = device == "auto" and len(providers) > 1
        if quiet:  # a failed CUDA load is expected on CPU boxes: we report it ourselves
            ort.set_default_logger_severity(4)
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(
                f"cannot load ONNX model {self.path}: {exc}".splitlines()[0],
                hint="the file may be truncated or not an ONNX model; fetch it again",
            ) from exc
        finally:
            if quiet:
                ort.set_default_logger_severity(2)
        self.provider: str = self.session.get_providers()[0]
        if device == "cuda" and self.provider != CUDA:
            raise ModelError(
                "device 'cuda' requested but CUDA could not be initialised "
                "(CUDA 13 / cuDNN 9 libraries or the GPU are missing)",
                hint="check `nvidia-smi` and the CUDA libraries, or set device: auto|cpu",
            )
        if device == "auto" and cuda_listed() and self.provider != CUDA:
            log.warning("device auto: CUDA unavailable, running %s on CPU", card.name)
        log.info("model %s on %s", card.name, self.provider)
        inputs = self.session.get_inputs()
        if card.input_name not in {i.name for i in inputs}:
            raise ModelError(
                f"model {self.path} has no input {card.input_name!r} "
                f"(it has {[i.name for i in inputs]})",
                hint="fix input_name in the model card",
            )

    def embed(self, feats: NDArray[np.float32]) -> NDArray[np.float32]:
        """Features [B, T, F] -> unit-norm embeddings [B, D]."""
        if feats.ndim != 3 or feats.shape[2] != self.card.frontend.num_bins:
            raise ModelError(
                f"expected features [B, T, {self.card.frontend.num_bins}], got {feats.shape}"
            )
        out = self.session.run(
            [self.card.output_name],
            {self.card.input_name: np.ascontiguousarray(feats, dtype=np.float32)},
        )[0]
        return l2_normalize(np.asarray(out, dtype=np.float32))
