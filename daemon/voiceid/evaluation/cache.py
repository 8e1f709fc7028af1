"""Per-file embedding cache, so re-running an evaluation does not embed again.

Key: sha256 of the file's bytes plus the model fingerprint (which changes whenever the
embeddings would), so renamed or copied files hit and edited files or another model
miss. Layout: ``ROOT/<fingerprint>/<sha[:2]>/<sha>.npy`` (float32 [D]), ROOT defaulting
to ``voiceid.paths.cache_dir().parent / "embeddings"``. Writes are atomic (temporary
file in the same folder, then ``os.replace``), so a crash or a concurrent run never
leaves a half-written entry; an unreadable entry counts as a miss and is rewritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from voiceid import paths
from voiceid.errors import AudioError

if TYPE_CHECKING:
    from voiceid.models.embedder import Embedder

_CHUNK = 1 << 20


def default_root() -> Path:
    """``<cache>/embeddings`` beside the model cache (``$VOICEID_HOME/embeddings`` or
    ``$XDG_CACHE_HOME/voiceid/embeddings``)."""
    return paths.cache_dir().parent / "embeddings"


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class EmbeddingCache:
    """Embeddings of files for one model ``fingerprint``; ``root=None`` disables caching
    (every lookup misses, nothing is written)."""

    def __init__(self, fingerprint: str, root: Path | None) -> None:
        if not fingerprint or "/" in fingerprint or fingerprint.startswith("."):
            raise ValueError(f"bad model fingerprint {fingerprint!r}")
        self.fingerprint = fingerprint
        self.root = root
        self.hits = 0
        self.misses = 0

    def path_for(self, sha: str) -> Path | None:
        """Where the entry of content hash ``sha`` lives (None when disabled)."""
        if self.root is None:
            return None
        return self.root / self.fingerprint / sha[:2] / f"{sha}.npy"

    def get(self, sha: str, dim: int | None = None) -> NDArray[np.float32] | None:
        """The cached embedding, or None (missing, unreadable, wrong shape)."""
        p = self.path_for(sha)
        if p is None or not p.is_file():
            self.misses += 1
            return None
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            self.misses += 1
            return None
        ok = (
            arr.ndim == 1
            and arr.dtype == np.float32
            and arr.size > 0
            and (dim is None or arr.size == dim)
            and bool(np.isfinite(arr).all())
        )
        if not ok:
            self.misses += 1
            return None
        self.hits += 1
        return np.asarray(arr, dtype=np.float32)

    def put(self, sha: str, embedding: NDArray[np.float32]) -> None:
        """Store atomically; a cache that cannot be written is silently skipped."""
        p = self.path_for(sha)
        if p is None:
            return
        vec = np.ascontiguousarray(embedding, dtype=np.float32).reshape(-1)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=p.parent)
        except OSError:
            return
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, vec, allow_pickle=False)
            os.replace(tmp, p)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


ProgressFn = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each file."""


@dataclass
class Embedded:
    """Embeddings of files (unit-norm float32 [D]) and what it took to get them."""

    vectors: dict[Path, NDArray[np.float32]]
    sha256: dict[Path, str]
    failed: dict[Path, str]  # file -> why it has no embedding (no speech, unreadable)
    cached: int = 0
    computed: int = 0
    seconds: float = 0.0

    def matrix(self, files: Sequence[Path]) -> NDArray[np.float32]:
        return np.stack([self.vectors[f] for f in files]).astype(np.float32)


def embed_files(
    files: Sequence[Path],
    embedder: Embedder,
    cache: EmbeddingCache,
    progress: ProgressFn | None = None,
) -> Embedded:
    """Embed every file (whole utterance), from the cache when possible.

    Files that fail with an :class:`~voiceid.errors.AudioError` (unreadable, too short,
    no speech) are listed in ``failed`` instead of stopping the run.
    """
    from voiceid.audio.io import load_audio

    out = Embedded({}, {}, {})
    t0 = time.perf_counter()
    dim = embedder.card.dim
    for i, f in enumerate(files):
        try:
            sha = file_sha256(f)
        except OSError as exc:
            out.failed[f] = f"cannot read: {exc.strerror or exc}"
        else:
            out.sha256[f] = sha
            vec = cache.get(sha, dim)
            if vec is not None:
                out.vectors[f] = vec
                out.cached += 1
            else:
                try:
                    samples = load_audio(f, embedder.sample_rate)
                    vec = np.asarray(embedder.embed(samples, where=str(f)), dtype=np.float32)
                except AudioError as exc:
                    out.failed[f] = str(exc)
                else:
                    out.vectors[f] = vec
                    out.computed += 1
                    cache.put(sha, vec)
        if progress is not None:
            progress(i + 1, len(files))
    out.seconds = time.perf_counter() - t0
    return out
