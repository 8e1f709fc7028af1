"""``voiceid key new|id|rotate`` and ``voiceid profiles encrypt``: the template key.

The key (32 random bytes) encrypts every enrolled embedding at rest (AES-256-GCM, see
:mod:`voiceid.security.templates`); the daemon reads it from
``security.profile_key_file`` or the systemd credential ``security.profile_key_credential``.
Losing the key loses the profiles encrypted with it: keep a copy (or an export) safe.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from voiceid.cli.output import print_json
from voiceid.errors import ConfigError
from voiceid.profiles.store import ProfileStore
from voiceid.security.templates import load_key_file, write_new_key


def register(sub: Any) -> None:
    k = sub.add_parser("key", help="the key that encrypts profiles at rest (new, id, rotate)")
    ksub = k.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    new = ksub.add_parser(
        "new",
        help="write a new random key to FILE (mode 0600; never overwrites)",
    )
    new.add_argument("file", type=Path)
    new.add_argument("--json", action="store_true")
    new.set_defaults(func=cmd_new)
    kid = ksub.add_parser("id", help="the key id of FILE (the database stores only this id)")
    kid.add_argument("file", type=Path)
    kid.add_argument("--json", action="store_true")
    kid.set_defaults(func=cmd_id)
    rot = ksub.add_parser(
        "rotate",
        help="re-encrypt every profile from the old key to the new one (one transaction)",
        description="Re-encrypt every template of the database from --old to --new in one "
        "transaction (all or nothing). Stop the daemon first, then point "
        "security.profile_key_file at the new key and start it again.",
    )
    rot.add_argument("--old", type=Path, required=True, metavar="FILE", help="the current key")
    rot.add_argument("--new", type=Path, required=True, metavar="FILE", help="the new key")
    rot.add_argument("--json", action="store_true")
    rot.set_defaults(func=cmd_rotate)
    _register_encrypt(sub)


def _register_encrypt(sub: Any) -> None:
    """``voiceid profiles encrypt``: added to the ``profiles`` group (registered before)."""
    profiles = sub.choices.get("profiles")
    actions = [
        a for a in getattr(profiles, "_actions", []) if isinstance(a, argparse._SubParsersAction)
    ]
    if not actions:
        raise RuntimeError("register voiceid.cli.keys after voiceid.cli.profiles (COMMANDS)")
    enc = actions[0].add_parser(
        "encrypt",
        help="encrypt the profiles stored in clear with a key (explicit, one transaction)",
        description="Encrypt every template of a database stored in clear with the key in "
        "--key-file (AES-256-GCM), in one transaction; the database is bound to that key "
        "from then on. Then set security.profile_key_file to the same file.",
    )
    enc.add_argument("--key-file", type=Path, required=True, metavar="FILE")
    enc.add_argument("--json", action="store_true")
    enc.set_defaults(func=cmd_encrypt)


def cmd_new(args: argparse.Namespace) -> int:
    key = write_new_key(args.file)
    if args.json:
        print_json({"file": str(args.file), "key_id": key.key_id})
    else:
        print(f"wrote a new key to {args.file} (key id {key.key_id}, mode 0600)")
        print(f"next: voiceid profiles encrypt --key-file {args.file}")
        print(f"      and set security.profile_key_file: {args.file}")
        print("keep a copy somewhere safe: without it the encrypted profiles are lost")
    return 0


def cmd_id(args: argparse.Namespace) -> int:
    key = load_key_file(args.file)
    if args.json:
        print_json({"file": str(args.file), "key_id": key.key_id})
    else:
        print(key.key_id)
    return 0


def cmd_encrypt(args: argparse.Namespace) -> int:
    key = load_key_file(args.key_file)
    with ProfileStore.open(args.db, key=key, encrypt=True) as store:
        n, total, path = store.encrypted_on_open, store.count(), store.path
    if args.json:
        print_json({"db": str(path), "key_id": key.key_id, "encrypted": n, "profiles": total})
    elif n:
        print(f"encrypted {n} profile(s) in {path} with key {key.key_id}")
        print(f"set security.profile_key_file: {args.key_file}")
    else:
        print(f"{path} is encrypted with key {key.key_id} ({total} profile(s)); nothing to do")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    old = load_key_file(args.old)
    new = load_key_file(args.new)
    if old == new:
        raise ConfigError("--old and --new hold the same key", hint="voiceid key new FILE")
    with ProfileStore.open(args.db, key=old) as store:
        n = store.rotate_key(old, new)
        path = store.path
    if args.json:
        print_json({"db": str(path), "old_key_id": old.key_id, "key_id": new.key_id, "profiles": n})
    else:
        print(f"re-encrypted {n} profile(s) in {path}: key {old.key_id} -> {new.key_id}")
        print(f"set security.profile_key_file: {args.new} and restart voiceid")
    return 0
