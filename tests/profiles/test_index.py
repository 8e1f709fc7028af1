"""ProfileIndex: exact top-k, add/remove bookkeeping, foreign fingerprints, and
readers racing a writer."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from voiceid.errors import ProfileError
from voiceid.profiles.index import ProfileIndex, ProfileLike
from voiceid.profiles.model import Profile, ProfileSummary, Utterance, Vector, centroid

FP = "fp-resnet34"


@dataclass(frozen=True)
class P:
    id: str
    name: str
    fingerprint: str
    model_name: str
    centroid: Vector


def unit(rng: np.random.Generator, *shape: int) -> npt.NDArray[np.float32]:
    x = rng.standard_normal((*shape,)).astype(np.float32)
    out: npt.NDArray[np.float32] = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(
        np.float32
    )
    return out


def make(name: str, vec: np.ndarray, fp: str = FP, model: str = "resnet34") -> P:
    return P(uuid.uuid4().hex, name, fp, model, vec.astype(np.float32))


def brute(matrix: np.ndarray, names: list[str], q: np.ndarray, k: int) -> list[str]:
    s = matrix @ q
    order = np.argsort(-s, kind="stable")[:k]
    return [names[i] for i in order]


@pytest.mark.parametrize(("n", "k"), [(1, 5), (7, 3), (600, 5), (20_000, 3), (20_001, 1)])
def test_top_k_matches_brute_force(n: int, k: int) -> None:
    rng = np.random.default_rng(n)
    dim = 32
    m = unit(rng, n, dim)
    names = [f"s{i}" for i in range(n)]
    index = ProfileIndex.from_matrix(FP, names, [uuid.uuid4().hex for _ in names], m)
    queries = unit(rng, 8, dim)
    batch = index.top_k_batch(queries, k)
    for q, got_b in zip(queries, batch, strict=True):
        got = index.top_k(q, k)
        assert [nm for nm, _ in got] == [nm for nm, _ in got_b]
        assert np.allclose([s for _, s in got], [s for _, s in got_b], atol=1e-6)
        assert [name for name, _ in got] == brute(m, names, q, k)
        want_scores = np.sort(m @ q)[::-1][: min(k, n)]
        assert np.allclose([s for _, s in got], want_scores, atol=1e-6)
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
    assert np.allclose(index.scores(queries), queries @ m.T, atol=1e-6)
    assert np.allclose(index.scores(queries[0]), m @ queries[0], atol=1e-6)


def test_top_k_block_prefilter_handles_short_last_block() -> None:
    # The best match sits in the final, partial block.
    rng = np.random.default_rng(5)
    n, dim = 512 * 30 + 7, 16
    m = unit(rng, n, dim) * 0.5
    q = unit(rng, dim)
    m[-1] = q
    m[-3] = -q
    names = [f"s{i}" for i in range(n)]
    index = ProfileIndex.from_matrix(FP, names, [str(i) for i in range(n)], m)
    top = index.top_k(q, 4)
    assert top[0][0] == f"s{n - 1}" and top[0][1] == pytest.approx(1.0)
    assert [nm for nm, _ in top] == brute(m, names, q, 4)
    assert len({nm for nm, _ in top}) == 4


def test_empty_and_k_bounds() -> None:
    index = ProfileIndex(FP)
    q = np.ones(8, np.float32) / np.sqrt(8)
    assert index.top_k(q, 5) == []
    assert index.top_k_batch(np.stack([q, q]), 5) == [[], []]
    assert index.scores(q).shape == (0,)
    index.add(make("a", q))
    assert index.top_k(q, 0) == []
    assert [n for n, _ in index.top_k(q, 10)] == ["a"]
    with pytest.raises(ProfileError, match="dimension"):
        index.top_k(np.ones(9, np.float32), 1)
    with pytest.raises(ValueError, match="2-D"):
        index.top_k_batch(q, 1)


def test_add_remove_consistency_against_a_model() -> None:
    rng = np.random.default_rng(0)
    dim = 16
    index = ProfileIndex(FP)
    model: dict[str, tuple[str, np.ndarray]] = {}
    for step in range(600):
        name = f"n{rng.integers(0, 80)}"
        if rng.random() < 0.6:
            vec = unit(rng, dim)
            if rng.random() < 0.5:
                name = name.upper()  # same profile, other case: replaces
            p = make(name, vec)
            index.add(p)
            model = {k: v for k, v in model.items() if k != name.casefold()}
            model[name.casefold()] = (name, vec)
        else:
            assert index.remove(name) == (name.casefold() in model)
            model.pop(name.casefold(), None)
        if step % 50 == 0 or step == 599:
            assert len(index) == len(model)
            assert sorted(index.names) == sorted(nm for nm, _ in model.values())
            for key, (nm, vec) in model.items():
                assert key.upper() in index
                assert index.check(key.upper()) == nm
                row = index.names.index(nm)
                assert np.array_equal(index.matrix[row], vec)
                assert index.score(vec, nm) == pytest.approx(1.0, abs=1e-5)
    q = unit(rng, dim)
    m = np.stack([v for _, v in model.values()])
    names = [nm for nm, _ in model.values()]
    assert [nm for nm, _ in index.top_k(q, 5)] == brute(m, names, q, 5)


def test_capacity_grows_geometrically() -> None:
    rng = np.random.default_rng(1)
    index = ProfileIndex(FP)
    reallocations = 0
    last = None
    for i in range(5000):
        index.add(make(f"p{i}", unit(rng, 8)))
        buf = index._snap.matrix
        if buf is not last:
            reallocations += 1
            last = buf
    assert len(index) == 5000
    assert reallocations <= 12
    assert index.nbytes >= 5000 * 8 * 4
    with pytest.raises(ValueError):
        index.matrix[0, 0] = 1.0  # read-only view


def test_replace_by_id_renames() -> None:
    rng = np.random.default_rng(2)
    index = ProfileIndex(FP)
    p = make("alice", unit(rng, 8))
    index.add(p)
    index.add(P(p.id, "Alicia", FP, "resnet34", unit(rng, 8)))
    assert index.names == ["Alicia"] and "alice" not in index


def test_foreign_fingerprints_are_set_aside() -> None:
    rng = np.random.default_rng(3)
    u = [Utterance(rng.standard_normal(8).astype(np.float32), 2.0) for _ in range(3)]
    real = Profile(
        id=uuid.uuid4().hex,
        name="Carol",
        fingerprint="fp-ecapa",
        model_name="ecapa-tdnn",
        centroid=centroid([x.embedding for x in u]),
        utterances=tuple(u),
        created=1.0,
        updated=1.0,
    )
    profiles: list[ProfileLike] = [
        make("Alice", unit(rng, 8)),
        make("Bob", unit(rng, 8)),
        real,
        ProfileSummary.of(make_profile("Dave", "fp-old")),
    ]
    index = ProfileIndex.from_profiles(profiles, FP, model_name="resnet34")
    assert index.names == ["Alice", "Bob"]
    assert [(f.name, f.model_name) for f in index.foreign] == [
        ("Carol", "ecapa-tdnn"),
        ("Dave", "old-model"),
    ]
    assert index.check("alice") == "Alice"
    with pytest.raises(ProfileError, match="enrolled with model ecapa-tdnn") as err:
        index.check("carol")
    assert "re-enroll Carol with resnet34" in str(err.value)
    with pytest.raises(ProfileError, match="re-enroll Dave"):
        index.score(unit(rng, 8), "DAVE")
    with pytest.raises(ProfileError, match="voiceid profiles list"):
        index.check("Eve")
    assert all(name in ("Alice", "Bob") for name, _ in index.top_k(unit(rng, 8), 5))

    # Re-enrolled with the index's model: moves from foreign to the matrix.
    index.add(make("carol", unit(rng, 8)))
    assert "Carol" in index and [f.name for f in index.foreign] == ["Dave"]
    # Re-enrolled with another model: leaves the matrix.
    index.add(make("Bob", unit(rng, 8), fp="fp-other", model="other"))
    assert "Bob" not in index and {f.name for f in index.foreign} == {"Bob", "Dave"}
    assert index.remove("dave") and not index.remove("dave")
    assert [f.name for f in index.foreign] == ["Bob"]


def make_profile(name: str, fp: str) -> Profile:
    u = (Utterance(np.arange(1, 9, dtype=np.float32), 1.0),)
    return Profile(uuid.uuid4().hex, name, fp, "old-model", centroid([u[0].embedding]), u, 0, 0)


def test_readers_never_see_half_updates() -> None:
    rng = np.random.default_rng(4)
    dim = 32
    vecs = {f"p{i}": unit(rng, dim) for i in range(400)}
    ids = {name: uuid.uuid4().hex for name in vecs}
    index = ProfileIndex(FP)
    for name in list(vecs)[:200]:
        index.add(P(ids[name], name, FP, "m", vecs[name]))
    stop = time.monotonic() + 1.0
    errors: list[str] = []

    def reader(seed: int) -> None:
        r = np.random.default_rng(seed)
        while time.monotonic() < stop and not errors:
            q = unit(r, 4, dim)
            for row, hits in zip(q, index.top_k_batch(q, 3), strict=True):
                for name, score in hits:
                    want = float(vecs[name] @ row)
                    if abs(want - score) > 1e-5:
                        errors.append(f"{name}: {score} != {want}")

    def writer() -> None:
        r = np.random.default_rng(99)
        names = list(vecs)
        while time.monotonic() < stop:
            name = names[int(r.integers(0, len(names)))]
            if r.random() < 0.5:
                index.add(P(ids[name], name, FP, "m", vecs[name]))
            else:
                index.remove(name)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(2)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
