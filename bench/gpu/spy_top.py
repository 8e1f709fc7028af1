"""Summarise a ``py-spy record --format raw --threads`` file: where the samples went.

    python3 bench/gpu/spy_top.py FILE [--top 15]

Prints samples per thread, the top leaf frames (self time), and the top frames of the
daemon's own code (``voiceid``) counted inclusively, each as a share of all samples.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func file.py:12``."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    name = Path(m["file"]).name
    return f"{m['func']} {name}:{m['line']}" if m["line"] else f"{m['func']} {name}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("file", type=Path)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    threads: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    total = 0
    for line in args.file.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        threads[frames[0]] += n
        leaves[short(frames[-1])] += n
        for f in {short(f) for f in frames[1:] if "voiceid" in f}:
            ours[f] += n
    print(f"{total} samples")
    for title, counter in (("threads", threads), ("self", leaves), ("voiceid, inclusive", ours)):
        print(f"-- {title}")
        for name, n in counter.most_common(args.top):
            print(f"{100 * n / max(total, 1):6.1f}%  {name[:110]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
