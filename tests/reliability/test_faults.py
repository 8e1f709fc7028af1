"""Faults injected into a running system: a CUDA error inside a batch, no GPU at start,
a full disk while enrolling, kill -9 of processes that are writing profiles.

The broker-kill fault (MQTT broker killed and restarted under a running sink) is tested
in ``tests/sinks/test_mqtt.py`` against a real mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voiceid.errors import ModelError, StoreError
from voiceid.frontend.base import FrontEndSpec
from voiceid.profiles.model import Profile, Utterance, centroid
from voiceid.profiles.store import EXPORT_FORMAT, EXPORT_VERSION, ProfileStore
from voiceid.runtime.hub import EngineConfig, Hub
from voiceid.security.templates import TemplateKey
from voiceid.stream.decide import DecisionConfig
from voiceid.stream.pipeline import StreamConfig

REPO = Path(__file__).resolve().parents[2]
needs_crypto = pytest.mark.skipif(
    importlib.util.find_spec("cryptography") is None, reason="pyproject: cryptography>=42"
)
VOICEID = Path(sys.executable).with_name("voiceid")
RATE = 16000


def vowel(seconds: float, f0: float = 120.0, seed: int = 0) -> np.ndarray:
    """A steady synthetic vowel at -20 dBFS: speech to webrtcvad."""
    t = np.arange(round(seconds * RATE)) / RATE
    phases = np.random.default_rng(seed).uniform(0.0, 2 * np.pi, int(4000 / f0))
    x = sum(np.sin(2 * np.pi * f0 * k * t + ph) / k for k, ph in enumerate(phases, 1))
    x = np.asarray(x, dtype=np.float64)
    return (x * 0.1 / np.sqrt(np.mean(x * x))).astype(np.float32)


# ----------------------------------------------------------- CUDA error in a batch


class SimulatedCudaError(RuntimeError):
    """What onnxruntime raises when a kernel faults (the text of a real one)."""


@dataclass
class _Card:
    frontend: FrontEndSpec
    name: str = "fake"
    threshold: float = 0.5


class FlakyEmbedder:
    """Embeds every window as speaker A; the ``fail_calls``-th calls raise a CUDA error."""

    def __init__(self, fail_calls: set[int]) -> None:
        self.card = _Card(FrontEndSpec(kind="kaldi_fbank", num_bins=80))
        self.fail_calls = fail_calls
        self.calls = 0
        self.live = False  # warm-up calls do not count

    def embed_features(self, x: np.ndarray) -> np.ndarray:
        if self.live:
            self.calls += 1
            if self.calls in self.fail_calls:
                raise SimulatedCudaError(
                    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned "
                    "while running Conv node. CUDA error cudaErrorIllegalAddress: an illegal "
                    "memory access was encountered"
                )
        out = np.zeros((x.shape[0], 2), dtype=np.float32)
        out[:, 0] = 1.0
        return out


class ABScorer:
    names = ("A", "B")

    def scores(self, emb: np.ndarray) -> np.ndarray:
        return np.asarray(emb, dtype=np.float32) @ np.eye(2, dtype=np.float32)


def test_cuda_error_fails_one_batch_streams_carry_on(caplog: pytest.LogCaptureFixture) -> None:
    embedder = FlakyEmbedder(fail_calls={3, 4})
    cfg = StreamConfig(decision=DecisionConfig(enter=0.5))

    async def scenario() -> tuple[Hub, dict[str, list[Any]], list[int]]:
        hub = Hub(embedder, ABScorer(), cfg, EngineConfig(max_batch=4, max_wait_ms=1.0))  # type: ignore[arg-type]
        await hub.start()
        embedder.live = True
        events: dict[str, list[Any]] = {}
        queue = hub.bus.subscribe()
        streams = [hub.open_stream(f"s{i}", encoding=None) for i in range(3)]
        audio = vowel(6.0)
        windows_after: list[int] = []
        for k in range(0, audio.size, 1600):  # 100 ms pieces, as fast as the engine goes
            for s in streams:
                s.feed_samples(audio[k : k + 1600])
            await asyncio.sleep(0.01)
            if embedder.calls == 5:
                windows_after.append(hub.engine.stats().windows)
        for _ in range(200):
            if hub.engine.stats().pending == 0 and not hub._inflight:
                break
            await asyncio.sleep(0.01)
        for s in streams:
            s.close()
        with contextlib.suppress(asyncio.TimeoutError):
            while (event := await asyncio.wait_for(queue.get(), 0.2)) is not None:
                events.setdefault(event.stream, []).append(event)
        await hub.close()
        return hub, events, windows_after

    with caplog.at_level(logging.ERROR, logger="voiceid.stream.engine"):
        hub, events, _ = asyncio.run(asyncio.wait_for(scenario(), 60))
    stats = hub.engine.stats()
    assert stats.errors == 2, stats  # exactly the two faulty calls failed
    assert stats.failed_windows >= 2 and hub.failed_windows == stats.failed_windows
    assert stats.batches > 4 and stats.windows > stats.failed_windows, "later batches succeed"
    assert "illegal memory access" in caplog.text  # logged with the batch
    for name in ("s0", "s1", "s2"):
        kinds = [e.type for e in events.get(name, [])]
        assert "speaker_started" in kinds, (name, kinds)  # every stream identified A
        assert all(e.name == "A" for e in events[name] if e.type == "speaker_started")
        assert kinds[-1] == "speaker_ended"  # and ended cleanly at close


# -------------------------------------------------------------- no GPU at start


@pytest.fixture(scope="module")
def ge2e_file() -> tuple[Path, Any]:
    from tests.conftest import MODEL_CACHE
    from voiceid.models import registry

    try:
        resolved = registry.resolve("resemblyzer-ge2e", fetch=True, cache=MODEL_CACHE / "models")
    except Exception as exc:  # pragma: no cover - offline without a cache
        pytest.skip(f"GE2E model not available: {exc}")
    return resolved.path, resolved.card


def _no_gpu(monkeypatch: pytest.MonkeyPatch, listed: bool = True) -> None:
    """onnxruntime-gpu installed (the provider is listed) but no usable GPU/driver."""
    from voiceid.models import gpu, inference

    monkeypatch.setattr(inference, "cuda_listed", lambda: listed)
    monkeypatch.setattr(gpu, "cuda_usable", lambda device_id=0: False)


def test_no_gpu_auto_falls_back_to_cpu(
    ge2e_file: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from voiceid.models.inference import CPU, EmbeddingModel

    _no_gpu(monkeypatch)
    path, card = ge2e_file
    with caplog.at_level(logging.WARNING, logger="voiceid.models.inference"):
        model = EmbeddingModel(path, card, device="auto", intra_threads=1)
    assert model.provider == CPU
    assert "CUDA unavailable, running resemblyzer-ge2e on CPU" in caplog.text
    x = np.zeros((2, 160, card.frontend.num_bins), dtype=np.float32)
    assert model.embed(x).shape == (2, card.dim)  # and it works


@pytest.mark.parametrize("listed", [True, False], ids=["gpu-missing", "no-cuda-build"])
def test_no_gpu_cuda_required_is_a_clear_error(
    ge2e_file: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch, listed: bool
) -> None:
    from voiceid.models.inference import EmbeddingModel

    _no_gpu(monkeypatch, listed=listed)
    path, card = ge2e_file
    with pytest.raises(ModelError, match="device 'cuda' requested") as err:
        EmbeddingModel(path, card, device="cuda", intra_threads=1)
    assert err.value.hint and "device: auto" in err.value.hint


# ------------------------------------------------------------------- disk full


def utts(seed: int, n: int = 3, dim: int = 192) -> list[Utterance]:
    rng = np.random.default_rng(seed)
    return [
        Utterance(rng.standard_normal(dim).astype(np.float32), 1.0 + i, f"u{i}") for i in range(n)
    ]


def _fill_until_full(store: ProfileStore, limit: int = 5000) -> tuple[list[str], StoreError]:
    added: list[str] = []
    for i in range(limit):
        try:
            store.add(f"p{i}", "fp", "m", utts(i, n=8))
        except StoreError as exc:
            return added, exc
        added.append(f"p{i}")
    raise AssertionError("the disk never filled")


def _check_after_full(db: Path, added: list[str], key: TemplateKey | None) -> None:
    with ProfileStore.open(db, key=key) as s:
        assert s.integrity_check() == "ok"
        assert s.names() == sorted(added)
        for p in s.list():
            assert p.n_utterances == 8


@needs_crypto
@pytest.mark.parametrize("encrypted", [False, True], ids=["clear", "encrypted"])
def test_disk_full_max_page_count(tmp_path: Path, encrypted: bool) -> None:
    """SQLite's own quota (PRAGMA max_page_count) as the full disk: SQLITE_FULL."""
    db = tmp_path / "p.db"
    key = TemplateKey(bytes(range(32))) if encrypted else None
    with ProfileStore.open(db, key=key) as s:
        s.add("first", "fp", "m", utts(0, n=8))
        assert s._conn is not None
        pages = s._conn.execute("PRAGMA page_count").fetchone()[0]
        s._conn.execute(f"PRAGMA max_page_count = {pages + 12}")
        added, err = _fill_until_full(s)
        assert "disk full" in str(err)
        assert f"p{len(added)}" not in s  # the failed profile left nothing
        assert s.integrity_check() == "ok"
        s.delete("p0")  # deleting works on a full disk
        s._conn.execute(f"PRAGMA max_page_count = {pages + 200}")  # space again
        s.add("again", "fp", "m", utts(99, n=8))
    _check_after_full(db, ["first", *added[1:], "again"], key)


