"""Shared fixtures: the real speech in ../shared/audio and an isolated VOICEID_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VOICEID_SHARED", REPO.parent / "shared"))
AUDIO = SHARED / "audio" / "librispeech-test-other"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set VOICEID_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def audio_dir(shared_dir: Path) -> Path:
    if not AUDIO.is_dir():
        pytest.skip(f"LibriSpeech test audio not found at {AUDIO}")
    return AUDIO


@pytest.fixture(scope="session")
def speakers(audio_dir: Path) -> dict[str, list[Path]]:
    """Speaker id -> its 10 FLAC files, sorted."""
    return {d.name: sorted(d.glob("*.flac")) for d in sorted(audio_dir.iterdir()) if d.is_dir()}


@pytest.fixture()
def voiceid_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh VOICEID_HOME for one test (models cache, profiles)."""
    monkeypatch.setenv("VOICEID_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


MODEL_CACHE = Path(os.environ.get("VOICEID_TEST_CACHE", "/tmp/voiceid-test-cache")) / "home"


@pytest.fixture()
def model_home(monkeypatch: pytest.MonkeyPatch) -> Path:
    """VOICEID_HOME pointing at a model cache kept across tests and runs ($VOICEID_TEST_CACHE).

    Models are built or fetched there once (GE2E via pip from PyPI, ResNet34 random
    weights locally). Pass ``--db`` to CLI commands so profiles stay per test.
    """
    monkeypatch.setenv("VOICEID_HOME", str(MODEL_CACHE))
    return MODEL_CACHE


@pytest.fixture(scope="session")
def ge2e_embedder() -> object:
    """A loaded resemblyzer-ge2e Embedder (CPU, 2 threads), shared by the session."""
    from voiceid.models import registry
    from voiceid.models.embedder import Embedder
    from voiceid.models.inference import EmbeddingModel

    resolved = registry.resolve("resemblyzer-ge2e", fetch=True, cache=MODEL_CACHE / "models")
    model = EmbeddingModel(resolved.path, resolved.card, device="cpu", intra_threads=2)
    return Embedder(model, resolved.fingerprint)
