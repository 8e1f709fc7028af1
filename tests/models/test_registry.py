"""The model registry: names, resolving files (absent, fetched, local) and fingerprints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import MODEL_CACHE
from voiceid.errors import ModelError
from voiceid.models import registry
from voiceid.models.card import ModelCard
from voiceid.models.download import sha256_file

RANDOM = "wespeaker-resnet34-random"
GE2E = "resemblyzer-ge2e"
LM = "wespeaker-resnet34-lm"


@pytest.fixture(autouse=True)
def no_local_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no local models and leaves none behind."""
    monkeypatch.setattr(registry, "_LOCAL", {})


@pytest.fixture(scope="module")
def random_onnx() -> Path:
    """The seeded random ResNet34 in the shared test cache (built once, ~0.3 s)."""
    return registry.resolve(RANDOM, fetch=True, cache=MODEL_CACHE / "models").path


def local_card(name: str = "my-resnet", sha256: str | None = None) -> ModelCard:
    return registry.BUILTIN[RANDOM].model_copy(
        update={"name": name, "source": "local", "sha256": sha256, "filename": ""}
    )


def test_builtin_names() -> None:
    assert registry.names() == [LM, GE2E, RANDOM]
    assert registry.DEFAULT_MODEL == LM
    for name in registry.names():
        assert registry.card(name).name == name
        assert registry.card(name).dim == 256


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ModelError) as info:
        registry.card("no-such-model")
    err = info.value
    assert err.exit_code == 4
    assert "unknown model 'no-such-model'" in err.message
    assert err.hint is not None
    for name in (LM, GE2E, RANDOM):
        assert name in err.hint
    assert "voiceid models list" in err.hint
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        registry.resolve("nope", fetch=True)


