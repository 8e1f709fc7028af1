"""``voiceid token new NAME --scope S`` and ``voiceid token hash``: API tokens.

``new`` prints a fresh token once (the daemon never stores it) and the ``auth.tokens``
entry to paste into config.yaml (its SHA-256 only). ``hash`` reads a token on stdin
(so it stays out of the shell history and ``ps``) and prints its SHA-256, for tokens
made elsewhere. See docs/security.md.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

from voiceid.cli.output import print_json
from voiceid.errors import ConfigError
from voiceid.security.tokens import (
    SCOPES,
    MalformedCredentials,
    check_token_syntax,
    hash_token,
    new_token,
)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


def register(sub: Any) -> None:
    t = sub.add_parser(
        "token",
        help="create API tokens for the WebSocket and REST API (auth.tokens)",
        description="API tokens: the daemon stores only their SHA-256 (auth.tokens in "
        "config.yaml). Scopes: stream (send audio, read events), enroll (enroll, verify, "
        "identify, list profiles), admin (delete/export/import profiles, thresholds).",
    )
    tsub = t.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    n = tsub.add_parser(
        "new",
        help="make a token: print it once, and the config entry to paste",
        description="Print a new random token (shown only now: store it in the client) "
        "and the auth.tokens entry holding its hash. Restart the daemon after adding it.",
    )
    n.add_argument("name", metavar="NAME", help="what the token is for, e.g. kitchen-satellite")
    n.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        required=True,
        help="a scope of the token (repeat for several)",
    )
    n.add_argument("--json", action="store_true", help="print {name, token, sha256, scopes}")
    n.set_defaults(func=cmd_new)
    h = tsub.add_parser(
        "hash",
        help="print the SHA-256 of a token read from stdin",
        description="Read one token from standard input (one line) and print the sha256 "
        "that auth.tokens stores for it.",
    )
    h.set_defaults(func=cmd_hash)


def _check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise ConfigError(
            f"token name {name[:80]!r} is not allowed",
            hint="1-64 characters of A-Z a-z 0-9 _ . @ -, starting with a letter or digit",
        )
    return name


def yaml_entry(name: str, digest: str, scopes: Sequence[str]) -> str:
    """The ``auth.tokens`` list item, indented for pasting under ``auth:`` ``tokens:``."""
    return f"    - name: {name}\n      sha256: {digest}\n      scopes: [{', '.join(scopes)}]\n"


def cmd_new(args: argparse.Namespace) -> int:
    name = _check_name(args.name)
    scopes = [s for s in SCOPES if s in set(args.scope)]  # canonical order, no repeats
    token = new_token()
    digest = hash_token(token)
    if args.json:
        print_json({"name": name, "token": token, "sha256": digest, "scopes": scopes})
        return 0
    print(f"token for {name} (shown only now; the daemon keeps only its hash):\n")
    print(f"  {token}\n")
    print("add this entry to config.yaml, then restart the daemon:\n")
    print("auth:\n  tokens:")
    print(yaml_entry(name, digest, scopes), end="")
    print(
        "\nclients send it as 'Authorization: Bearer <token>' (browsers' WebSockets: "
        "?token=<token>); the web page asks for it once per tab."
    )
    return 0


def cmd_hash(args: argparse.Namespace) -> int:
    line = sys.stdin.readline()
    token = line.strip()
    if not token:
        raise ConfigError("no token on stdin", hint="echo -n TOKEN | voiceid token hash")
    try:
        check_token_syntax(token)
    except MalformedCredentials as exc:
        raise ConfigError(f"not a token: {exc}") from None
    print(hash_token(token))
    return 0
