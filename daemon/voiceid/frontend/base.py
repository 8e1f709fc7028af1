"""The small interface every feature front-end implements.

Units: samples are float32 in [-1, 1) at ``sample_rate`` Hz; a frame is one row of
``num_bins`` features; frames are ``frame_shift`` samples apart.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

Float32Array = NDArray[np.float32]


class FrontEndSpec(BaseModel):
    """Everything that determines the features a model was trained on.

    It is part of the model fingerprint: two specs that differ give embeddings
    that must not be compared.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["kaldi_fbank", "mel_power"]
    sample_rate: int = 16000  # Hz
    num_bins: int = 80  # mel bins per frame
    frame_length: int = 400  # samples per analysis frame
    frame_shift: int = 160  # samples between frames
    cmn: bool = True  # subtract the per-window mean of each bin (WeSpeaker)
    target_dbfs: float | None = None  # GE2E: raise window volume to this level (increase only)


class FrontEnd(Protocol):
    """Incremental front-end: feed samples, get only the frames they complete."""

    spec: FrontEndSpec

    def accept(self, samples: Float32Array) -> Float32Array:
        """Consume new samples; return the frames completed by them, shape [n, num_bins]."""
        ...

    def flush(self) -> Float32Array:
        """End of input: return any frames still pending (e.g. end padding), shape [n, num_bins]."""
        ...

    def reset(self) -> None:
        """Forget all state, as if newly created."""
        ...

    @property
    def frames_out(self) -> int:
        """Frames returned so far."""
        ...

    def normalize_window(self, frames: Float32Array, samples: Float32Array) -> Float32Array:
        """Per-window normalisation before the model (CMN, volume); returns a new array.

        ``frames`` are the window's frames [T, num_bins]; ``samples`` the window's samples.
        """
        ...
