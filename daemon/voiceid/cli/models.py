"""``voiceid models list|fetch|info``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from voiceid.cli.output import print_json, print_table
from voiceid.models import registry


def register(sub: Any) -> None:
    p = sub.add_parser("models", help="list, fetch and inspect speaker-embedding models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="known models and whether they are cached")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    fe = msub.add_parser("fetch", help="download or build a model into the cache")
    fe.add_argument("name")
    fe.add_argument("--sha256", help="pin another build of a downloaded model (its hash)")
    fe.set_defaults(func=cmd_fetch)
    q = msub.add_parser("quantize", help="make the int8 variant of a CNN model (CPU speed)")
    q.add_argument("name")
    q.add_argument(
        "--calibration",
        type=Path,
        required=True,
        help="folder of real speech (wav/flac/...), searched recursively",
    )
    q.add_argument("--windows", type=int, default=50, help="calibration windows (2 s each)")
    q.set_defaults(func=cmd_quantize)
    info = msub.add_parser("info", help="card, file, fingerprint and ONNX signature")
    info.add_argument("name")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for name in registry.names():
        card = registry.card(name)
        path = registry.model_path(name)
        rows.append(
            {
                "name": name,
                "dim": card.dim,
                "frontend": card.frontend.kind,
                "cached": path.is_file(),
                "path": str(path),
                "description": card.description,
            }
        )
    if args.json:
        print_json(rows)
    else:
        print_table(
            ["name", "dim", "frontend", "cached", "description"],
            [
                [
                    r["name"],
                    r["dim"],
                    r["frontend"],
                    "yes" if r["cached"] else "no",
                    r["description"],
                ]
                for r in rows
            ],
        )
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    resolved = registry.resolve(args.name, fetch=True, sha256=args.sha256)
    print(f"{args.name}: {resolved.path}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    import numpy as np

    from voiceid.audio.io import load_audio
    from voiceid.errors import AudioError, ModelError
    from voiceid.models.embedder import Embedder
    from voiceid.models.quantize import quantize_int8, trunk_nodes

    resolved = registry.resolve(args.name, fetch=True)
    import onnx

    if not trunk_nodes(onnx.load(str(resolved.path))):
        raise ModelError(
            f"{args.name} has no convolutional trunk to quantize",
            hint="int8 is for CNN models such as the WeSpeaker ResNets",
        )
    embedder = Embedder.load(args.name, device="cpu")
    rate = embedder.sample_rate
    files = sorted(
        f
        for f in Path(args.calibration).rglob("*")
        if f.suffix.lower() in {".wav", ".flac", ".ogg", ".mp3"}
    )
    windows: list[np.ndarray] = []
    for f in files:
        x = load_audio(f, rate)
        for start in range(0, len(x) - 2 * rate + 1, 2 * rate):
            windows.append(embedder.features(x[start : start + 2 * rate]))
            break  # one window per file: variety of speakers and channels
        if len(windows) >= args.windows:
            break
    if len(windows) < 10:
        raise AudioError(
            f"only {len(windows)} calibration windows of 2 s in {args.calibration}",
            hint="give a folder with at least 10 recordings of 2 s or more",
        )
    dst = registry.variant_path(resolved.path, "int8")
    quantize_int8(resolved.path, dst, windows, input_name=resolved.card.input_name)
    print(
        f"{args.name} int8: {dst} ({len(windows)} calibration windows); use it with "
        f"model.precision: int8 (or --precision int8); re-enroll profiles for it"
    )
    return 0


def model_info(name: str) -> dict[str, Any]:
    """Everything known about a model, without loading it into a runtime."""
    card = registry.card(name)
    path = registry.model_path(name)
    info: dict[str, Any] = {
        **card.model_dump(),
        "path": str(path),
        "cached": path.is_file(),
        "fingerprint": registry.ResolvedModel(card, path).fingerprint
        if path.is_file()
        else card.fingerprint(),
    }
    if path.is_file():
        import onnx

        from voiceid.models.download import sha256_file

        proto = onnx.load(str(path), load_external_data=False)
        info["file_sha256"] = sha256_file(path)
        info["size_bytes"] = path.stat().st_size
        info["opset"] = max(o.version for o in proto.opset_import)
        info["inputs"] = [_value_info(v) for v in proto.graph.input]
        info["outputs"] = [_value_info(v) for v in proto.graph.output]
        info["metadata"] = {p.key: p.value for p in proto.metadata_props}
    return info


def _value_info(v: Any) -> dict[str, Any]:
    dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    return {"name": v.name, "shape": dims}


def cmd_info(args: argparse.Namespace) -> int:
    info = model_info(args.name)
    if args.json:
        print_json(info)
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0
