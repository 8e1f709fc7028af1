"""Enroll a person through a voiceid daemon's REST API, with feedback per recording.

    python -m voiceid_clients.enroll alice alice-1.flac alice-2.flac alice-3.flac
    python -m voiceid_clients.enroll --replace --url http://host:8766 alice *.wav

By default an enrollment session is used (``POST /api/v1/enrollments``, one upload per
recording): each file's feedback (``ok``, ``too_short``, ``no_voice``, ``clipping``, ...)
and the progress print as soon as the daemon has judged it. ``--one-shot`` sends every
file in one request (``POST /api/v1/enroll``). Nothing is written unless the policy is
met. Files are uploaded as they are (any format the daemon's libsndfile reads).

Exit status: 0 enrolled, 1 not enough good speech (nothing written), 2 any other error.
Only the standard library talks HTTP here (``urllib``); see docs/rest.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mimetypes
import os
import secrets
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8766"
TIMEOUT_S = 120.0


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, hint: str | None, details: Any
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.hint = status, code, message, hint
        self.details = details

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def multipart(fields: dict[str, str], files: Sequence[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type; files are (field, filename, data)."""
    boundary = "voiceid-" + secrets.token_hex(16)
    out = bytearray()
    for key, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    for key, filename, data in files:
        safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
        ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; '
            f'filename="{safe}"\r\nContent-Type: {ctype}\r\n\r\n'
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


class Client:
    """The few REST calls enrollment needs."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.token = token
        self.base = url.rstrip("/")

    def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        form: tuple[bytes, str] | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data: bytes | None = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif form is not None:
            data, headers["Content-Type"] = form
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                err = {"code": f"http_{exc.code}", "message": raw.decode(errors="replace")[:200]}
            raise ApiError(
                exc.code,
                err.get("code", ""),
                err.get("message", ""),
                err.get("hint"),
                err.get("details"),
            ) from None
        return json.loads(body) if body else None


def feedback_line(i: int, total: int, r: dict[str, Any]) -> str:
    codes = ",".join(r["feedback"])
    level = "" if r.get("level_dbfs") is None else f"  level {r['level_dbfs']:.1f} dBFS"
    cons = "" if r.get("consistency") is None else f"  consistency {r['consistency']:.3f}"
    p = r["progress"]
    line = (
        f"[{i}/{total}] {r['source']}: {codes}  speech {r['speech_s']:.1f} s{level}{cons}  -> "
        f"{p['collected_s']:.1f}/{p['required_s']:g} s, {p['utterances']}/"
        f"{p['required_utterances']} utterances, {p['percent']}%"
    )
    if not r["accepted"]:
        line += "  (" + "; ".join(r["advice"]) + ")"
    return line


def read_files(paths: Sequence[str]) -> list[tuple[str, bytes]]:
    out = []
    for p in paths:
        try:
            out.append((Path(p).name, Path(p).read_bytes()))
        except OSError as exc:
            raise SystemExit(f"enroll: error: cannot read {p}: {exc.strerror or exc}") from None
    return out


def enroll_session(client: Client, args: argparse.Namespace, files: list[tuple[str, bytes]]) -> int:
    state = client.call(
        "POST", "/api/v1/enrollments", json_body={"name": args.name, "replace": args.replace}
    )
    eid, name = state["id"], state["name"]
    p = state["progress"]
    if not args.json:
        print(
            f"enrolling {name!r}: needs {p['required_utterances']} accepted recordings and "
            f"{p['required_s']:g} s of speech"
        )
    results = []
    try:
        for i, (filename, data) in enumerate(files, 1):
            r = client.call(
                "POST",
                f"/api/v1/enrollments/{eid}/utterances",
                form=multipart({}, [("file", filename, data)]),
            )
            results.append(r)
            if not args.json:
                print(feedback_line(i, len(files), r), flush=True)
        progress = results[-1]["progress"] if results else state["progress"]
        if not progress["complete"]:
            print(
                f"enroll: not enrolled: it still needs {progress['missing']}; nothing was written "
                "(add more recordings of the same person: longer sentences, a quiet room)",
                file=sys.stderr,
            )
            if args.json:
                print(json.dumps({"name": name, "committed": False, "utterances": results}))
            return 1
        profile = client.call("POST", f"/api/v1/enrollments/{eid}/finish", json_body={})
        eid = ""
    finally:
        if eid:
            with contextlib.suppress(ApiError, OSError):  # else it expires by itself
                client.call("DELETE", f"/api/v1/enrollments/{eid}")
    if args.json:
        print(
            json.dumps({"name": name, "committed": True, "utterances": results, "profile": profile})
        )
    else:
        print(
            f"enrolled {profile['name']!r}: {profile['utterances']} recordings, "
            f"{profile['speech_s']:.1f} s of speech, model {profile['model']} (id {profile['id']})"
        )
    return 0


def enroll_one_shot(
    client: Client, args: argparse.Namespace, files: list[tuple[str, bytes]]
) -> int:
    fields = {"name": args.name, "replace": "true" if args.replace else "false"}
    try:
        result = client.call(
            "POST", "/api/v1/enroll", form=multipart(fields, [("files", n, d) for n, d in files])
        )
    except ApiError as exc:
        if exc.code != "enrollment_incomplete" or not isinstance(exc.details, dict):
            raise
        result = exc.details
    if args.json:
        print(json.dumps(result))
    else:
        for i, r in enumerate(result["utterances"], 1):
            print(feedback_line(i, len(files), r))
    if not result["committed"]:
        print(
            f"enroll: not enrolled: it still needs {result['progress']['missing']}; "
            "nothing was written",
            file=sys.stderr,
        )
        return 1
    profile = result["profile"]
    if not args.json:
        print(
            f"enrolled {profile['name']!r}: {profile['utterances']} recordings, "
            f"{profile['speech_s']:.1f} s of speech, model {profile['model']} (id {profile['id']})"
        )
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m voiceid_clients.enroll",
        description="Enroll a person from recordings through a voiceid daemon's REST API.",
    )
    p.add_argument("name", metavar="NAME", help="the person's name (1-100 characters)")
    p.add_argument("files", nargs="+", metavar="FILE", help="recordings of NAME speaking")
    p.add_argument(
        "--url", default=DEFAULT_URL, help=f"the daemon's HTTP API (default {DEFAULT_URL})"
    )
    p.add_argument("--replace", action="store_true", help="re-enroll an existing profile")
    p.add_argument(
        "--token",
        default=os.environ.get("VOICEID_TOKEN"),
        help="API token with the enroll scope (default: $VOICEID_TOKEN)",
    )
    p.add_argument(
        "--one-shot",
        action="store_true",
        help="send all files in one request (POST /api/v1/enroll)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    files = read_files(args.files)
    client = Client(args.url, args.token)
    try:
        if args.one_shot:
            return enroll_one_shot(client, args, files)
        return enroll_session(client, args, files)
    except ApiError as exc:
        print(f"enroll: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # connection refused, timeout
        reason = getattr(exc, "reason", exc)
        print(f"enroll: error: cannot reach {args.url}: {reason}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
