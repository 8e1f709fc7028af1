"""``voiceid eval`` (EER, minDCF, DET plot, thresholds; offline and streaming) and
``voiceid cohort build`` (AS-norm cohort files). See docs/evaluation.md."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from voiceid.cli.embed import add_model_args, load_embedder
from voiceid.cli.output import print_json
from voiceid.errors import ConfigError, ProfileError
from voiceid.evaluation import metrics
from voiceid.evaluation.cache import Embedded, EmbeddingCache, default_root, embed_files
from voiceid.evaluation.trials import TrialSet, load_trials, speaker_dirs
from voiceid.models.embedder import Embedder
from voiceid.profiles.asnorm import (
    ASNormScorer,
    Cohort,
    check_cohort,
    read_cohort,
    save_cohort,
    speaker_means,
)
from voiceid.profiles.index import ProfileIndex
from voiceid.profiles.model import centroid
from voiceid.stream.pipeline import Scorer

P_TARGETS = (0.01, 0.05)
_CHUNK_CELLS = 4_000_000  # score-matrix cells per chunk (16 MB of float32)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="measure EER, minDCF, thresholds (and streaming decisions) on labelled speech",
        description=(
            "Evaluate speaker verification on a folder ROOT/SPEAKER/*.wav|flac|ogg|mp3 "
            "(first --enroll-utts files of each speaker enroll, the rest test) or on a "
            "trial list of 'LABEL ENROLL TEST' lines. Embeddings are cached per file."
        ),
    )
    p.add_argument("source", metavar="DIR|TRIALS", help="speaker folder or trial list")
    add_model_args(p)
    p.add_argument(
        "--enroll-utts",
        type=int,
        default=3,
        metavar="N",
        help="utterances averaged per enrollment (folder input; default 3)",
    )
    p.add_argument("--speakers", metavar="A,B,...", help="only these speaker folders")
    p.add_argument("--exclude-speakers", metavar="A,B,...", help="leave these speakers out")
    p.add_argument(
        "--audio-root",
        type=Path,
        default=None,
        help="trial list paths are relative to this (default: the list's folder)",
    )
    p.add_argument(
        "--norm",
        choices=["none", "asnorm"],
        default="none",
        help="score normalisation (asnorm needs --cohort)",
    )
    p.add_argument(
        "--cohort",
        type=Path,
        default=None,
        metavar="DIR|FILE",
        help="AS-norm cohort: a speaker folder or a `voiceid cohort build` file; "
        "its speakers must not be evaluated",
    )
    p.add_argument(
        "--cohort-top-n",
        type=int,
        default=300,
        metavar="N",
        help="AS-norm: top-N cohort scores (default 300)",
    )
    p.add_argument(
        "--target-far",
        type=float,
        default=0.01,
        metavar="FAR",
        help="report the threshold reaching this FAR (fraction; default 0.01)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="report FAR/FRR here (default: the model's threshold)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for the EER interval (0: none; default 1000)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument(
        "--plot", type=Path, default=None, metavar="DET.png", help="write a DET curve PNG"
    )
    p.add_argument(
        "--streaming",
        action="store_true",
        help="also stream each test file through the live pipeline",
    )
    p.add_argument(
        "--unenrolled",
        type=int,
        default=2,
        metavar="K",
        help="streaming: hold the last K speakers out of the index (default 2)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config.yaml whose stream/decision settings --streaming uses",
    )
    p.add_argument(
        "--cache-dir", type=Path, default=None, help=f"embedding cache (default {default_root()})"
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    c = sub.add_parser("cohort", help="AS-norm cohorts of other speakers")
    csub = c.add_subparsers(dest="cohort_command", metavar="ACTION", required=True)
    b = csub.add_parser(
        "build",
        help="embed a speaker folder into a cohort file for AS-norm",
        description=(
            "Embed ROOT/SPEAKER/*.wav|flac|ogg|mp3 and save one mean embedding per speaker "
            "(or every utterance with --per-utterance). Use speakers that are neither "
            "enrolled nor evaluated."
        ),
    )
    b.add_argument("dir", type=Path, metavar="DIR")
    add_model_args(b)
    b.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="FILE",
        help="cohort file to write (.npz)",
    )
    b.add_argument("--speakers", metavar="A,B,...", help="only these speaker folders")
    b.add_argument("--exclude-speakers", metavar="A,B,...", help="leave these speakers out")
    b.add_argument(
        "--per-utterance",
        action="store_true",
        help="one cohort entry per utterance instead of per speaker",
    )
    b.add_argument("--cache-dir", type=Path, default=None, help="embedding cache folder")
    b.add_argument("--no-cache", action="store_true")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_cohort_build)


# ---------------------------------------------------------------------------- helpers


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, *, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        now = time.perf_counter()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        fill = round(width * done / total)
        bar = "#" * fill + "-" * (width - fill)
        sys.stderr.write(
            f"\r{self.label} [{bar}] {done}/{total}  {now - self.t0:5.1f} s"
            + ("\n" if done >= total else "")
        )
        sys.stderr.flush()


def _warn(msg: str) -> None:
    print(f"voiceid: warning: {msg}", file=sys.stderr)


def _cache(args: argparse.Namespace, embedder: Embedder) -> EmbeddingCache:
    root = None if args.no_cache else (args.cache_dir or default_root())
    return EmbeddingCache(embedder.fingerprint, root)


def _embed(files: list[Path], embedder: Embedder, cache: EmbeddingCache, label: str) -> Embedded:
    got = embed_files(files, embedder, cache, Progress(label))
    for f, why in got.failed.items():
        _warn(f"skipped {f}: {why}")
    return got


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


def _pct(x: float | None, nd: int = 2) -> str:
    return "n/a" if x is None else f"{100.0 * x:.{nd}f} %"


def build_cohort(
    root: Path,
    embedder: Embedder,
    cache: EmbeddingCache,
    *,
    speakers: str | None = None,
    exclude: str | None = None,
    per_utterance: bool = False,
) -> tuple[Cohort, Embedded]:
    """Cohort of the speakers under ``root``: speaker means (or every utterance)."""
    spk = speaker_dirs(root, speakers=speakers, exclude=exclude)
    files = [f for fs in spk.values() for f in fs]
    got = _embed(files, embedder, cache, "cohort")
    labels = [name for name, fs in spk.items() for f in fs if f in got.vectors]
    kept = [f for f in files if f in got.vectors]
    if len(kept) < 2:
        raise ProfileError(f"cohort {root}: fewer than 2 usable files", hint="add recordings")
    rows = got.matrix(kept)
    if per_utterance:
        emb, names = rows, sorted(set(labels), key=labels.index)
        kind = "utterances"
    else:
        emb, names = speaker_means(rows, labels)
        kind = "speaker-means"
    if emb.shape[0] < 2:
        raise ProfileError(
            f"cohort {root}: one speaker gives one speaker mean; AS-norm needs at least 2",
            hint="use more speakers or --per-utterance",
        )
    cohort = Cohort(
        embeddings=emb,
        fingerprint=embedder.fingerprint,
        model=embedder.card.name,
        kind=kind,
        speakers=names,
        files_sha256=sorted({got.sha256[f] for f in kept}),
        source=str(root),
    )
    return cohort, got


def _load_cohort(args: argparse.Namespace, embedder: Embedder, cache: EmbeddingCache) -> Cohort:
    if args.cohort.is_dir():
        return build_cohort(args.cohort, embedder, cache)[0]
    cohort = read_cohort(args.cohort)
    check_cohort(cohort, embedder.fingerprint, path=args.cohort)
    return cohort


def _check_disjoint(cohort: Cohort, trials: TrialSet, shas: dict[Path, str]) -> None:
    same = sorted(set(cohort.speakers) & set(trials.speakers))
    if same:
        raise ConfigError(
            f"cohort speakers {', '.join(same)} are also evaluated: AS-norm needs a cohort "
            "disjoint from the evaluated speakers",
            hint="leave them out of the cohort or the evaluation: --speakers, --exclude-speakers",
        )
    shared = set(cohort.files_sha256) & set(shas.values())
    if shared:
        raise ConfigError(
            f"{len(shared)} evaluated file(s) are also in the cohort (same content)",
            hint="build the cohort from other speakers",
        )


def _trial_scores(
    trials: TrialSet, scorer: Scorer, test_mat: NDArray[np.float32]
) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
    """(score of every trial, full [tests, enrollments] matrix when small enough)."""
    n_t, n_e = test_mat.shape[0], len(trials.enrollments)
    out = np.empty(trials.target.size, dtype=np.float64)
    full: NDArray[np.float64] | None = None
    if n_t * n_e <= _CHUNK_CELLS:
        full = np.asarray(scorer.scores(test_mat), dtype=np.float64)
        out[:] = full[trials.test_idx, trials.enroll_idx]
        return out, full
    step = max(1, _CHUNK_CELLS // max(1, n_e))
    order = np.argsort(trials.test_idx, kind="stable")
    t_sorted = trials.test_idx[order]
    for start in range(0, n_t, step):
        block = np.asarray(scorer.scores(test_mat[start : start + step]), dtype=np.float64)
        lo, hi = np.searchsorted(t_sorted, [start, start + step])
        sel = order[lo:hi]
        out[sel] = block[trials.test_idx[sel] - start, trials.enroll_idx[sel]]
    return out, full


# ------------------------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    if args.enroll_utts < 1:
        raise ConfigError(f"--enroll-utts must be >= 1, got {args.enroll_utts}")
    if not 0.0 < args.target_far < 1.0:
        raise ConfigError(
            f"--target-far is a fraction in (0, 1), got {args.target_far}", hint="e.g. 0.01 for 1 %"
        )
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.norm == "none" and args.cohort is not None:
        raise ConfigError("--cohort is only used with --norm asnorm")
    if args.norm == "asnorm" and args.cohort is None:
        raise ConfigError(
            "--norm asnorm needs --cohort DIR|FILE",
            hint="speakers that are not evaluated; build a file with `voiceid cohort build`",
        )
    if args.cohort_top_n < 1:
        raise ConfigError(f"--cohort-top-n must be >= 1, got {args.cohort_top_n}")
    trials = load_trials(
        args.source,
        enroll_utts=args.enroll_utts,
        speakers=args.speakers,
        exclude=args.exclude_speakers,
        audio_root=args.audio_root,
    )
    if args.streaming and trials.kind != "directory":
        raise ConfigError("--streaming needs a speaker folder, not a trial list")
    embedder = load_embedder(args)
    cache = _cache(args, embedder)
    cohort = _load_cohort(args, embedder, cache) if args.norm == "asnorm" else None
    got = _embed(trials.files(), embedder, cache, "embedding")
    trials = trials.without(got.failed)
    if trials.n_target == 0 or trials.n_nontarget == 0:
        raise ConfigError(
            f"{trials.source}: {trials.n_target} target and {trials.n_nontarget} non-target "
            "trials; both are needed",
            hint="use more speakers or files",
        )

    names = [e.id for e in trials.enrollments]
    enroll_mat = np.stack([centroid([got.vectors[f] for f in e.files]) for e in trials.enrollments])
    test_mat = got.matrix([t.path for t in trials.tests])
    index = ProfileIndex.from_matrix(
        embedder.fingerprint,
        names,
        [f"e{i}" for i in range(len(names))],
        enroll_mat,
        model_name=embedder.card.name,
    )
    scorer: Scorer = index
    if cohort is not None:
        _check_disjoint(cohort, trials, got.sha256)
        scorer = ASNormScorer(index, cohort.embeddings, top_n=args.cohort_top_n)

    scores, full = _trial_scores(trials, scorer, test_mat)
    tar, non = scores[trials.target], scores[~trials.target]
    e = metrics.eer(tar, non)
    ci = (
        metrics.bootstrap_eer(tar, non, n=args.bootstrap, seed=args.seed)
        if args.bootstrap
        else None
    )
    dcfs = {p: metrics.min_dcf(tar, non, p) for p in P_TARGETS}
    if args.threshold is not None:
        thr: float | None = args.threshold
        thr_source = "--threshold"
    elif args.norm == "none":
        thr, thr_source = embedder.card.threshold, "model default"
    else:
        thr, thr_source = None, "none (AS-norm scores are not cosines: pass --threshold)"
    at_thr = metrics.rates_at(tar, non, thr) if thr is not None else None
    ft = metrics.threshold_for_far(non, args.target_far)
    ft_frr = metrics.rates_at(tar, non, ft.threshold)[1]

    ident: dict[str, Any] | None = None
    if full is not None and trials.kind == "directory":
        col = {e_.speaker: i for i, e_ in enumerate(trials.enrollments)}
        rows = [i for i, t in enumerate(trials.tests) if t.speaker in col]
        if rows:
            truth = [col[trials.tests[i].speaker] for i in rows]
            acc = metrics.identification(full[rows], truth, (1, 5))
            ident = {
                "top1": _r(acc[1]),
                "top5": _r(acc[5]),
                "tests": len(rows),
                "enrolled": len(col),
                "closed_set": len(rows) == len(trials.tests),
            }

    streaming: dict[str, Any] | None = None
    if args.streaming:
        streaming = _streaming(args, trials, got, embedder, cohort, ft.threshold)

    plot: str | None = None
    if args.plot is not None:
        from voiceid.evaluation.det import Curve, plot_det

        far, frr = metrics.det_points(tar, non)
        label = f"{embedder.card.name}" + (" + AS-norm" if cohort is not None else "")
        what = (
            f"{Path(trials.source).name}, enroll {trials.enroll_utts} utt"
            if trials.kind == "directory"
            else Path(trials.source).name
        )
        plot = str(
            plot_det(
                args.plot,
                [Curve(label, far, frr, e.eer)],
                title=f"DET: {what}",
                note=f"{trials.n_target} target / {trials.n_nontarget} non-target trials",
            )
        )

    result: dict[str, Any] = {
        "model": embedder.card.name,
        "fingerprint": embedder.fingerprint,
        "source": trials.source,
        "kind": trials.kind,
        "enroll_utts": trials.enroll_utts,
        "norm": args.norm,
        "cohort": None
        if cohort is None
        else {
            "source": str(args.cohort),
            "kind": cohort.kind,
            "size": int(cohort.embeddings.shape[0]),
            "speakers": len(cohort.speakers),
            "top_n": args.cohort_top_n,
        },
        "speakers": len(trials.speakers) if trials.kind == "directory" else None,
        "enrollments": len(trials.enrollments),
        "tests": len(trials.tests),
        "files": len(got.vectors),
        "trials": {"target": trials.n_target, "nontarget": trials.n_nontarget},
        "eer": {
            "value": _r(e.eer),
            "threshold": _r(e.threshold),
            "ci95": None if ci is None else [_r(ci[0]), _r(ci[1])],
            "bootstrap": args.bootstrap,
            "seed": args.seed,
        },
        "min_dcf": {
            f"{p:g}": {"value": _r(d.min_dcf), "threshold": _r(d.threshold)}
            for p, d in dcfs.items()
        },
        "threshold": {
            "value": thr,
            "source": thr_source,
            "far": None if at_thr is None else _r(at_thr[0]),
            "frr": None if at_thr is None else _r(at_thr[1]),
        },
        "target_far": {
            "far": args.target_far,
            "threshold": _r(ft.threshold),
            "far_measured": _r(ft.far),
            "frr": _r(ft_frr),
            "resolvable": ft.resolvable,
        },
        "identification": ident,
        "streaming": streaming,
        "scores": {
            "target_mean": _r(float(tar.mean())),
            "nontarget_mean": _r(float(non.mean())),
        },
        "embeddings": {
            "files": len(got.vectors) + len(got.failed),
            "cached": got.cached,
            "computed": got.computed,
            "failed": len(got.failed),
            "seconds": round(got.seconds, 2),
            "cache": None if cache.root is None else str(cache.root),
        },
        "skipped": sorted(str(f) for f in got.failed),
        "notes": trials.notes,
        "plot": plot,
        "elapsed_s": round(time.perf_counter() - t_start, 2),
    }
    if args.json:
        print_json(result)
    else:
        _print_eval(result)
    return 0


def _streaming(
    args: argparse.Namespace,
    trials: TrialSet,
    got: Embedded,
    embedder: Embedder,
    cohort: Cohort | None,
    far_threshold: float,
) -> dict[str, Any]:
    from voiceid.audio.io import load_audio
    from voiceid.config import load_settings
    from voiceid.evaluation.streaming import StreamCase, evaluate_streaming
    from voiceid.frontend import make_frontend
    from voiceid.runtime.daemon import stream_config

    k = args.unenrolled
    enrolled_all = [e.speaker for e in trials.enrollments if e.speaker is not None]
    if not 0 <= k < len(enrolled_all):
        raise ConfigError(
            f"--unenrolled {k}: must leave at least one of the {len(enrolled_all)} enrolled "
            "speakers enrolled",
            hint=f"use 0..{len(enrolled_all) - 1}",
        )
    keep = trials.enrollments[: len(trials.enrollments) - k]
    enrolled = [str(e.speaker) for e in keep]
    unenrolled = sorted(set(trials.speakers) - set(enrolled))
    mat = np.stack([centroid([got.vectors[f] for f in e.files]) for e in keep])
    index = ProfileIndex.from_matrix(
        embedder.fingerprint,
        enrolled,
        [f"s{i}" for i in range(len(keep))],
        mat,
        model_name=embedder.card.name,
    )
    scorer: Scorer = index
    if args.threshold is not None:
        threshold = float(args.threshold)
    elif cohort is None:  # what the daemon uses: the window-level threshold of the card
        threshold = embedder.card.live_threshold
    else:
        threshold = far_threshold
    if cohort is not None:
        scorer = ASNormScorer(index, cohort.embeddings, top_n=args.cohort_top_n)
    settings = load_settings(args.config)
    config = stream_config(settings, threshold)
    cases = [StreamCase(t.path, t.speaker if t.speaker in enrolled else None) for t in trials.tests]
    rate = embedder.sample_rate
    card = embedder.card

    def load(p: Path) -> NDArray[np.float32]:
        return load_audio(p, rate)

    def frontend() -> Any:
        return make_frontend(card.frontend)

    progress: Callable[[int, int], None] = Progress("streaming")
    res = evaluate_streaming(
        cases,
        load,
        frontend,
        embedder.embed_features,
        scorer,
        config,
        enrolled=enrolled,
        unenrolled=unenrolled,
        progress=progress,
    )
    out = res.summary()
    rates = (
        "hop_accuracy",
        "settled_hop_accuracy",
        "wrong_identity_hop_rate",
        "files_with_wrong_identity",
        "false_identity_rate",
        "false_identity_hop_rate",
        "unknown_detected_rate",
    )
    for key in rates:
        out[key] = _r(out[key])
    out["first_correct_s"] = {
        k_: (_r(v, 3) if isinstance(v, float) else v) for k_, v in out["first_correct_s"].items()
    }
    return out


def _print_eval(r: dict[str, Any]) -> None:
    emb = r["embeddings"]
    print(f"model {r['model']} (fingerprint {r['fingerprint']})")
    if r["kind"] == "directory":
        print(
            f"set {r['source']}: {r['speakers']} speakers, {r['enrollments']} enrollments "
            f"of {r['enroll_utts']} utterance(s), {r['tests']} test files"
        )
    else:
        print(f"trial list {r['source']}: {r['enrollments']} enrollments, {r['tests']} test files")
    print(
        f"embeddings: {emb['files']} files, {emb['cached']} cached, {emb['computed']} computed"
        f"{', ' + str(emb['failed']) + ' failed' if emb['failed'] else ''} "
        f"({emb['seconds']:.1f} s)"
    )
    for note in r["notes"]:
        print(f"note: {note}")
    if r["cohort"] is not None:
        c = r["cohort"]
        print(
            f"AS-norm: cohort {c['source']} ({c['size']} {c['kind']} of {c['speakers']} "
            f"speakers), top {c['top_n']}"
        )
    t = r["trials"]
    print(f"trials: {t['target']} target, {t['nontarget']} non-target")
    e = r["eer"]
    ci = (
        f" (95 % CI {_pct(e['ci95'][0])} – {_pct(e['ci95'][1])}, {e['bootstrap']} "
        f"bootstrap resamples)"
        if e["ci95"]
        else ""
    )
    print(f"EER {_pct(e['value'])}{ci} at threshold {e['threshold']:.4f}")
    print(
        "minDCF "
        + "   ".join(
            f"p_target={p}: {d['value']:.4f} (threshold {d['threshold']:.4f})"
            for p, d in r["min_dcf"].items()
        )
    )
    th = r["threshold"]
    if th["value"] is not None:
        print(
            f"at threshold {th['value']:.4f} ({th['source']}): FAR {_pct(th['far'])}  "
            f"FRR {_pct(th['frr'])}"
        )
    else:
        print(f"at a fixed threshold: {th['source']}")
    f = r["target_far"]
    warn = "" if f["resolvable"] else " (too few non-target trials to resolve this FAR)"
    print(
        f"threshold for FAR {_pct(f['far'])}: {f['threshold']:.4f} "
        f"(measured FAR {_pct(f['far_measured'])}, FRR {_pct(f['frr'])}){warn}"
    )
    s = r["scores"]
    print(f"mean score: target {s['target_mean']:.4f}, non-target {s['nontarget_mean']:.4f}")
    i = r["identification"]
    if i is not None:
        print(
            f"identification: top-1 {_pct(i['top1'], 1)}  top-5 {_pct(i['top5'], 1)} "
            f"({i['tests']} test files, {i['enrolled']} enrolled speakers)"
        )
    st = r["streaming"]
    if st is not None:
        fc = st["first_correct_s"]

        def sec(v: float | None) -> str:
            return "never" if v is None else f"{v:.2f} s"

        print(
            f"streaming ({st['files']} files, {st['audio_s']:.0f} s of audio in "
            f"{st['seconds']:.1f} s; threshold {st['threshold']:.4f}, hop {st['hop_s']} s, "
            f"window {st['window_s']} s):"
        )
        print(
            f"  enrolled {', '.join(st['enrolled_speakers'])}: {st['enrolled_files']} files, "
            f"{st['hops']} hops: hop accuracy {_pct(st['hop_accuracy'], 1)} "
            f"({_pct(st['settled_hop_accuracy'], 1)} after the first decision), "
            f"wrong identity {_pct(st['wrong_identity_hop_rate'], 1)} of hops, "
            f"in {_pct(st['files_with_wrong_identity'], 1)} of files"
        )
        print(
            f"  time to first correct identity: median {sec(fc['median'])}, "
            f"p90 {sec(fc['p90'])}, never in {fc['never']} file(s)"
        )
        print(
            f"  unenrolled {', '.join(st['unenrolled_speakers']) or '-'}: "
            f"{st['unenrolled_files']} files: false identity rate "
            f"{_pct(st['false_identity_rate'], 1)} of files, "
            f"{_pct(st['false_identity_hop_rate'], 1)} of hops; unknown_speaker in "
            f"{_pct(st['unknown_detected_rate'], 1)} of files"
        )
    if r["plot"]:
        print(f"DET curve: {r['plot']}")
    print(f"({r['elapsed_s']:.1f} s)")


# ----------------------------------------------------------------------------- cohort


def cmd_cohort_build(args: argparse.Namespace) -> int:
    embedder = load_embedder(args)
    cache = _cache(args, embedder)
    cohort, got = build_cohort(
        args.dir,
        embedder,
        cache,
        speakers=args.speakers,
        exclude=args.exclude_speakers,
        per_utterance=args.per_utterance,
    )
    path = save_cohort(args.output, cohort)
    out = {
        "path": str(path),
        "model": cohort.model,
        "fingerprint": cohort.fingerprint,
        "kind": cohort.kind,
        "size": int(cohort.embeddings.shape[0]),
        "dim": int(cohort.embeddings.shape[1]),
        "speakers": cohort.speakers,
        "files": len(cohort.files_sha256),
        "cached": got.cached,
        "computed": got.computed,
        "failed": len(got.failed),
    }
    if args.json:
        print_json(out)
    else:
        print(
            f"cohort {path}: {out['size']} {out['kind']} (dim {out['dim']}) from "
            f"{out['files']} files of {len(cohort.speakers)} speakers "
            f"({', '.join(cohort.speakers)}), model {out['model']} "
            f"(fingerprint {out['fingerprint']})"
        )
    return 0
