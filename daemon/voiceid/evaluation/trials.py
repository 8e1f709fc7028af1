"""Trials for an evaluation: which enrollment is scored against which test file.

Two sources:

* A folder of speakers, ``ROOT/SPEAKER/*.{wav,flac,ogg,mp3}``. Files sorted by name;
  each speaker's first ``N`` files (``--enroll-utts N``) are averaged into its
  enrollment (centroid), the rest are its test files. Every enrollment is scored
  against every test file: same speaker = target, other speaker = non-target.
  Speakers with ``N`` files or fewer cannot be both enrolled and tested: their files
  become test files of an unenrolled speaker (non-target trials only).
* A trial list, VoxCeleb style: one trial per line ``LABEL ENROLL TEST`` where LABEL is
  ``1``/``0`` (or ``target``/``nontarget``, ``tgt``/``imp``, ``true``/``false``), and
  ENROLL/TEST are paths relative to the audio root (default: the list's folder). An
  ENROLL that is a folder enrolls all its audio files, averaged. ``#`` starts a comment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from voiceid.errors import AudioError, ConfigError

AUDIO_EXTS = frozenset({".wav", ".flac", ".ogg", ".mp3"})

_LABELS = {
    "1": True, "target": True, "tgt": True, "true": True, "t": True,
    "0": False, "nontarget": False, "non-target": False, "imp": False, "impostor": False,
    "false": False, "f": False,
}  # fmt: skip


def audio_files(folder: Path) -> list[Path]:
    """Audio files directly in ``folder``, sorted by name."""
    return sorted(
        (f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in AUDIO_EXTS),
        key=lambda f: f.name,
    )


def _split(names: str | Sequence[str] | None) -> list[str] | None:
    if names is None:
        return None
    items = names.split(",") if isinstance(names, str) else list(names)
    return [s.strip() for s in items if s.strip()]


def speaker_dirs(
    root: str | Path,
    *,
    speakers: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> dict[str, list[Path]]:
    """``{speaker: sorted audio files}`` of ``root/SPEAKER/``, optionally only ``speakers``
    or without ``exclude`` (names or comma-separated strings)."""
    base = Path(root)
    if not base.is_dir():
        raise AudioError(f"{base} is not a folder", hint="pass ROOT with one folder per speaker")
    found = {d.name: audio_files(d) for d in sorted(base.iterdir()) if d.is_dir()}
    found = {k: v for k, v in found.items() if v}
    if not found:
        raise AudioError(
            f"no speaker folders with audio under {base}",
            hint=f"expected {base}/SPEAKER/*.wav|flac|ogg|mp3",
        )
    want, drop = _split(speakers), _split(exclude) or []
    for name in [*(want or []), *drop]:
        if name not in found:
            raise ConfigError(
                f"no speaker folder {name!r} with audio under {base}",
                hint=f"speakers there: {', '.join(found)}",
            )
    keep = want if want is not None else list(found)
    return {k: found[k] for k in keep if k not in drop}


@dataclass(frozen=True)
class Enrollment:
    """One enrolled model: the centroid of ``files``' embeddings."""

    id: str
    files: tuple[Path, ...]
    speaker: str | None = None


@dataclass(frozen=True)
class TestFile:
    path: Path
    speaker: str | None = None


@dataclass(frozen=True)
class TrialSet:
    """Trials ``(enrollments[enroll_idx[i]], tests[test_idx[i]])`` labelled ``target[i]``."""

    source: str
    kind: Literal["directory", "trial-list"]
    enrollments: list[Enrollment]
    tests: list[TestFile]
    enroll_idx: NDArray[np.int64]
    test_idx: NDArray[np.int64]
    target: NDArray[np.bool_]
    enroll_utts: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_target(self) -> int:
        return int(self.target.sum())

    @property
    def n_nontarget(self) -> int:
        return int((~self.target).sum())

    @property
    def speakers(self) -> list[str]:
        """Speakers named by the set (directory mode), sorted."""
        names = {e.speaker for e in self.enrollments} | {t.speaker for t in self.tests}
        return sorted(n for n in names if n is not None)

    def files(self) -> list[Path]:
        """Every audio file the trials need, once each, enrollment files first."""
        seen: dict[Path, None] = {}
        for e in self.enrollments:
            seen.update(dict.fromkeys(e.files))
        seen.update(dict.fromkeys(t.path for t in self.tests))
        return list(seen)

    def without(self, bad: Iterable[Path]) -> TrialSet:
        """The set with ``bad`` files removed (e.g. no speech): their test trials go, the
        enrollments lose them, enrollments left with no file go with their trials."""
        drop = set(bad)
        if not drop:
            return self
        e_map: dict[int, int] = {}
        enrollments: list[Enrollment] = []
        for i, e in enumerate(self.enrollments):
            files = tuple(f for f in e.files if f not in drop)
            if files:
                e_map[i] = len(enrollments)
                enrollments.append(replace(e, files=files))
        t_map: dict[int, int] = {}
        tests: list[TestFile] = []
        for i, t in enumerate(self.tests):
            if t.path not in drop:
                t_map[i] = len(tests)
                tests.append(t)
        keep = np.array(
            [
                int(e) in e_map and int(t) in t_map
                for e, t in zip(self.enroll_idx, self.test_idx, strict=True)
            ],
            dtype=bool,
        )
        e_idx = np.array([e_map[int(e)] for e in self.enroll_idx[keep]], dtype=np.int64)
        t_idx = np.array([t_map[int(t)] for t in self.test_idx[keep]], dtype=np.int64)
        return replace(
            self,
            enrollments=enrollments,
            tests=tests,
            enroll_idx=e_idx,
            test_idx=t_idx,
            target=self.target[keep],
        )