@pytest.fixture()
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only); skipped where mounting is not allowed."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@needs_crypto
def test_disk_full_real_filesystem(tiny_fs: Path) -> None:
    """A real full filesystem (ENOSPC on the database or its WAL) while enrolling."""
    db = tiny_fs / "state" / "profiles.db"
    key = TemplateKey(bytes(range(32)))
    reserve = tiny_fs / "reserve"
    reserve.write_bytes(b"\0" * (256 << 10))  # freed later: "the admin made room"
    with ProfileStore.open(db, key=key) as s:
        added, err = _fill_until_full(s)
        assert "disk full" in str(err) or "I/O error" in str(err), err
        assert len(added) > 5
        assert f"p{len(added)}" not in s  # the failed enrollment left nothing
        assert s.integrity_check() == "ok"
    # still opens and reads while the disk is full, nothing half-written
    _check_after_full(db, added, key)
    reserve.unlink()
    with ProfileStore.open(db, key=key) as s:
        s.add("after", "fp", "m", utts(7, n=8))
        assert s.integrity_check() == "ok" and s.count() == len(added) + 1


# -------------------------------------------------------------------- kill -9

# A pre-imported process that forks one writer per request, so each of the 100 kills costs
# a fork (ms), not a Python start-up with numpy, cryptography and voiceid (~0.4 s). Every
# writer is a separate process with its own SQLite connection, killed with SIGKILL.
_FORK_SERVER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from voiceid.profiles.model import Utterance
    from voiceid.profiles.store import ProfileStore
    from voiceid.security.templates import TemplateKey

    db, log_dir, imports = sys.argv[1], sys.argv[2], sys.argv[3]
    key = TemplateKey(bytes(range(32)))

    def writer(run):
        fd = os.open(f"{log_dir}/{run}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        def say(line):
            os.write(fd, (line + "\\n").encode())
        store = ProfileStore.open(db, key=key)
        rng = np.random.default_rng(run)
        say("ready")
        for i in range(10**9):
            name = f"r{run}-{i}"
            u = [Utterance(rng.standard_normal(192).astype(np.float32), 1.0 + j, f"u{j}")
                 for j in range(3)]
            say(f"adding {name}")
            store.add(name, "fp", "m", u)
            say(f"added {name}")
            if i % 3 == 1:
                say(f"importing {run}-{i}")
                store.import_json(f"{imports}/{(run + i) % 4}.json", replace=True)
                say(f"imported {run}-{i}")
            if i % 4 == 3:
                victim = f"r{run}-{i - 2}"
                say(f"deleting {victim}")
                store.delete(victim)
                say(f"deleted {victim}")
            if i % 5 == 4:
                target = f"r{run}-{i - 1}"
                u = [Utterance(rng.standard_normal(192).astype(np.float32), 2.0, "new")
                     for j in range(3)]
                say(f"replacing {target}")
                store.replace_utterances(target, u)
                say(f"replaced {target}")

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed writers are reaped at once
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    for line in sys.stdin:
        run = int(line)
        pid = os.fork()
        if pid == 0:
            try:
                writer(run)
            finally:
                os._exit(1)
        sys.stdout.write(f"{pid}\\n")
        sys.stdout.flush()
    """
)


def _export(path: Path, prefix: str, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    profiles = []
    names = []
    for j in range(n):
        u = [Utterance(rng.standard_normal(192).astype(np.float32), 1.0, "imp") for _ in range(4)]
        names.append(f"{prefix}{j}")
        profiles.append(
            Profile(
                id=f"{seed:08x}{j:024x}",
                name=names[-1],
                fingerprint="fp",
                model_name="m",
                centroid=centroid([x.embedding for x in u]),
                utterances=tuple(u),
                created=1.0,
                updated=1.0,
            )
        )
    from voiceid.profiles.store import _profile_to_json

    doc = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "profiles": [_profile_to_json(p) for p in profiles],
    }
    path.write_text(json.dumps(doc))
    return names


def _check_store(db: Path, key: TemplateKey | None) -> set[str]:
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()
    with ProfileStore.open(db, key=key) as s:
        assert s.integrity_check() == "ok"  # includes authenticating every encrypted blob
        for summary in s.list():
            p = s.get(summary.id)
            assert len(p.utterances) in (3, 4), p.name
            assert np.allclose(p.centroid, centroid([u.embedding for u in p.utterances]))
        return {p.name for p in s.list()}


@needs_crypto
@pytest.mark.slow
def test_kill_9_writers_100_times(tmp_path: Path) -> None:
    db = tmp_path / "crash" / "profiles.db"
    db.parent.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    imports = tmp_path / "imports"
    imports.mkdir()
    batches = [set(_export(imports / f"{k}.json", f"imp{k}-", 5, 100 + k)) for k in range(4)]
    script = tmp_path / "fork_server.py"
    script.write_text(_FORK_SERVER)
    server = subprocess.Popen(
        [sys.executable, str(script), str(db), str(logs), str(imports)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    rng = random.Random(99)
    t0 = time.monotonic()
    kills = mid_write = 0
    try:
        assert server.stdout.readline() == "ready\n"
        for run in range(100):
            server.stdin.write(f"{run}\n")
            server.stdin.flush()
            pid = int(server.stdout.readline())
            time.sleep(rng.uniform(0.01, 0.09))
            os.kill(pid, signal.SIGKILL)  # the server reaps it (SIGCHLD ignored)
            kills += 1
            log = logs / f"{run}.log"
            last = log.read_text().splitlines()[-1:] if log.exists() else []
            if last and last[0].split()[0].endswith("ing"):
                mid_write += 1
    finally:
        server.stdin.close()
        server.wait(10)
    elapsed = time.monotonic() - t0

    added: set[str] = set()
    deleting: set[str] = set()
    deleted: set[str] = set()
    imported_runs = 0
    for log in logs.iterdir():
        for line in log.read_text().splitlines():
            verb, _, name = line.partition(" ")
            if verb == "added":
                added.add(name)
            elif verb == "deleting":
                deleting.add(name)
            elif verb == "deleted":
                deleted.add(name)
            elif verb == "imported":
                imported_runs += 1
    present = _check_store(db, TemplateKey(bytes(range(32))))
    assert kills == 100
    assert len(added) > 100, "the writers never got going"
    assert mid_write >= 30, f"only {mid_write} kills hit a write in progress"
    missing = (added - deleting) - present
    assert not missing, f"committed profiles lost: {sorted(missing)[:5]}"
    assert not (deleted & present), "deleted profiles came back"
    for batch in batches:  # each import is all or nothing
        assert batch <= present or not (batch & present), sorted(batch & present)
    assert imported_runs > 0
    print(
        f"{kills} kills ({mid_write} during a write), {len(added)} adds, {imported_runs} imports,"
        f" {len(deleted)} deletes in {elapsed:.1f}s; {len(present)} profiles intact"
    )


@pytest.mark.slow
def test_kill_9_voiceid_profiles_import(tmp_path: Path) -> None:
    """The real CLI process (`voiceid profiles import` of 1,500 profiles, one transaction)
    killed at 5 points of its run: afterwards all of the file's profiles are there, or none."""
    if not VOICEID.exists():
        pytest.skip(f"no voiceid entry point next to {sys.executable}")
    db = tmp_path / "cli.db"
    ProfileStore.open(db).close()
    files = []
    for k in range(6):
        path = tmp_path / f"e{k}.json"
        files.append((path, set(_export(path, f"cli{k}-", 1500, 500 + k))))
    t0 = time.monotonic()
    done = subprocess.run([str(VOICEID), "--db", str(db), "profiles", "import", str(files[0][0])])
    duration = time.monotonic() - t0
    assert done.returncode == 0
    outcomes = []
    committed = 0
    # kill at 35 %, 50 %, ... 95 % of an unkilled run: start-up, parsing, writing, commit
    for fraction, (path, names) in zip((0.35, 0.5, 0.65, 0.8, 0.95), files[1:], strict=True):
        proc = subprocess.Popen(
            [str(VOICEID), "--db", str(db), "profiles", "import", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(fraction * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        outcomes.append(proc.returncode)
        present = _check_store(db, None)
        assert names <= present or not (names & present)
        committed += names <= present
    assert all(code in (0, -signal.SIGKILL) for code in outcomes)
    print(
        f"voiceid profiles import ({duration:.2f} s unkilled): {len(outcomes)} kills, "
        f"{committed} imports committed whole, {len(outcomes) - committed} left nothing"
    )
