"""Enrollment: time ``EnrollmentSession.finish()``, and measure the policy's numbers.

    .venv/bin/python bench/bench_enroll.py [--runs 30] [--prefill 1000]
    .venv/bin/python bench/bench_enroll.py --measure    # the tables of docs/enrollment.md

Timing: a real SQLite file (WAL, synchronous=FULL, i.e. fsync per commit) in a temporary
directory, optionally pre-filled with ``--prefill`` profiles. Each run starts a session,
adds three utterances whose embeddings were computed beforehand (``add_embedding``: the
last utterance's embedding is not part of the timing) and times ``finish()`` — the
centroid and one transaction. Prints median / p90 / max over ``--runs`` (goal: median
<= 500 ms on CPU), the same for a re-enrollment (``replace=True``: replace the
utterances, securely delete the old ones, checkpoint the WAL), and for context the time
of ``add_audio`` for one utterance (quality checks + embedding).

``--measure`` embeds the shared speech (librispeech-test-other, 10 speakers x 10
utterances) with the model (default resemblyzer-ge2e) and prints what the enrollment
policy defaults rest on: per-utterance speech durations and levels, how EER and margins
change with 1/2/3 enrollment utterances and with the seconds of enrollment speech, how
probe length degrades scores, how the consistency bar splits genuine and impostor
utterances, and what clipping and low levels do to embeddings and to the VAD.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from voiceid.audio.io import load_audio
from voiceid.audio.vad import frame_dbfs, voice_flags
from voiceid.models import registry
from voiceid.models.embedder import Embedder
from voiceid.models.inference import EmbeddingModel
from voiceid.profiles.enroll import FRAME, EnrollmentPolicy, EnrollmentSession, assess
from voiceid.profiles.model import Utterance, centroid
from voiceid.profiles.store import ProfileStore

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VOICEID_SHARED", REPO.parent / "shared"))
AUDIO = SHARED / "audio" / "librispeech-test-other"
RATE = 16000
GOAL_MS = 500.0

Vec = NDArray[np.float32]
F64 = NDArray[np.float64]


def load_embedder(model: str, threads: int) -> Embedder:
    resolved = registry.resolve(model, fetch=True)
    m = EmbeddingModel(resolved.path, resolved.card, device="cpu", intra_threads=threads)
    return Embedder(m, resolved.fingerprint)


def speaker_files(audio: Path) -> dict[str, list[Path]]:
    out = {d.name: sorted(d.glob("*.flac")) for d in sorted(audio.iterdir()) if d.is_dir()}
    if not out:
        raise SystemExit(f"no speaker directories under {audio}")
    return out


def stats_ms(samples: Sequence[float]) -> str:
    ms = sorted(1000 * s for s in samples)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return f"median {statistics.median(ms):7.2f} ms  p90 {p90:7.2f} ms  max {ms[-1]:7.2f} ms"


# ------------------------------------------------------------------------ timing


def bench_finish(args: argparse.Namespace) -> None:
    emb = load_embedder(args.model, args.threads)
    files = speaker_files(args.audio)
    first = next(iter(files.values()))[:4]
    clips = [load_audio(f, RATE) for f in first]
    ready = [(emb.embed(x), assess(x).speech_s, f.name) for x, f in zip(clips, first, strict=True)]
    threshold = emb.card.threshold
    policy = EnrollmentPolicy(consistency=-1.0)  # time the commit, not the speaker
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; model "
        f"{emb.card.name}; {sum(s for _, s, _ in ready[:3]):.1f} s of speech in 3 utterances"
    )
    with (
        tempfile.TemporaryDirectory(dir=args.dir) as tmp,
        ProfileStore.open(Path(tmp) / "profiles.db") as store,
    ):
        rng = np.random.default_rng(0)
        for i in range(args.prefill):
            vecs = rng.standard_normal((3, emb.card.dim)).astype(np.float32)
            store.add(
                f"prefill-{i}",
                emb.fingerprint,
                emb.card.name,
                [Utterance(v, 4.0, "x") for v in vecs],
            )
        print(f"database: {len(store)} profiles before the runs ({store.path})")

        def session(name: str, replace: bool = False) -> EnrollmentSession:
            s = EnrollmentSession.start(
                name, store, emb, threshold=threshold, policy=policy, replace=replace
            )
            for vec, speech, src in ready[:3]:
                assert s.add_embedding(vec, speech, src).accepted
            return s

        fresh: list[float] = []
        for i in range(args.runs):
            s = session(f"run-{i}")
            t0 = time.perf_counter()
            s.finish()
            fresh.append(time.perf_counter() - t0)
        again: list[float] = []
        for i in range(args.runs):
            s = session(f"run-{i}", replace=True)
            t0 = time.perf_counter()
            s.finish()
            again.append(time.perf_counter() - t0)
        audio: list[float] = []
        for i in range(max(5, args.runs // 4)):
            s = EnrollmentSession.start(f"audio-{i}", store, emb, threshold=threshold)
            t0 = time.perf_counter()
            s.add_audio(clips[3], source=first[3].name)
            audio.append(time.perf_counter() - t0)
            s.cancel()
    med = statistics.median(fresh) * 1000
    verdict = "OK" if med <= GOAL_MS else "OVER GOAL"
    print(
        f"finish() new profile      ({args.runs} runs): {stats_ms(fresh)}  [{verdict}: "
        f"goal <= {GOAL_MS:.0f} ms]"
    )
    print(f"finish() re-enroll/replace ({args.runs} runs): {stats_ms(again)}")
    dur = len(clips[3]) / RATE
    print(
        f"for context, add_audio() of a {dur:.1f} s utterance (checks + embedding, "
        f"{len(audio)} runs): {stats_ms(audio)}"
    )


# ----------------------------------------------------------------------- measure


def eer(tar: F64, non: F64) -> tuple[float, float]:
    """(EER, threshold) over midpoints of adjacent observed scores."""
    values = np.unique(np.concatenate([tar, non]))
    cands = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1]])
    frr = np.searchsorted(np.sort(tar), cands, side="left") / len(tar)
    far = 1.0 - np.searchsorted(np.sort(non), cands, side="left") / len(non)
    i = int(np.argmin(np.abs(far - frr) + 1e-9 * (far + frr)))
    return float((far[i] + frr[i]) / 2), float(cands[i])


def unit(v: NDArray[np.floating]) -> Vec:
    return (v / np.linalg.norm(v)).astype(np.float32)


def cut_to_speech(x: Vec, seconds: float) -> Vec:
    """Contiguous audio from the first voiced 30 ms frame up to where ``seconds`` of VAD
    speech have been heard (all of it when the clip holds less)."""
    flags = voice_flags(x)
    voiced = np.flatnonzero(flags)
    if not len(voiced):
        return x
    need = max(1, round(seconds / 0.03))
    last = voiced[min(need, len(voiced)) - 1]
    return x[voiced[0] * FRAME : (last + 1) * FRAME].copy()


Fold = tuple[dict[str, Vec], dict[str, list[Vec]]]  # (centroids, probes) by speaker


def report(label: str, folds: Sequence[Fold], bar: float) -> str:
    """Identification top-1 and verification trials (each probe against every centroid
    of its fold), pooled over the folds, in one line."""
    tar: list[float] = []
    non: list[float] = []
    top = n = 0
    for cents, probes in folds:
        names = sorted(cents)
        mat = np.stack([cents[k] for k in names]).astype(np.float64)
        for k, vecs in probes.items():
            for v in vecs:
                sc = mat @ v.astype(np.float64)
                top += names[int(np.argmax(sc))] == k
                n += 1
                for other, value in zip(names, sc, strict=True):
                    (tar if other == k else non).append(float(value))
    t, u = np.array(tar), np.array(non)
    e, at = eer(t, u)
    return (
        f"{label:<26} top-1 {top:3d}/{n:<3d} EER {100 * e:5.2f}% (at {at:.3f})  target mean "
        f"{t.mean():.3f} p5 {np.percentile(t, 5):.3f} min {t.min():.3f}  non-target max "
        f"{u.max():.3f} p99 {np.percentile(u, 99):.3f}  min-max margin {t.min() - u.max():+.3f}  "
        f"FRR@{bar:g} {100 * np.mean(t < bar):4.1f}%  FAR@{bar:g} {100 * np.mean(u >= bar):.2f}%  "
        f"[{len(t)}/{len(u)} trials]"
    )


def measure(args: argparse.Namespace) -> None:
    emb = load_embedder(args.model, args.threads)
    bar = emb.card.threshold
    files = speaker_files(args.audio)
    spk = list(files)
    t0 = time.perf_counter()
    wav = {s: [load_audio(f, RATE) for f in files[s]] for s in spk}
    E = {
        s: [emb.embed(x, where=str(f)) for x, f in zip(wav[s], files[s], strict=True)] for s in spk
    }
    print(
        f"model {emb.card.name} (threshold {bar}); {sum(len(v) for v in wav.values())} "
        f"utterances of {len(spk)} speakers embedded in {time.perf_counter() - t0:.1f} s"
    )
    n_utt = min(len(v) for v in wav.values())

    # 1. What the set's utterances look like.
    q = [assess(x) for s in spk for x in wav[s]]
    dur = np.array([len(x) / RATE for s in spk for x in wav[s]])
    sp = np.array([a.speech_s for a in q])
    lv = np.array([a.level_dbfs if a.level_dbfs is not None else np.nan for a in q])
    cl = np.array([a.clipped_fraction for a in q])

    def dist(a: F64) -> str:
        p10, p50, p90 = np.percentile(a, [10, 50, 90])
        return (
            f"min {a.min():.2f}  p10 {p10:.2f}  median {p50:.2f}  p90 {p90:.2f}  max {a.max():.2f}"
        )

    print("\n== 1. the utterances (assess(): VAD speech, median level of speech frames)")
    print(f"duration (s):         {dist(dur)}")
    print(f"VAD speech (s):       {dist(sp)}")
    print(f"speech level (dBFS):  {dist(lv)}")
    print(f"clipped fraction: max {cl.max():.4%}")
    print(
        f"utterances with speech < 1.0 s: {int((sp < 1.0).sum())}, < 1.5 s: "
        f"{int((sp < 1.5).sum())}, < 2.0 s: {int((sp < 2.0).sum())} (of {len(sp)})"
    )
    print(
        f"utterances with level < -45 dBFS: {int((lv < -45).sum())}, < -40: "
        f"{int((lv < -40).sum())}; quietest three: {np.sort(lv)[:3].round(1).tolist()}"
    )
    dyn = np.array([a.dynamic_db for a in q], dtype=np.float64)
    cut_dyn = np.array(
        [assess(cut_to_speech(x, 1.0)).dynamic_db or 0.0 for s in spk for x in wav[s]]
    )
    print(f"frame-level spread p95-p10 (dB): utterances {dist(dyn)}")
    print(f"                     1 s of speech (cut): {dist(cut_dyn)}")
    rng = np.random.default_rng(0)
    t = np.arange(5 * RATE) / RATE
    brown = np.cumsum(rng.standard_normal(len(t)))
    brown -= np.convolve(brown, np.ones(200) / 200, "same")
    noises = {
        "100 Hz hum, -29 dBFS": 0.05 * np.sin(2 * np.pi * 100 * t),
        "white noise, -20 dBFS": rng.standard_normal(len(t)) * 0.1,
        "white noise, -30 dBFS": rng.standard_normal(len(t)) * 10 ** (-30 / 20),
        "brown noise, -26 dBFS": brown / brown.std() * 10 ** (-26 / 20),
    }
    for label, noise in noises.items():
        x = noise.astype(np.float32)
        vad_s = float(voice_flags(x).sum()) * 0.03
        print(
            f"  {label}: VAD alone {vad_s:.2f} s of 5 s 'speech'; spread "
            f"{assess(x).dynamic_db:.1f} dB"
        )
    three = [sum(a.speech_s for a in q[i * n_utt : i * n_utt + 3]) for i in range(len(spk))]
    print(f"speech in utterances 0-2 per speaker (s): {[round(t, 1) for t in three]}")

    # 2. How many enrollment utterances: rotations so every utterance serves once.
    rotations = [list(range(r * 3, r * 3 + 3)) for r in range(n_utt // 3)]
    print(
        f"\n== 2. enrollment utterances (rotations {rotations}: the enrollment set's first "
        "k utterances enroll; probes = the utterances outside the set)"
    )
    for k in (1, 2, 3):
        folds = [
            (
                {s: centroid([E[s][i] for i in rot[:k]]) for s in spk},
                {s: [E[s][i] for i in range(n_utt) if i not in rot] for s in spk},
            )
            for rot in rotations
        ]
        print(report(f"{k} utterance(s)", folds, bar))

    # 3. How much enrollment speech (utterances 0-2, each cut to T/3 s of speech).
    print(
        "\n== 3. enrollment speech: utterances 0-2 each cut to T/3 s of VAD speech "
        "(contiguous audio); probes = utterances 3-9 uncut"
    )
    probes = {s: E[s][3:] for s in spk}
    for total in (3.0, 6.0, 10.0, 15.0, None):
        got: list[float] = []
        cents: dict[str, Vec] = {}
        for s in spk:
            if total is None:
                parts = wav[s][:3]
            else:
                parts = [cut_to_speech(x, total / 3) for x in wav[s][:3]]
            got.append(sum(assess(p).speech_s for p in parts))
            cents[s] = centroid([emb.embed(p, check=False) for p in parts])
        label = "uncut" if total is None else f"T = {total:g} s"
        print(report(f"{label} (mean {np.mean(got):.1f} s)", [(cents, probes)], bar))

    # 4. Probe length (the per-utterance minimum): 3-utterance centroids vs cut probes.
    print(
        "\n== 4. one utterance's speech length: probes 3-9 cut to L s of VAD speech, "
        "scored against 3-utterance centroids (utterances 0-2)"
    )
    cents3 = {s: centroid(E[s][:3]) for s in spk}
    for length in (0.5, 1.0, 1.5, 2.0, 3.0):
        cut = {
            s: [emb.embed(cut_to_speech(x, length), check=False) for x in wav[s][3:]] for s in spk
        }
        print(report(f"L = {length:g} s", [(cents3, cut)], bar))
    print("one 1.0 s utterance among three enrollment utterances (utterance 0 cut to 1 s):")
    one_short = {
        s: centroid([emb.embed(cut_to_speech(wav[s][0], 1.0), check=False), E[s][1], E[s][2]])
        for s in spk
    }
    print(report("  short + 2 uncut", [(one_short, probes)], bar))
    print(report("  3 uncut (reference)", [(cents3, probes)], bar))

    # 5. The consistency bar: a new utterance vs the running centroid of 1 or 2.
    print(f"\n== 5. consistency: cosine of an utterance to the running centroid (bar {bar})")
    for k in (1, 2):
        same: list[float] = []
        other: list[float] = []
        for s in spk:
            for a in range(n_utt):
                group = [(a + j) % n_utt for j in range(k)]
                c = centroid([E[s][i] for i in group])
                same += [float(c @ E[s][i]) for i in range(n_utt) if i not in group]
                other += [float(c @ e) for o in spk if o != s for e in E[o]]
        g, im = np.array(same), np.array(other)
        print(
            f"running centroid of {k}: genuine mean {g.mean():.3f} min {g.min():.3f} -> "
            f"wrongly 'inconsistent' {100 * np.mean(g < bar):.1f}% ({len(g)});  impostor mean "
            f"{im.mean():.3f} max {im.max():.3f} -> slips in {100 * np.mean(im >= bar):.3f}% "
            f"({len(im)})"
        )
    dup = max(float(E[s][i] @ E[s][j]) for s in spk for i in range(n_utt) for j in range(i))
    print(
        f"highest cosine between two different utterances of one speaker: {dup:.4f} "
        f"(duplicate bar {EnrollmentPolicy().duplicate_cosine})"
    )

    # 6. Clipping: overdriven speech vs the same gain without clipping.
    print(
        "\n== 6. clipping: utterances 0-4 peak-normalised x G and clipped at full scale; "
        "cosine to the same gain unclipped, by clipped fraction"
    )
    bins = [(0.0, 0.001), (0.001, 0.002), (0.002, 0.005), (0.005, 0.02), (0.02, 1.0)]
    rows: list[tuple[float, float]] = []
    for s in spk:
        for x in wav[s][:5]:
            for gain in (1.2, 1.5, 2.0, 3.0, 5.0, 20.0):
                u = (x * (gain / float(np.abs(x).max()))).astype(np.float32)
                y = np.clip(u, -1.0, 1.0)
                clipped = float(np.mean(np.abs(y) >= 0.999))
                rows.append((clipped, float(emb.embed(y, check=False) @ emb.embed(u, check=False))))
    arr = np.array(rows)
    for lo, hi in bins:
        sel = arr[(arr[:, 0] >= lo) & (arr[:, 0] < hi), 1]
        if len(sel):
            print(
                f"clipped {100 * lo:5.1f}-{100 * hi:5.1f}%: n {len(sel):3d}  cosine mean "
                f"{sel.mean():.4f}  p5 {np.percentile(sel, 5):.4f}  min {sel.min():.4f}"
            )

    # 7. Level: the model vs the VAD.
    print(
        "\n== 7. level: utterances 0-4 scaled to a speech level L (16-bit); cosine to the "
        "-30 dBFS version, and VAD speech relative to it"
    )
    ref: dict[tuple[str, int], tuple[Vec, float]] = {}
    for level in (-30.0, -40.0, -45.0, -50.0, -55.0, -60.0, -70.0):
        cos: list[float] = []
        found: list[float] = []
        for s in spk:
            for j, x in enumerate(wav[s][:5]):
                quality = assess(x)
                assert quality.level_dbfs is not None
                y = _pcm16(x * np.float32(10 ** ((level - quality.level_dbfs) / 20)))
                e = emb.embed(y, check=False)
                speech = float(voice_flags(y).sum()) * 0.03
                if level == -30.0:
                    ref[s, j] = (e, speech)
                cos.append(float(e @ ref[s, j][0]))
                found.append(speech / max(ref[s, j][1], 0.03))
        c, f = np.array(cos), np.array(found)
        print(
            f"L = {level:5.1f} dBFS: cosine mean {c.mean():.4f} min {c.min():.4f};  VAD "
            f"speech found mean {100 * f.mean():5.1f}%  p10 {100 * np.percentile(f, 10):5.1f}%"
        )
    lv_all = np.concatenate([frame_dbfs(x, FRAME) for s in spk for x in wav[s]])
    print(
        f"(30 ms frame levels of the set: p10 {np.percentile(lv_all, 10):.1f}, median "
        f"{np.median(lv_all):.1f} dBFS)"
    )


def _pcm16(x: NDArray[np.floating]) -> Vec:
    return (np.clip(np.round(x * 32768.0), -32768, 32767) / 32768.0).astype(np.float32)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--audio", type=Path, default=AUDIO, help="speaker dirs of *.flac")
    ap.add_argument("--model", default="resemblyzer-ge2e")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30, help="timed finish() calls (>= 20)")
    ap.add_argument("--prefill", type=int, default=1000, help="profiles in the DB beforehand")
    ap.add_argument("--dir", default=None, help="where the temporary DB goes (a disk to test)")
    ap.add_argument("--measure", action="store_true", help="print the policy measurements")
    args = ap.parse_args(argv)
    run: Callable[[argparse.Namespace], None] = measure if args.measure else bench_finish
    run(args)


if __name__ == "__main__":
    main()