@pytest.mark.parametrize("name", [LM, GE2E, RANDOM])
def test_absent_model_without_fetch_says_how_to_fetch(name: str, tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        registry.resolve(name, cache=tmp_path)
    err = info.value
    assert f"model {name!r} is not in the cache" in err.message
    assert str(tmp_path / registry.card(name).filename) in err.message
    assert err.hint is not None and f"voiceid models fetch {name}" in err.hint
    assert list(tmp_path.iterdir()) == []  # nothing created without fetch


def test_model_path_follows_voiceid_home(voiceid_home: Path) -> None:
    assert registry.model_path(GE2E) == voiceid_home / "models" / "resemblyzer-ge2e.onnx"
    other = voiceid_home / "elsewhere"
    assert registry.model_path(RANDOM, other) == other / "wespeaker-resnet34-random-seed0.onnx"


def test_fetch_builds_random_resnet34(tmp_path: Path, random_onnx: Path) -> None:
    cache = tmp_path / "cache"  # does not exist yet: resolve creates it
    resolved = registry.resolve(RANDOM, fetch=True, cache=cache)
    assert resolved.path == cache / "wespeaker-resnet34-random-seed0.onnx"
    assert resolved.path.is_file() and resolved.path.stat().st_size > 20_000_000
    assert resolved.card is registry.BUILTIN[RANDOM]
    # seeded: the same bytes as the build in the shared cache, hence the same fingerprint
    assert sha256_file(resolved.path) == sha256_file(random_onnx)
    assert (
        resolved.fingerprint == registry.resolve(RANDOM, cache=MODEL_CACHE / "models").fingerprint
    )
    # now present: resolving without fetch finds it and does not rebuild it
    mtime = resolved.path.stat().st_mtime_ns
    again = registry.resolve(RANDOM, cache=cache)
    assert again.path == resolved.path and again.path.stat().st_mtime_ns == mtime
    assert [p.name for p in cache.iterdir()] == [resolved.path.name]  # no temp files left


def test_register_local_and_resolve(tmp_path: Path, random_onnx: Path) -> None:
    card = local_card("my-resnet")
    registry.register_local(card, random_onnx)
    assert registry.names()[-1] == "my-resnet"
    assert registry.card("my-resnet") is card
    assert registry.model_path("my-resnet", tmp_path) == random_onnx  # cache is ignored
    resolved = registry.resolve("my-resnet", fetch=True, cache=tmp_path)
    assert resolved.card is card and resolved.path == random_onnx
    assert list(tmp_path.iterdir()) == []  # nothing fetched or built for a local model


def test_local_model_with_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone.onnx"
    registry.register_local(local_card("gone"), missing)
    with pytest.raises(ModelError) as info:
        registry.resolve("gone", fetch=True)
    assert str(missing) in info.value.message and "does not exist" in info.value.message
    assert info.value.hint is not None and "config.yaml" in info.value.hint


@pytest.mark.parametrize("name", [LM, GE2E, RANDOM])
def test_local_name_clashing_with_builtin_is_refused(name: str, random_onnx: Path) -> None:
    with pytest.raises(ModelError, match="taken by a built-in model"):
        registry.register_local(local_card(name), random_onnx)
    assert registry.card(name) is registry.BUILTIN[name]
    assert registry.names() == [LM, GE2E, RANDOM]


def test_fingerprints_differ_between_models(random_onnx: Path) -> None:
    cards = [registry.card(n) for n in registry.names()]
    prints = {c.fingerprint() for c in cards}
    assert len(prints) == len(cards)
    for p in prints:
        assert len(p) == 16 and int(p, 16) >= 0
    # a local card with the same graph but another name is another embedding space
    registry.register_local(local_card("copy"), random_onnx)
    copy = registry.resolve("copy").fingerprint
    builtin = registry.resolve(RANDOM, cache=random_onnx.parent).fingerprint
    assert copy != builtin


def test_fingerprint_follows_sha256_pin(tmp_path: Path) -> None:
    cache = MODEL_CACHE / "models"
    base = registry.resolve(GE2E, fetch=True, cache=cache)
    assert base.fingerprint == registry.card(GE2E).fingerprint()  # pinned: card hash
    other = "ab" * 32
    pinned = registry.resolve(GE2E, cache=cache, sha256=other)
    assert pinned.card.sha256 == other
    assert pinned.fingerprint != base.fingerprint
    assert pinned.fingerprint == registry.card(GE2E).fingerprint(other)
    # the pin is case-insensitive
    assert registry.resolve(GE2E, cache=cache, sha256=other.upper()).fingerprint == (
        pinned.fingerprint
    )
    # the built-in card itself is untouched
    assert registry.card(GE2E).sha256 == registry.GE2E_MEMBER_SHA256


def test_fingerprint_stable_across_calls(random_onnx: Path) -> None:
    for name in (GE2E, RANDOM):
        first = registry.resolve(name, fetch=True, cache=MODEL_CACHE / "models").fingerprint
        second = registry.resolve(name, cache=MODEL_CACHE / "models").fingerprint
        assert first == second
    card = registry.card(LM)
    assert card.fingerprint() == card.fingerprint() == registry.card(LM).fingerprint()


def test_unpinned_model_fingerprinted_by_file_hash(tmp_path: Path, random_onnx: Path) -> None:
    card = registry.card(RANDOM)
    assert card.sha256 is None
    resolved = registry.resolve(RANDOM, cache=random_onnx.parent)
    assert resolved.fingerprint == card.fingerprint(sha256_file(random_onnx))
    assert resolved.fingerprint != card.fingerprint()  # not the "unknown" placeholder
    # another file under the same name: another fingerprint
    changed = tmp_path / random_onnx.name
    shutil.copyfile(random_onnx, changed)
    with changed.open("r+b") as f:
        f.seek(-1000, 2)
        byte = f.read(1)
        f.seek(-1000, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    other = registry.resolve(RANDOM, cache=tmp_path)
    assert other.fingerprint != resolved.fingerprint
    assert other.fingerprint == card.fingerprint(sha256_file(changed))
    # a local unpinned model too; pinning it makes the fingerprint the card's
    registry.register_local(local_card("mine"), changed)
    assert registry.resolve("mine").fingerprint == local_card("mine").fingerprint(
        sha256_file(changed)
    )
    registry.register_local(local_card("mine-pinned", sha256="cd" * 32), changed)
    assert (
        registry.resolve("mine-pinned").fingerprint
        == local_card("mine-pinned", "cd" * 32).fingerprint()
    )
