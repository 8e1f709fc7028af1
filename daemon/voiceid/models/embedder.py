"""Audio -> speaker embeddings with one model: the front-end and pooling the model expects.

Samples are float32 mono at the model's sample rate (16 kHz). Two ways to turn an
utterance into one vector, chosen by the model card:
- whole utterance (WeSpeaker): Kaldi fbank over all of it, CMN, one forward pass;
- segments (GE2E): Resemblyzer's preprocessing (volume, silence trim), 160-frame
  partials every 77 frames, mean of their embeddings, renormalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from voiceid.audio.vad import level_spread_db, speech_seconds
from voiceid.errors import AudioError
from voiceid.frontend import make_frontend
from voiceid.models import registry
from voiceid.models.card import ModelCard
from voiceid.models.inference import Device, EmbeddingModel, l2_normalize

Vector = NDArray[np.float32]
ModelPrecision = Literal["auto", "fp32", "fp16", "int8"]
MIN_SPEECH_S = 0.3  # less voiced audio than this: "no speech" (seconds, webrtcvad mode 2)
MIN_DURATION_S = 0.5  # shorter clips are refused (seconds)
MIN_LEVEL_SPREAD_DB = 6.0  # steadier than this (dB, see level_spread_db) is not speech


@dataclass(frozen=True)
class Segment:
    """An embedding of ``samples[start_s:end_s]`` (seconds)."""

    start_s: float
    end_s: float
    embedding: Vector


class Embedder:
    """A loaded model plus its front-end; thread-compatible (ONNX Runtime sessions are)."""

    def __init__(self, model: EmbeddingModel, fingerprint: str | None = None) -> None:
        self.model = model
        self.card: ModelCard = model.card
        self.fingerprint = fingerprint or registry.ResolvedModel(model.card, model.path).fingerprint

    @classmethod
    def load(
        cls,
        name: str,
        *,
        device: Device = "auto",
        threads: int | None = None,
        fetch: bool = True,
        sha256: str | None = None,
        precision: ModelPrecision = "auto",
    ) -> Embedder:
        """``precision``: auto (fp16 trunk on CUDA, fp32 on CPU), fp32, fp16, or int8 (the
        quantized file made by ``voiceid models quantize``, for CPUs)."""
        variant: registry.Precision = "int8" if precision == "int8" else "fp32"
        resolved = registry.resolve(name, fetch=fetch, sha256=sha256, precision=variant)
        model = EmbeddingModel(
            resolved.path,
            resolved.card,
            device=device,
            intra_threads=threads,
            precision="fp32" if precision == "int8" else precision,
        )
        return cls(model, resolved.fingerprint)

    @property
    def sample_rate(self) -> int:
        return self.card.frontend.sample_rate

    def check_speech(self, samples: Vector, where: str = "audio") -> float:
        """Raise ``AudioError`` for clips too short or without speech; return speech seconds."""
        duration = len(samples) / self.sample_rate
        if duration < MIN_DURATION_S:
            raise AudioError(
                f"{where} is too short: {duration:.2f} s",
                hint=f"give at least {MIN_DURATION_S} s of speech (3 s or more for good scores)",
            )
        speech = speech_seconds(samples)
        if speech < MIN_SPEECH_S:
            raise AudioError(
                f"{where} holds no speech ({speech:.2f} s voiced of {duration:.1f} s)",
                hint="check the microphone/file: it sounds like silence or noise",
            )
        if level_spread_db(samples) < MIN_LEVEL_SPREAD_DB:
            raise AudioError(
                f"{where} holds no speech (a steady sound: hum or noise)",
                hint="check the microphone/file",
            )
        return speech

    def features(self, samples: Vector) -> NDArray[np.float32]:
        """Whole-utterance features [T, F], normalised as the model expects."""
        frontend = make_frontend(self.card.frontend)
        frames = np.concatenate([frontend.accept(samples), frontend.flush()])
        return frontend.normalize_window(frames, samples)

    def embed_features(self, feats: NDArray[np.float32]) -> NDArray[np.float32]:
        """Batch of windows [B, T, F] -> unit-norm embeddings [B, D]."""
        return self.model.embed(feats)

    def embed(self, samples: Vector, *, where: str = "audio", check: bool = True) -> Vector:
        """One unit-norm embedding for a whole utterance."""
        samples = np.asarray(samples, dtype=np.float32)
        if check:
            self.check_speech(samples, where)
        if self.card.segment_frames is None:
            feats = self.features(samples)
            vec: Vector = self.model.embed(feats[None])[0]
            return vec
        return self._embed_segments(samples, where)

    def _embed_segments(self, samples: Vector, where: str) -> Vector:
        from voiceid.frontend.ge2e_preprocess import preprocess_utterance
        from voiceid.models.segments import padded_length, segment_slices

        wav = preprocess_utterance(samples)
        if len(wav) == 0:
            raise AudioError(
                f"{where} holds no speech after silence trimming", hint="check the microphone/file"
            )
        seg = self.card.segment_frames
        assert seg is not None
        step = self.card.segment_step or seg
        slices = segment_slices(
            len(wav), seg, step, self.card.frontend.frame_shift, self.card.min_coverage
        )
        need = padded_length(slices, self.card.frontend.frame_shift)
        if need > len(wav):
            wav = np.pad(wav, (0, need - len(wav)))
        frontend = make_frontend(self.card.frontend)
        mel = np.concatenate([frontend.accept(wav), frontend.flush()])
        batch = np.stack([mel[a:b] for a, b in slices])
        partials = self.model.embed(batch)
        return l2_normalize(partials.mean(axis=0))

    def sliding(self, samples: Vector, *, duration_s: float, step_s: float) -> list[Segment]:
        """Embeddings of fixed windows (seconds) every ``step_s``; silent windows skipped."""
        if duration_s <= 0 or step_s <= 0:
            raise AudioError("--duration and --step must be positive seconds")
        rate = self.sample_rate
        win, hop = int(duration_s * rate), int(step_s * rate)
        if len(samples) < win:
            raise AudioError(
                f"audio ({len(samples) / rate:.2f} s) is shorter than one window ({duration_s} s)",
                hint="use a shorter --duration or --window whole",
            )
        out: list[Segment] = []
        for start in range(0, len(samples) - win + 1, hop):
            chunk = samples[start : start + win]
            if speech_seconds(chunk) < MIN_SPEECH_S:
                continue
            out.append(Segment(start / rate, (start + win) / rate, self.embed(chunk, check=False)))
        if not out:
            raise AudioError("no window holds speech", hint="check the file; it may be silence")
        return out
