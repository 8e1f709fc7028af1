"""Model cards: what a model file is, where it comes from, and how to feed it."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field

from voiceid.frontend.base import FrontEndSpec


class ModelCard(BaseModel):
    """A speaker-embedding model: an ONNX file plus what is needed to use it.

    ONNX contract: input ``input_name`` float32 [B, T, num_bins] (B, T dynamic unless
    ``segment_frames`` fixes T), output ``output_name`` float32 [B, dim].
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    dim: int = Field(gt=0)  # embedding dimension
    frontend: FrontEndSpec
    input_name: str = "feats"
    output_name: str = "embs"
    sha256: str | None = None  # of the ONNX file (or of the source it is converted from)
    source: str = ""  # URL, "pypi:pkg==ver#member", or "local"
    filename: str = ""  # file name in the model cache
    license: str = ""
    # How a whole utterance becomes one embedding:
    #   segment_frames None -> one pass over all frames (WeSpeaker);
    #   otherwise fixed segments of that many frames every segment_step frames,
    #   embeddings averaged and renormalised (GE2E partials).
    segment_frames: int | None = None
    segment_step: int | None = None
    min_coverage: float = 0.75  # keep the last segment only if this much of it is audio
    threshold: float = Field(default=0.5, ge=-1.0, le=1.0)  # default cosine threshold
    threshold_source: str = ""  # how the default threshold was obtained
    # streaming decisions score 1-2 s windows, which score lower than whole utterances:
    # their own measured threshold (None: use ``threshold``)
    stream_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)

    @property
    def live_threshold(self) -> float:
        """The card's threshold for streaming windows (``stream_threshold``, else ``threshold``)."""
        return self.stream_threshold if self.stream_threshold is not None else self.threshold

    @property
    def frontend_json(self) -> str:
        return json.dumps(self.frontend.model_dump(), sort_keys=True, separators=(",", ":"))

    def fingerprint(self, model_sha256: str | None = None) -> str:
        """Identity of the embedding space: model file hash + front-end spec (16 hex chars)."""
        digest = model_sha256 or self.sha256 or "unknown"
        blob = f"{self.name}|{digest}|{self.frontend_json}".encode()
        return hashlib.sha256(blob).hexdigest()[:16]
