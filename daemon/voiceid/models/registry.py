"""The model registry: built-in cards, local models from config, and how to obtain each file.

Names:
- ``wespeaker-resnet34-lm``: the production model, downloaded from a pinned URL + sha256.
- ``resemblyzer-ge2e``: Resemblyzer's pretrained GE2E, converted to ONNX from its PyPI wheel.
- ``wespeaker-resnet34-random``: the exact ResNet34 graph with seeded random weights,
  built locally; for speed tests and pipeline tests only (it knows no speakers).
- any local ONNX file registered with a card (``models:`` in config.yaml).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from voiceid import paths
from voiceid.errors import ModelError
from voiceid.frontend.base import FrontEndSpec
from voiceid.models.card import ModelCard

WESPEAKER_URL = (
    "https://huggingface.co/Wespeaker/wespeaker-resnet34-LM/resolve/"
    "f0c48c298fd835726c27956a5d617bad7115627e/voxceleb_resnet34_LM.onnx"
)
WESPEAKER_SHA256 = "7bb2f06e9df17cdf1ef14ee8a15ab08ed28e8d0ef5054ee135741560df2ec068"
GE2E_MEMBER_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"

KALDI_80 = FrontEndSpec(kind="kaldi_fbank", num_bins=80, cmn=True)
MEL_40 = FrontEndSpec(kind="mel_power", num_bins=40, cmn=False, target_dbfs=-30.0)

BUILTIN: dict[str, ModelCard] = {
    "wespeaker-resnet34-lm": ModelCard(
        name="wespeaker-resnet34-lm",
        description="WeSpeaker ResNet34-LM (VoxCeleb2), 256-d, Kaldi fbank 80 + CMN",
        dim=256,
        frontend=KALDI_80,
        sha256=WESPEAKER_SHA256,
        source=WESPEAKER_URL,
        filename="voxceleb_resnet34_LM.onnx",
        license="CC BY 4.0 (VoxCeleb)",
        threshold=0.5,
        threshold_source=(
            "not measurable here (weights unreachable offline); 0.5 is the usual starting point "
            "for cosine-scored ResNet/ECAPA VoxCeleb models. Measure yours with `voiceid eval` "
            "and set it with `voiceid threshold set`"
        ),
    ),
    "resemblyzer-ge2e": ModelCard(
        name="resemblyzer-ge2e",
        description="Resemblyzer GE2E (3-layer LSTM), 256-d, mel power 40; converted without torch",
        dim=256,
        frontend=MEL_40,
        sha256=GE2E_MEMBER_SHA256,
        source="pypi:resemblyzer==0.1.4#resemblyzer/pretrained.pt",
        filename="resemblyzer-ge2e.onnx",
        license="Apache-2.0",
        segment_frames=160,
        segment_step=77,
        threshold=0.75,
        threshold_source="docs/thresholds.md (bench/ge2e_threshold.py, bench/window_scores.py)",
        stream_threshold=0.70,
    ),
    "wespeaker-resnet34-random": ModelCard(
        name="wespeaker-resnet34-random",
        description="exact WeSpeaker ResNet34 graph, seeded random weights: speed tests only",
        dim=256,
        frontend=KALDI_80,
        sha256=None,
        source="generated (seed 0)",
        filename="wespeaker-resnet34-random-seed0.onnx",
        license="n/a",
        threshold=0.5,
        threshold_source="random weights: scores are meaningless",
    ),
}

DEFAULT_MODEL = "wespeaker-resnet34-lm"


Precision = Literal["fp32", "int8"]


@dataclass(frozen=True)
class ResolvedModel:
    """A card together with the ONNX file on disk (``precision``: which variant of it)."""

    card: ModelCard
    path: Path
    precision: Precision = "fp32"

    @property
    def fingerprint(self) -> str:
        """Card fingerprint; models without a pinned hash are identified by their file's hash.

        A quantized variant is another embedding space (close, not equal): its own print.
        """
        from voiceid.models.download import sha256_file

        if self.precision != "fp32":
            return self.card.fingerprint(f"{sha256_file(self.path)}+{self.precision}")
        if self.card.sha256:
            return self.card.fingerprint()
        return self.card.fingerprint(sha256_file(self.path))


def variant_path(path: Path, precision: Precision) -> Path:
    """Where the ``precision`` variant of the model file at ``path`` is kept."""
    return path if precision == "fp32" else path.with_name(f"{path.stem}.{precision}.onnx")


_LOCAL: dict[str, tuple[ModelCard, Path]] = {}


def register_local(card: ModelCard, path: Path) -> None:
    """Make a local ONNX model (brought by the user) known under ``card.name``."""
    if card.name in BUILTIN:
        raise ModelError(
            f"model name {card.name!r} is taken by a built-in model",
            hint="give your local model another name",
        )
    _LOCAL[card.name] = (card, Path(path))


def names() -> list[str]:
    return [*BUILTIN, *_LOCAL]


def card(name: str) -> ModelCard:
    if name in BUILTIN:
        return BUILTIN[name]
    if name in _LOCAL:
        return _LOCAL[name][0]
    raise ModelError(
        f"unknown model {name!r}",
        hint=f"known models: {', '.join(names())} (see `voiceid models list`)",
    )


def model_path(name: str, cache: Path | None = None) -> Path:
    """Where the model's ONNX file is (or will be) on disk."""
    c = card(name)
    if name in _LOCAL:
        return _LOCAL[name][1]
    return (cache or paths.cache_dir()) / c.filename


