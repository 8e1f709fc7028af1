"""``voiceid enroll|verify|identify|profiles|threshold``: enrolled speakers from the shell.

Exit codes (docs/cli.md): 0 success (verify: accepted, identify: someone identified),
1 verify rejected / identify found nobody above the threshold, 2 usage, 3 audio,
4 model, 5 profile, 6 profile database. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from voiceid.app import App
from voiceid.audio.io import load_audio
from voiceid.cli.embed import add_model_args
from voiceid.cli.output import print_json, print_table
from voiceid.errors import AudioError, ConfigError, ModelError
from voiceid.models import registry
from voiceid.models.registry import DEFAULT_MODEL
from voiceid.profiles.enroll import ADVICE, AddResult, EnrollmentPolicy, EnrollmentSession
from voiceid.profiles.model import Profile, ProfileSummary
from voiceid.profiles.scoring import (
    Verification,
    identify,
    require_profiles,
    require_same_model,
    score,
)
from voiceid.profiles.store import ProfileStore
from voiceid.security.templates import env_profile_key

_DEFAULTS = EnrollmentPolicy()


def register(sub: Any) -> None:
    _register_enroll(sub)
    _register_scoring(sub)
    _register_profiles(sub)
    _register_threshold(sub)


def _register_enroll(sub: Any) -> None:
    p = sub.add_parser(
        "enroll",
        help="enroll a speaker from recordings (committed only when complete)",
        description="Enroll NAME from the files, in order. Each file is judged (speech "
        "length, level, clipping, consistency with the previous ones) and counted or "
        "rejected; the profile is written only when the policy is met, else nothing is.",
    )
    p.add_argument("name")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--replace", action="store_true", help="re-enroll an existing profile")
    p.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="profile metadata (repeatable)",
    )
    p.add_argument(
        "--min-utterances",
        type=int,
        default=None,
        help=f"accepted utterances needed (default {_DEFAULTS.min_utterances})",
    )
    p.add_argument(
        "--min-speech",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"seconds of speech needed in all (default {_DEFAULTS.min_total_speech_s:g})",
    )
    add_model_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_enroll)


def _register_scoring(sub: Any) -> None:
    v = sub.add_parser("verify", help="is this recording NAME? (exit 0 accepted, 1 rejected)")
    v.add_argument("name")
    v.add_argument("file")
    v.add_argument(
        "--threshold", type=float, default=None, help="cosine threshold (default: stored/model)"
    )
    add_model_args(v)
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    i = sub.add_parser("identify", help="who is speaking? best matches among the enrolled profiles")
    i.add_argument("file")
    i.add_argument("--top-k", type=int, default=5, help="how many matches to show (default 5)")
    i.add_argument(
        "--threshold", type=float, default=None, help="cosine threshold (default: stored/model)"
    )
    add_model_args(i)
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_identify)


def _register_profiles(sub: Any) -> None:
    p = sub.add_parser("profiles", help="list, show, delete, export and import profiles")
    psub = p.add_subparsers(dest="profiles_command", metavar="ACTION", required=True)
    ls = psub.add_parser("list", help="enrolled profiles")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    sh = psub.add_parser("show", help="one profile's details (no vectors unless --vectors)")
    sh.add_argument("name")
    sh.add_argument("--json", action="store_true")
    sh.add_argument("--vectors", action="store_true", help="with --json: include embeddings")
    sh.set_defaults(func=cmd_show)
    de = psub.add_parser("delete", help="delete a profile (its embeddings are overwritten)")
    de.add_argument("name")
    de.add_argument("--json", action="store_true")
    de.set_defaults(func=cmd_delete)
    ex = psub.add_parser("export", help="write profiles to a JSON file (biometric data!)")
    ex.add_argument("file")
    ex.add_argument("names", nargs="*", metavar="NAME", help="only these (default: all)")
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=cmd_export)
    im = psub.add_parser("import", help="read profiles from an export file (all or nothing)")
    im.add_argument("file")
    im.add_argument("--replace", action="store_true", help="replace profiles of the same name")
    im.add_argument("--json", action="store_true")
    im.set_defaults(func=cmd_import)


def _register_threshold(sub: Any) -> None:
    t = sub.add_parser("threshold", help="the decision threshold stored per model")
    tsub = t.add_subparsers(dest="threshold_command", metavar="ACTION", required=True)
    sh = tsub.add_parser("show", help="the threshold in use for a model, and where it is from")
    sh.add_argument("--model", default=DEFAULT_MODEL, help=f"model (default {DEFAULT_MODEL})")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=cmd_threshold_show)
    st = tsub.add_parser("set", help="store a threshold for a model (in the profiles DB)")
    st.add_argument("value", type=float, help="cosine in [-1, 1]")
    st.add_argument("--model", default=DEFAULT_MODEL, help=f"model (default {DEFAULT_MODEL})")
    st.add_argument("--source", default="", help="how it was obtained (free text)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_threshold_set)


# ----------------------------------------------------------------------- helpers


@contextmanager
def _app(args: argparse.Namespace) -> Iterator[App]:
    app = App.open(
        args.model, db=args.db, device=args.device, threads=args.threads, key=env_profile_key()
    )
    try:
        yield app
    finally:
        app.close()


@contextmanager
def _store(args: argparse.Namespace) -> Iterator[ProfileStore]:
    with ProfileStore.open(args.db, key=env_profile_key()) as store:
        yield store


def _check_threshold(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and -1.0 <= value <= 1.0):
        raise ConfigError(f"--threshold must be a cosine in [-1, 1], got {value}")
    return value


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _metadata(pairs: list[str]) -> dict[str, str] | None:
    if not pairs:
        return None
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--meta wants KEY=VALUE, got {pair!r}")
        out[key.strip()] = value
    return out


def _policy(args: argparse.Namespace) -> EnrollmentPolicy:
    kwargs: dict[str, Any] = {}
    if args.min_utterances is not None:
        if args.min_utterances < 1:
            raise ConfigError(f"--min-utterances must be >= 1, got {args.min_utterances}")
        kwargs["min_utterances"] = args.min_utterances
    if args.min_speech is not None:
        if not (math.isfinite(args.min_speech) and args.min_speech >= 0):
            raise ConfigError(f"--min-speech must be >= 0 seconds, got {args.min_speech}")
        kwargs["min_total_speech_s"] = args.min_speech
    return EnrollmentPolicy(**kwargs)


def model_fingerprint(name: str) -> str:
    """The fingerprint of a model without loading it (its file is hashed if unpinned)."""
    card = registry.card(name)
    try:
        return registry.resolve(name, fetch=False).fingerprint
    except ModelError:
        if card.sha256:
            return card.fingerprint()
        raise
    except OSError as exc:  # an unreadable cache (permissions)
        if card.sha256:
            return card.fingerprint()
        raise ModelError(
            f"cannot read the model file of {name!r}: {exc.strerror or exc}",
            hint="check the permissions of the model cache",
        ) from None


def profile_dict(p: Profile | ProfileSummary) -> dict[str, Any]:
    """What `profiles list/show --json` print (never vectors)."""
    if isinstance(p, Profile):
        n, speech = len(p.utterances), p.speech_s
    else:
        n, speech = p.n_utterances, p.speech_s
    return {
        "id": p.id,
        "name": p.name,
        "model": p.model_name,
        "fingerprint": p.fingerprint,
        "utterances": n,
        "speech_s": round(speech, 2),
        "created": round(p.created, 3),
        "updated": round(p.updated, 3),
        "metadata": dict(p.metadata),
    }


def _vec(v: Any) -> list[float]:
    return [round(float(x), 7) for x in v]


# ------------------------------------------------------------------------ enroll


def _feedback_line(i: int, total: int, source: str, r: AddResult) -> str:
    codes = ",".join(str(f) for f in r.feedback)
    level = "" if r.level_dbfs is None else f"  level {r.level_dbfs:6.1f} dBFS"
    cons = "" if r.consistency is None else f"  consistency {r.consistency:.3f}"
    pr = r.progress
    line = (
        f"[{i}/{total}] {source}: {codes}  speech {r.speech_s:.1f} s{level}{cons}  -> "
        f"{pr.collected_s:.1f}/{pr.required_s:g} s, {pr.utterances}/"
        f"{pr.required_utterances} utterances, {pr.percent}%"
    )
    if not r.accepted:
        line += "  (" + "; ".join(ADVICE[f] for f in r.feedback) + ")"
    return line


def cmd_enroll(args: argparse.Namespace) -> int:
    policy = _policy(args)
    metadata = _metadata(args.meta)
    with _app(args) as app:
        session = EnrollmentSession.start(
            args.name,
            app.store,
            app.embedder,
            threshold=app.threshold(),
            policy=policy,
            replace=args.replace,
        )
        rate = app.embedder.sample_rate
        # Read every file first: an unreadable one fails before any work is done.
        clips = [(f, load_audio(f, rate)) for f in args.files]
        if not args.json:
            print(
                f"enrolling {session.name!r} with {app.model_name}: needs "
                f"{policy.min_utterances} accepted utterances and "
                f"{policy.min_total_speech_s:g} s of speech"
            )
        results: list[dict[str, Any]] = []
        for i, (path, samples) in enumerate(clips, 1):
            source = Path(path).name
            r = session.add_audio(samples, source=source)
            results.append({"file": str(path), **r.as_dict()})
            if not args.json:
                print(_feedback_line(i, len(clips), source, r))
        prog = session.progress()
        profile = session.finish(metadata) if prog.complete else None
        if profile is None:
            session.cancel()
        if args.json:
            print_json(
                {
                    "name": session.name,
                    "model": app.model_name,
                    "committed": profile is not None,
                    "utterances": results,
                    "progress": results[-1]["progress"] if results else None,
                    "profile": None if profile is None else profile_dict(profile),
                }
            )
        if profile is None:
            rejected = sum(1 for r in results if not r["accepted"])
            hint = "add more recordings of the same person: longer sentences, in a quiet room"
            if any("inconsistent" in r["feedback"] for r in results):
                hint += (
                    "; if every file after the first is 'inconsistent', the first may be the "
                    "odd one: put another file first"
                )
            raise AudioError(
                f"enrollment of {session.name!r} is incomplete: {prog.utterances}/"
                f"{prog.required_utterances} utterances and {prog.collected_s:.1f}/"
                f"{prog.required_s:g} s of speech accepted ({rejected} of {len(results)} "
                f"files rejected); it still needs {prog.missing()}; nothing was written",
                hint=hint,
            )
        if not args.json:
            verb = "re-enrolled" if args.replace else "enrolled"
            print(
                f"{verb} {profile.name!r}: {len(profile.utterances)} utterances, "
                f"{profile.speech_s:.1f} s of speech, model {profile.model_name} "
                f"(id {profile.id})"
            )
    return 0


# ------------------------------------------------------------- verify / identify


def cmd_verify(args: argparse.Namespace) -> int:
    threshold_arg = _check_threshold(args.threshold)
    with _app(args) as app:
        profile = app.store.get(args.name)
        require_same_model(profile, app.fingerprint, app.model_name)
        threshold = app.threshold(threshold_arg)
        samples = load_audio(args.file, app.embedder.sample_rate)
        emb = app.embedder.embed(samples, where=args.file)
        s = score(profile, emb)
        result = Verification(profile.name, s, threshold, s >= threshold)
    if args.json:
        print_json(result.as_dict())
    else:
        verdict = "accepted" if result.accepted else "rejected"
        print(f"{result.name}: score {s:.4f} (threshold {threshold:.2f}): {verdict}")
    return 0 if result.accepted else 1


def cmd_identify(args: argparse.Namespace) -> int:
    threshold_arg = _check_threshold(args.threshold)
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    with _app(args) as app:
        index = app.index()
        require_profiles(index)
        threshold = app.threshold(threshold_arg)
        samples = load_audio(args.file, app.embedder.sample_rate)
        emb = app.embedder.embed(samples, where=args.file)
        result = identify(index, emb, threshold=threshold, top_k=args.top_k)
    if args.json:
        print_json(result.as_dict())
    else:
        who = result.decision if result.decision is not None else "unknown speaker"
        print(f"{who} (threshold {threshold:.2f})")
        print_table(
            ["rank", "name", "score"],
            [[i, m.name, f"{m.score:.4f}"] for i, m in enumerate(result.matches, 1)],
        )
    return 0 if result.decision is not None else 1


# ---------------------------------------------------------------------- profiles


def cmd_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        profiles = store.list()
    if args.json:
        print_json([profile_dict(p) for p in profiles])
    elif not profiles:
        print("no profiles enrolled (voiceid enroll NAME FILE...)")
    else:
        print_table(
            ["name", "model", "utterances", "speech", "updated"],
            [
                [p.name, p.model_name, p.n_utterances, f"{p.speech_s:.1f} s", _when(p.updated)]
                for p in profiles
            ],
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    if args.vectors and not args.json:
        raise ConfigError("--vectors needs --json (vectors are never printed as text)")
    with _store(args) as store:
        p = store.get(args.name)
    if args.json:
        out = profile_dict(p)
        out["utterance_list"] = [
            {"source": u.source, "speech_s": round(u.speech_s, 2)} for u in p.utterances
        ]
        if args.vectors:
            out["dim"] = p.dim
            out["centroid"] = _vec(p.centroid)
            for item, u in zip(out["utterance_list"], p.utterances, strict=True):
                item["embedding"] = _vec(u.embedding)
        print_json(out)
        return 0
    print(f"name:       {p.name}")
    print(f"id:         {p.id}")
    print(f"model:      {p.model_name} (fingerprint {p.fingerprint})")
    print(f"utterances: {len(p.utterances)}")
    print(f"speech:     {p.speech_s:.1f} s")
    print(f"created:    {_when(p.created)}")
    print(f"updated:    {_when(p.updated)}")
    meta = ", ".join(f"{k}={v}" for k, v in sorted(p.metadata.items()))
    print(f"metadata:   {meta or '-'}")
    for i, u in enumerate(p.utterances, 1):
        print(f"  {i}. {u.source or '-'}: {u.speech_s:.1f} s of speech")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _store(args) as store:
        name = store.delete(args.name)
    if args.json:
        print_json({"deleted": name})
    else:
        print(f"deleted {name!r}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with _store(args) as store:
        names = store.export_json(args.file, args.names or None)
    if args.json:
        print_json({"file": str(args.file), "profiles": names})
    else:
        print(
            f"exported {len(names)} profile{'s' if len(names) != 1 else ''} to {args.file} "
            "(speaker embeddings are biometric data: keep the file private)"
        )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    with _store(args) as store:
        names = store.import_json(args.file, replace=args.replace)
    if args.json:
        print_json({"file": str(args.file), "profiles": names})
    else:
        shown = ", ".join(names) if names else "none"
        print(f"imported {len(names)} profile{'s' if len(names) != 1 else ''}: {shown}")
    return 0


# --------------------------------------------------------------------- threshold


def cmd_threshold_show(args: argparse.Namespace) -> int:
    card = registry.card(args.model)
    fingerprint = model_fingerprint(args.model)
    with _store(args) as store:
        stored = store.get_threshold(fingerprint)
    out = {
        "model": card.name,
        "fingerprint": fingerprint,
        "threshold": stored if stored is not None else card.threshold,
        "source": "database" if stored is not None else "model card",
        "card_threshold": card.threshold,
        "card_source": card.threshold_source,
    }
    if args.json:
        print_json(out)
    else:
        print(f"{card.name}: threshold {out['threshold']:.4f} ({out['source']})")
        if stored is not None:
            print(f"model card default: {card.threshold:.4f}")
        if card.threshold_source:
            print(f"card: {card.threshold_source}")
    return 0


def cmd_threshold_set(args: argparse.Namespace) -> int:
    value = float(args.value)
    if not (math.isfinite(value) and -1.0 <= value <= 1.0):
        raise ConfigError(f"threshold must be a cosine in [-1, 1], got {args.value}")
    card = registry.card(args.model)
    fingerprint = model_fingerprint(args.model)
    with _store(args) as store:
        store.set_threshold(fingerprint, value, args.source)
    if args.json:
        print_json(
            {
                "model": card.name,
                "fingerprint": fingerprint,
                "threshold": value,
                "source": args.source,
            }
        )
    else:
        print(f"{card.name}: threshold set to {value:.4f} (fingerprint {fingerprint})")
    return 0