def from_directory(
    root: str | Path,
    enroll_utts: int,
    *,
    speakers: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> TrialSet:
    """Every enrollment x every test file of a speaker folder (see the module doc)."""
    if enroll_utts < 1:
        raise ConfigError(f"--enroll-utts must be >= 1, got {enroll_utts}")
    spk = speaker_dirs(root, speakers=speakers, exclude=exclude)
    enrollments: list[Enrollment] = []
    tests: list[TestFile] = []
    notes: list[str] = []
    for name, files in spk.items():
        if len(files) > enroll_utts:
            enrollments.append(Enrollment(name, tuple(files[:enroll_utts]), name))
            tests += [TestFile(f, name) for f in files[enroll_utts:]]
        else:
            tests += [TestFile(f, name) for f in files]
            notes.append(
                f"speaker {name}: {len(files)} files, not more than --enroll-utts "
                f"{enroll_utts}: used as an unenrolled speaker"
            )
    if not enrollments:
        raise AudioError(
            f"no speaker under {root} has more than {enroll_utts} files",
            hint="lower --enroll-utts or add recordings",
        )
    if not tests:
        raise AudioError(f"no test files under {root}", hint="lower --enroll-utts")
    e_idx, t_idx = np.meshgrid(
        np.arange(len(enrollments), dtype=np.int64),
        np.arange(len(tests), dtype=np.int64),
        indexing="ij",
    )
    e_spk = np.array([e.speaker for e in enrollments], dtype=object)
    t_spk = np.array([t.speaker for t in tests], dtype=object)
    target = np.asarray(e_spk[e_idx.ravel()] == t_spk[t_idx.ravel()], dtype=bool)
    return TrialSet(
        source=str(root),
        kind="directory",
        enrollments=enrollments,
        tests=tests,
        enroll_idx=e_idx.ravel(),
        test_idx=t_idx.ravel(),
        target=target,
        enroll_utts=enroll_utts,
        notes=notes,
    )


def from_trial_list(path: str | Path, audio_root: str | Path | None = None) -> TrialSet:
    """Trials of a ``LABEL ENROLL TEST`` list (see the module doc)."""
    p = Path(path)
    root = Path(audio_root) if audio_root is not None else p.parent
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read trial list {p}: {exc}") from None
    enroll_of: dict[str, int] = {}
    test_of: dict[Path, int] = {}
    enrollments: list[Enrollment] = []
    tests: list[TestFile] = []
    e_idx: list[int] = []
    t_idx: list[int] = []
    labels: list[bool] = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3 or parts[0].lower() not in _LABELS:
            raise ConfigError(
                f"{p}:{no}: expected 'LABEL ENROLL TEST', got {raw.strip()!r}",
                hint="LABEL is 1 (target) or 0 (non-target), e.g. '1 spk1/a.wav spk1/b.wav'",
            )
        label, enroll, test = _LABELS[parts[0].lower()], parts[1], parts[2]
        if enroll not in enroll_of:
            enroll_of[enroll] = len(enrollments)
            enrollments.append(Enrollment(enroll, _enroll_files(root / enroll, p, no)))
        tp = root / test
        if tp not in test_of:
            if not tp.is_file():
                raise AudioError(
                    f"{p}:{no}: test file {tp} not found",
                    hint="paths are relative to --audio-root (default: the list's folder)",
                )
            test_of[tp] = len(tests)
            tests.append(TestFile(tp))
        e_idx.append(enroll_of[enroll])
        t_idx.append(test_of[tp])
        labels.append(label)
    if not labels:
        raise ConfigError(f"trial list {p} holds no trials")
    return TrialSet(
        source=str(p),
        kind="trial-list",
        enrollments=enrollments,
        tests=tests,
        enroll_idx=np.asarray(e_idx, dtype=np.int64),
        test_idx=np.asarray(t_idx, dtype=np.int64),
        target=np.asarray(labels, dtype=bool),
    )


def _enroll_files(path: Path, listing: Path, no: int) -> tuple[Path, ...]:
    if path.is_dir():
        files = audio_files(path)
        if not files:
            raise AudioError(f"{listing}:{no}: enrollment folder {path} holds no audio files")
        return tuple(files)
    if not path.is_file():
        raise AudioError(
            f"{listing}:{no}: enrollment {path} not found",
            hint="paths are relative to --audio-root (default: the list's folder)",
        )
    return (path,)


def load_trials(
    source: str | Path,
    *,
    enroll_utts: int,
    speakers: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    audio_root: str | Path | None = None,
) -> TrialSet:
    """A folder of speakers or a trial-list file."""
    p = Path(source)
    if p.is_dir():
        if audio_root is not None:
            raise ConfigError("--audio-root applies to trial lists, not to a folder")
        return from_directory(p, enroll_utts, speakers=speakers, exclude=exclude)
    if p.is_file():
        if speakers is not None or exclude is not None:
            raise ConfigError("--speakers/--exclude-speakers apply to a folder, not a trial list")
        return from_trial_list(p, audio_root)
    raise AudioError(
        f"{p} does not exist",
        hint="pass a folder ROOT/SPEAKER/*.flac or a trial list 'LABEL ENROLL TEST'",
    )