def cached_sha256(path: Path) -> str:
    """sha256 of ``path``, remembered in ``PATH.sha256`` next to it (keyed by size and mtime)."""
    from voiceid.models.download import sha256_file

    st = path.stat()
    key = f"{st.st_size} {st.st_mtime_ns}"
    side = path.with_name(path.name + ".sha256")
    try:
        stored_key, digest = side.read_text().rsplit(" ", 1)
        if stored_key == key and len(digest) == 64:
            return digest
    except (OSError, ValueError):
        pass
    digest = sha256_file(path)
    with contextlib.suppress(OSError):  # a read-only cache still works, only slower
        side.write_text(f"{key} {digest}")
    return digest


def check_pinned(name: str, c: ModelCard, path: Path, *, fetch: bool) -> None:
    """A downloaded model in the cache must still have its pinned hash (else: fetch again)."""
    got = cached_sha256(path)
    if got == c.sha256:
        return
    if fetch:
        from voiceid.models.download import fetch as download

        download(c.source, path, c.sha256)
        return
    raise ModelError(
        f"model file {path} has sha256 {got}, not the pinned {c.sha256}",
        hint=f"run `voiceid models fetch {name}`, place the right file there, or pin this "
        "build with --sha256 / model.sha256",
    )


def resolve(
    name: str,
    *,
    fetch: bool = False,
    cache: Path | None = None,
    sha256: str | None = None,
    precision: Precision = "fp32",
) -> ResolvedModel:
    """Return the model's card and file; obtain the file first when ``fetch``.

    ``sha256`` pins another build of a downloaded model (the fingerprint follows it).
    Without ``fetch`` a missing file is a ``ModelError`` that says how to get it.
    ``precision`` "int8": the quantized variant made by ``voiceid models quantize``.
    """
    if precision != "fp32":
        base = resolve(name, fetch=fetch, cache=cache, sha256=sha256)
        quantized = variant_path(base.path, precision)
        if not quantized.is_file():
            raise ModelError(
                f"no {precision} variant of {name!r} ({quantized})",
                hint=f"make it: voiceid models quantize {name} --calibration SPEECH_DIR",
            )
        return ResolvedModel(base.card, quantized, precision)
    c = card(name)
    if sha256:
        c = c.model_copy(update={"sha256": sha256.lower()})
    path = model_path(name, cache)
    try:
        present = path.is_file()
    except OSError as exc:  # e.g. an unreadable cache directory
        raise ModelError(
            f"cannot access the model cache {path.parent}: {exc.strerror or exc}",
            hint="check its permissions, or set VOICEID_HOME",
        ) from None
    if present:
        if c.source.startswith("https://") and c.sha256:
            check_pinned(name, c, path, fetch=fetch)
        return ResolvedModel(c, path)
    if name in _LOCAL:
        raise ModelError(
            f"model file {path} for {name!r} does not exist",
            hint="fix the path under models: in config.yaml",
        )
    if not fetch:
        raise ModelError(
            f"model {name!r} is not in the cache ({path})",
            hint=f"run `voiceid models fetch {name}` (needs network), or place the file there",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if name == "wespeaker-resnet34-lm":
        from voiceid.models.download import fetch as download

        download(c.source, path, c.sha256)
    elif name == "resemblyzer-ge2e":
        from voiceid.models.ge2e import ensure_ge2e_onnx

        path = ensure_ge2e_onnx(path.parent)
    elif name == "wespeaker-resnet34-random":
        from voiceid.models.resnet34 import save_resnet34

        save_resnet34(path, seed=0)
    return ResolvedModel(c, path)
