"""``voiceid demo``: enroll speakers from real speech, identify others, stream a conversation.

Offline once the model is cached. Uses a throw-away profiles DB unless ``--db`` is given.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from voiceid.app import App
from voiceid.audio.io import load_audio
from voiceid.cli.embed import add_model_args
from voiceid.config import Settings
from voiceid.errors import AudioError
from voiceid.frontend import make_frontend
from voiceid.profiles.enroll import EnrollmentPolicy, EnrollmentSession
from voiceid.profiles.scoring import identify
from voiceid.runtime.daemon import stream_config
from voiceid.stream.pipeline import run_file

AUDIO_CANDIDATES = ("../shared/audio/librispeech-test-other", "shared/audio/librispeech-test-other")


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="enroll speakers from a speech folder, identify, stream")
    p.add_argument(
        "--audio",
        type=Path,
        default=None,
        help="folder of SPEAKER/*.flac|wav (default: ../shared/audio/...)",
    )
    p.add_argument("--speakers", type=int, default=3, help="how many speakers to enroll")
    p.add_argument("--enroll-utts", type=int, default=3, help="utterances per enrollment")
    add_model_args(p)
    p.set_defaults(func=cmd_demo, model="resemblyzer-ge2e")


def find_audio(given: Path | None) -> Path:
    if given is not None:
        if not given.is_dir():
            raise AudioError(f"audio folder {given} does not exist")
        return given
    here = Path(__file__).resolve()
    roots = [Path.cwd(), *here.parents]
    for root in roots:
        for cand in AUDIO_CANDIDATES:
            if (root / cand).is_dir():
                return root / cand
    raise AudioError(
        "no speech folder found (looked for ../shared/audio/librispeech-test-other)",
        hint="pass --audio DIR with one sub-folder of recordings per speaker",
    )


def speaker_files(root: Path) -> dict[str, list[Path]]:
    exts = {".flac", ".wav", ".ogg", ".mp3"}
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in exts)
        if files:
            out[d.name] = files
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    root = find_audio(args.audio)
    spk = speaker_files(root)
    need = args.enroll_utts + 2
    usable = [s for s, f in spk.items() if len(f) >= need]
    if len(usable) < args.speakers + 1:
        raise AudioError(f"{root} needs {args.speakers + 1} speakers with ≥ {need} files each")
    enrolled, stranger = usable[: args.speakers], usable[args.speakers]
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "demo.db"
        app = App.open(args.model, db=db, device=args.device, threads=args.threads)
        try:
            return _demo(app, spk, enrolled, stranger, args.enroll_utts)
        finally:
            app.close()


def _demo(
    app: App, spk: dict[str, list[Path]], enrolled: list[str], stranger: str, n_enroll: int
) -> int:
    emb = app.embedder
    rate = emb.sample_rate
    threshold = app.threshold()
    print(f"model {app.model_name} ({emb.model.provider}), threshold {threshold:.2f}")
    print(f"\n1. enrollment ({n_enroll} utterances each)")
    policy = EnrollmentPolicy(min_utterances=n_enroll, min_total_speech_s=3.0 * n_enroll)
    for name in enrolled:
        session = EnrollmentSession.start(
            f"speaker-{name}", app.store, emb, threshold=threshold, policy=policy, replace=True
        )
        for f in spk[name][:n_enroll]:
            res = session.add_audio(load_audio(f, rate), source=f.name)
            codes = ",".join(str(c) for c in res.feedback)
            print(
                f"   speaker-{name} <- {f.name}: {codes:12} speech {res.speech_s:4.1f} s  "
                f"progress {res.progress.percent:3d} %"
            )
        session.finish()
    index = app.index()

    print("\n2. identification of held-out utterances")
    right = total = 0
    for name in [*enrolled, stranger]:
        for f in spk[name][n_enroll : n_enroll + 2]:
            result = identify(
                index, emb.embed(load_audio(f, rate), where=f.name), threshold=threshold, top_k=1
            )
            truth = f"speaker-{name}" if name in enrolled else None
            ok = result.decision == truth
            right += ok
            total += 1
            best = result.matches[0]
            print(
                f"   {f.name:24} -> {result.decision or 'unknown':16} "
                f"(best {best.name} {best.score:.3f})  {'ok' if ok else 'WRONG'}"
            )
    print(f"   {right}/{total} correct")

    print("\n3. streaming a conversation (A, B, unenrolled, A; 1 s pauses)")
    a, b = enrolled[0], enrolled[1]
    parts = [
        (f"speaker-{a}", spk[a][n_enroll + 2 if len(spk[a]) > n_enroll + 2 else -1]),
        (f"speaker-{b}", spk[b][-1]),
        ("unknown", spk[stranger][-1]),
        (f"speaker-{a}", spk[a][-1]),
    ]
    pause = np.zeros(rate, np.float32)
    chunks, t = [], 0.0
    for who, f in parts:
        x = load_audio(f, rate)
        print(f"   truth {t:6.2f}-{t + len(x) / rate:6.2f} s  {who}")
        chunks += [x, pause]
        t += (len(x) + len(pause)) / rate
    settings = Settings()
    stream_threshold = app.stream_threshold()
    print(f"   (streaming decisions on 1-2 s windows: threshold {stream_threshold:.2f})")
    events = run_file(
        np.concatenate(chunks),
        make_frontend(emb.card.frontend),
        emb.embed_features,
        index,
        stream_config(settings, stream_threshold),
        stream="demo",
    )
    for e in events:
        d = e.to_dict()
        if d["type"] == "scores":
            continue
        who = d.get("name") or ("unknown" if d["type"] == "unknown_speaker" else "")
        print(f"   event {d['stream_time_s']:6.2f} s  {d['type']:16} {who}")
    return 0
