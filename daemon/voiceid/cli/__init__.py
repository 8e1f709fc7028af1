"""``voiceid`` command line: one sub-module per command group.

Errors: every ``VoiceidError`` is printed as one line on stderr and the process exits
with its ``exit_code`` (docs/cli.md lists them); no tracebacks unless ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from voiceid import __version__
from voiceid.cli import bench, demo, doctor, embed, evaluate, keys, models, profiles, run, token
from voiceid.errors import VoiceidError

COMMANDS = (models, embed, run, demo, bench, profiles, evaluate, doctor, keys, token)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voiceid", description="Real-time streaming speaker verification."
    )
    parser.add_argument("--version", action="version", version=f"voiceid {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "--db", metavar="PATH", help="profiles database (default: STATE_DIR/profiles.db)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        code: int = args.func(args)
    except VoiceidError as exc:
        if args.debug:
            raise
        print(f"voiceid: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # e.g. `voiceid embed ... | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("voiceid: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
