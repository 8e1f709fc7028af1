"""``voiceid embed`` and ``voiceid compare``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from voiceid.audio.io import load_audio
from voiceid.cli.output import print_json
from voiceid.models import registry
from voiceid.models.embedder import Embedder
from voiceid.models.registry import DEFAULT_MODEL


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model / --device / --threads, shared by every command that embeds audio."""
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per inference")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "int8"],
        default="auto",
        help="auto: fp16 on CUDA, fp32 on CPU; int8: the quantized variant (models quantize)",
    )


def load_embedder(args: argparse.Namespace) -> Embedder:
    return Embedder.load(
        args.model, device=args.device, threads=args.threads, precision=args.precision
    )


def register(sub: Any) -> None:
    p = sub.add_parser("embed", help="print the speaker embedding of an audio file")
    p.add_argument("file")
    add_model_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--window", choices=["whole", "sliding"], default="whole")
    p.add_argument("--duration", type=float, default=2.0, help="sliding window length (s)")
    p.add_argument("--step", type=float, default=0.5, help="sliding window step (s)")
    p.add_argument("--start", type=float, default=None, help="start of the clip (s)")
    p.add_argument("--end", type=float, default=None, help="end of the clip (s)")
    p.set_defaults(func=cmd_embed)

    c = sub.add_parser("compare", help="cosine score of two files: same speaker or not")
    c.add_argument("a")
    c.add_argument("b")
    add_model_args(c)
    c.add_argument(
        "--threshold", type=float, default=None, help="decision threshold (default: the model's)"
    )
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_compare)


def _rounded(v: np.ndarray) -> list[float]:
    return [round(float(x), 7) for x in v]


def model_rate(args: argparse.Namespace) -> int:
    """The model's sample rate from its card (audio errors come before model downloads)."""
    return registry.card(args.model).frontend.sample_rate


def cmd_embed(args: argparse.Namespace) -> int:
    samples = load_audio(args.file, model_rate(args), start=args.start, end=args.end)
    embedder = load_embedder(args)
    rate = embedder.sample_rate
    out: dict[str, Any] = {
        "model": embedder.card.name,
        "fingerprint": embedder.fingerprint,
        "dim": embedder.card.dim,
        "duration_s": round(len(samples) / rate, 3),
    }
    if args.window == "whole":
        out["embedding"] = _rounded(embedder.embed(samples, where=args.file))
    else:
        segments = embedder.sliding(samples, duration_s=args.duration, step_s=args.step)
        offset = args.start or 0.0
        out["embeddings"] = [
            {
                "start_s": round(offset + s.start_s, 3),
                "end_s": round(offset + s.end_s, 3),
                "embedding": _rounded(s.embedding),
            }
            for s in segments
        ]
    if args.json:
        print_json(out)
    elif "embedding" in out:
        vec = out["embedding"]
        print(f"{args.file}: {out['model']} dim={out['dim']} duration={out['duration_s']} s")
        print(" ".join(f"{x:+.4f}" for x in vec[:8]), "...")
    else:
        for seg in out["embeddings"]:
            head = " ".join(f"{x:+.4f}" for x in seg["embedding"][:4])
            print(f"{seg['start_s']:8.2f}-{seg['end_s']:<8.2f} {head} ...")
    return 0


def stored_threshold(args: argparse.Namespace, embedder: Embedder) -> float:
    """The threshold set with `voiceid threshold set` for this model, else the card's."""
    from voiceid.paths import state_dir
    from voiceid.profiles.store import DB_NAME, ProfileStore
    from voiceid.security.templates import env_profile_key

    db = args.db or state_dir() / DB_NAME
    if Path(db).is_file():
        with ProfileStore.open(db, check=False, key=env_profile_key()) as store:
            stored = store.get_threshold(embedder.fingerprint)
            if stored is not None:
                return stored
    return embedder.card.threshold


def cmd_compare(args: argparse.Namespace) -> int:
    rate = model_rate(args)
    wav_a, wav_b = load_audio(args.a, rate), load_audio(args.b, rate)
    embedder = load_embedder(args)
    a = embedder.embed(wav_a, where=args.a)
    b = embedder.embed(wav_b, where=args.b)
    score = float(np.dot(a, b))
    threshold = args.threshold if args.threshold is not None else stored_threshold(args, embedder)
    result = {
        "model": embedder.card.name,
        "score": round(score, 6),
        "threshold": threshold,
        "same_speaker": score >= threshold,
    }
    if args.json:
        print_json(result)
    else:
        verdict = "same speaker" if result["same_speaker"] else "different speakers"
        print(f"score {score:.4f} (threshold {threshold:.2f}): {verdict}")
    return 0
