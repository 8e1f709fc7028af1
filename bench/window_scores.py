"""Window-level score distributions: what the streaming decider really sees.

    .venv/bin/python bench/window_scores.py [--model resemblyzer-ge2e] [--audio DIR]

Enrolls each speaker of the folder from its first 3 utterances (centroid), then cuts the
other utterances into the daemon's own windows (``HopScheduler`` defaults: 1.0/1.5/2.0 s
buckets, hop 0.5 s, VAD-gated) and scores every window against every centroid. Per
window length it prints target/non-target counts, means, tails, the EER point and
FAR/FRR at a few thresholds. Short windows score lower than whole utterances, so the
streaming threshold is set from this table, not from utterance-level trials.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from voiceid.audio.io import load_audio
from voiceid.cli.demo import find_audio, speaker_files
from voiceid.frontend import make_frontend
from voiceid.models.embedder import Embedder
from voiceid.profiles.model import centroid
from voiceid.stream.scheduler import HopScheduler, SchedulerConfig, WindowRequest

Scores = tuple[list[float], list[float]]


def windows(embedder: Embedder, path: Path) -> list[WindowRequest]:
    sched = HopScheduler("w", make_frontend(embedder.card.frontend), SchedulerConfig())
    x = load_audio(path, embedder.sample_rate)
    hop = 8000
    return [
        h
        for i in range(0, len(x), hop)
        for h in sched.feed(x[i : i + hop])
        if isinstance(h, WindowRequest)
    ]


def eer(target: NDArray[np.float64], nontarget: NDArray[np.float64]) -> tuple[float, float]:
    grid = np.linspace(-1.0, 1.0, 2001)
    far = np.array([(nontarget >= t).mean() for t in grid])
    frr = np.array([(target < t).mean() for t in grid])
    k = int(np.argmin(np.abs(far - frr)))
    return float((far[k] + frr[k]) / 2), float(grid[k])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resemblyzer-ge2e")
    ap.add_argument("--audio", type=Path, default=None)
    ap.add_argument("--enroll", type=int, default=3)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.65, 0.70, 0.75])
    args = ap.parse_args()
    embedder = Embedder.load(args.model, device="cpu")
    spk = speaker_files(find_audio(args.audio))
    names = sorted(spk)
    rate = embedder.sample_rate
    cents = np.stack(
        [
            centroid([embedder.embed(load_audio(f, rate)) for f in spk[s][: args.enroll]])
            for s in names
        ]
    )
    by_t: dict[int, Scores] = {}
    for i, s in enumerate(names):
        for f in spk[s][args.enroll :]:
            reqs = windows(embedder, f)
            for t in sorted({r.feats.shape[0] for r in reqs}):
                batch = np.stack([r.feats for r in reqs if r.feats.shape[0] == t])
                scores = embedder.embed_features(batch) @ cents.T
                tl, nl = by_t.setdefault(t, ([], []))
                tl.extend(scores[:, i].tolist())
                nl.extend(np.delete(scores, i, axis=1).ravel().tolist())
    print(f"model {args.model}, {len(names)} speakers, enrollment {args.enroll} utterances")
    for t, (tgt_l, non_l) in sorted(by_t.items()):
        tgt = np.array(tgt_l, dtype=np.float64)
        non = np.array(non_l, dtype=np.float64)
        e, at = eer(tgt, non)
        cols = "  ".join(
            f"@{th:.2f}: FRR {np.mean(tgt < th) * 100:5.1f}% FAR {np.mean(non >= th) * 100:5.2f}%"
            for th in args.thresholds
        )
        print(
            f"T={t:3d} frames: target {len(tgt):5d} mean {tgt.mean():.3f} p5 "
            f"{np.percentile(tgt, 5):.3f} | non-target {len(non):6d} mean {non.mean():.3f} "
            f"p99.9 {np.percentile(non, 99.9):.3f} max {non.max():.3f} | EER {e * 100:.2f}% "
            f"at {at:.3f} | {cols}"
        )


if __name__ == "__main__":
    main()
