"""Score distributions, EER and a speaker-disjoint threshold check on the shared speech.

    .venv/bin/python bench/ge2e_threshold.py [--audio DIR] [--model resemblyzer-ge2e]

Embeds every utterance of ``librispeech-test-other`` (10 speakers x 10 utterances) with
the voiceid pipeline (``Embedder.embed(load_audio(file))``) and scores cosine trials:

- 1-utterance: target = every same-speaker pair i<j, non-target = every cross-speaker pair;
- 3-utterance enrollment: centroid (renormalised mean) of each speaker's utterances 0-2
  (sorted file names) against each of utterances 3-9 of every speaker.

For each it prints trial counts, score means and 1st/99th percentiles, the EER and its
threshold, FAR/FRR at the model card's default threshold, and a 2-fold speaker-disjoint
check: the EER threshold chosen on 5 speakers, FAR/FRR measured at it on the other 5.
The EER threshold is the midpoint between the two adjacent observed scores where
|FAR - FRR| is smallest (FAR = non-targets >= t, FRR = targets < t).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from voiceid.audio.io import load_audio
from voiceid.models import registry
from voiceid.models.embedder import Embedder
from voiceid.models.inference import EmbeddingModel, l2_normalize

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VOICEID_SHARED", REPO.parent / "shared"))
AUDIO = SHARED / "audio" / "librispeech-test-other"
ENROLL = 3  # utterances 0..ENROLL-1 enroll, the rest test

Scores = NDArray[np.float64]


@dataclass(frozen=True)
class Trials:
    """Cosine scores with the speaker(s) each trial involves (enrollment, test)."""

    scores: Scores
    enroll_spk: NDArray[np.int64]
    test_spk: NDArray[np.int64]

    @property
    def target(self) -> NDArray[np.bool_]:
        same: NDArray[np.bool_] = self.enroll_spk == self.test_spk
        return same

    def among(self, speakers: Sequence[int]) -> Trials:
        """Only trials whose two sides are both among ``speakers``."""
        keep = np.isin(self.enroll_spk, speakers) & np.isin(self.test_spk, speakers)
        return Trials(self.scores[keep], self.enroll_spk[keep], self.test_spk[keep])


def rates(tar: Scores, non: Scores, threshold: float) -> tuple[float, float]:
    """(FAR, FRR) at ``threshold``: accept when score >= threshold."""
    far = float(np.mean(non >= threshold)) if len(non) else float("nan")
    frr = float(np.mean(tar < threshold)) if len(tar) else float("nan")
    return far, frr


def eer(tar: Scores, non: Scores) -> tuple[float, float]:
    """(EER, threshold) over midpoints of adjacent distinct scores."""
    values = np.unique(np.concatenate([tar, non]))
    candidates = np.concatenate(
        [[values[0] - 1e-6], (values[:-1] + values[1:]) / 2.0, [values[-1] + 1e-6]]
    )
    tar_sorted, non_sorted = np.sort(tar), np.sort(non)
    frr = np.searchsorted(tar_sorted, candidates, side="left") / len(tar)
    far = 1.0 - np.searchsorted(non_sorted, candidates, side="left") / len(non)
    gap = np.abs(far - frr)
    best = int(np.flatnonzero(gap == gap.min())[np.argmin((far + frr)[gap == gap.min()])])
    return float((far[best] + frr[best]) / 2.0), float(candidates[best])


def one_utterance_trials(embs: NDArray[np.float32], spk: NDArray[np.int64]) -> Trials:
    i, j = np.triu_indices(len(embs), k=1)
    scores = np.sum(embs[i].astype(np.float64) * embs[j], axis=1)
    return Trials(scores, spk[i], spk[j])


def enrolled_trials(
    embs: NDArray[np.float32], spk: NDArray[np.int64], utt: NDArray[np.int64]
) -> Trials:
    speakers = np.unique(spk)
    centroids = np.stack(
        [l2_normalize(embs[(spk == s) & (utt < ENROLL)].mean(axis=0)) for s in speakers]
    )
    test = utt >= ENROLL
    scores = centroids.astype(np.float64) @ embs[test].T.astype(np.float64)  # [S, N_test]
    enroll_spk = np.repeat(speakers, test.sum())
    test_spk = np.tile(spk[test], len(speakers))
    return Trials(scores.reshape(-1), enroll_spk, test_spk)


def report(
    title: str, trials: Trials, folds: list[list[int]], names: list[str], default: float
) -> None:
    tar, non = trials.scores[trials.target], trials.scores[~trials.target]
    e, t = eer(tar, non)
    print(f"\n== {title}")
    print(f"trials: {len(tar)} target, {len(non)} non-target")
    for label, s in (("same speaker", tar), ("different", non)):
        p1, p99 = np.percentile(s, [1, 99])
        print(
            f"{label:>13}: mean {s.mean():.4f}  min {s.min():.4f}  p1 {p1:.4f}  "
            f"p99 {p99:.4f}  max {s.max():.4f}"
        )
    print(
        f"EER {100 * e:.2f} % at threshold {t:.4f} "
        f"(max non-target {non.max():.4f}, min target {tar.min():.4f})"
    )
    far, frr = rates(tar, non, default)
    print(
        f"at the card default threshold {default:.2f}: FAR {100 * far:.2f} %  FRR {100 * frr:.2f} %"
    )
    for k, calib in enumerate(folds):
        held = [s for s in range(len(names)) if s not in calib]
        c, h = trials.among(calib), trials.among(held)
        ce, ct = eer(c.scores[c.target], c.scores[~c.target])
        hfar, hfrr = rates(h.scores[h.target], h.scores[~h.target], ct)
        print(
            f"fold {k + 1}: threshold {ct:.4f} from speakers "
            f"{','.join(names[s] for s in calib)} (EER there {100 * ce:.2f} %, "
            f"{int(c.target.sum())}/{int((~c.target).sum())} trials) -> on "
            f"{','.join(names[s] for s in held)}: FAR {100 * hfar:.2f} %  "
            f"FRR {100 * hfrr:.2f} % ({int(h.target.sum())}/{int((~h.target).sum())} trials)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--audio", type=Path, default=AUDIO, help="speaker dirs of *.flac")
    ap.add_argument("--model", default="resemblyzer-ge2e")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    speakers = sorted((d for d in args.audio.iterdir() if d.is_dir()), key=lambda d: int(d.name))
    if not speakers:
        raise SystemExit(f"no speaker directories under {args.audio}")
    resolved = registry.resolve(args.model, fetch=True)
    model = EmbeddingModel(resolved.path, resolved.card, device="cpu", intra_threads=args.threads)
    embedder = Embedder(model, resolved.fingerprint)
    t0 = time.perf_counter()
    rows: list[NDArray[np.float32]] = []
    spk_ids: list[int] = []
    utt_ids: list[int] = []
    audio_s = 0.0
    for s, directory in enumerate(speakers):
        for u, path in enumerate(sorted(directory.glob("*.flac"))):
            samples = load_audio(path, embedder.sample_rate)
            audio_s += len(samples) / embedder.sample_rate
            rows.append(embedder.embed(samples, where=str(path)))
            spk_ids.append(s)
            utt_ids.append(u)
    elapsed = time.perf_counter() - t0
    embs = np.stack(rows)
    spk, utt = np.asarray(spk_ids, np.int64), np.asarray(utt_ids, np.int64)
    names = [d.name for d in speakers]
    print(
        f"model {resolved.card.name} (fingerprint {embedder.fingerprint}), "
        f"{len(rows)} utterances of {len(names)} speakers, {audio_s:.1f} s of audio "
        f"embedded in {elapsed:.1f} s on CPU ({args.threads} threads)"
    )
    evens, odds = list(range(0, len(names), 2)), list(range(1, len(names), 2))
    folds = [evens, odds]
    default = resolved.card.threshold
    report("1-utterance trials (pairs i<j)", one_utterance_trials(embs, spk), folds, names, default)
    report(
        f"{ENROLL}-utterance enrollment (centroid of utts 0-{ENROLL - 1} vs utts "
        f"{ENROLL}-{int(utt.max())})",
        enrolled_trials(embs, spk, utt),
        folds,
        names,
        default,
    )


if __name__ == "__main__":
    main()
