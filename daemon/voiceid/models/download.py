"""Fetch a model file: pinned URL + sha256, cached, resumable, atomic, clear errors.

``fetch`` downloads to ``<dest>.part`` (resuming it with an HTTP ``Range`` request when it
exists), verifies the sha256, fsyncs and only then ``os.replace``-s it onto ``dest``: a
file at ``dest`` is always complete and verified (when a hash is pinned).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, TextIO

from voiceid.errors import DownloadError

USER_AGENT = "voiceid-model-fetch/1"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class _Transient(Exception):
    """A failure worth retrying (resuming from what the part file holds)."""

    def __init__(self, error: DownloadError) -> None:
        super().__init__(str(error))
        self.error = error


class _Progress:
    """One ``\\r``-rewritten line on stderr: bytes, percent, MB/s."""

    def __init__(self, name: str, stream: TextIO, start: int, total: int | None) -> None:
        self.name, self.stream, self.start, self.total = name, stream, start, total
        self.t0 = time.monotonic()
        self.last = 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < 0.1:
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-6) / 1e6
        mb = done / 1e6
        if self.total:
            pct = 100.0 * done / self.total
            text = f"{self.name}: {mb:.1f}/{self.total / 1e6:.1f} MB {pct:5.1f}% {rate:.2f} MB/s"
        else:
            text = f"{self.name}: {mb:.1f} MB {rate:.2f} MB/s"
        self.stream.write("\r" + text.ljust(72) + ("\n" if final else ""))
        self.stream.flush()


def _by_hand(dest: Path, sha256: str | None) -> str:
    pin = f" (sha256 {sha256})" if sha256 else ""
    return f"place the file by hand at {dest}{pin} or set VOICEID_HOME to a directory that has it"


def fetch(
    url: str,
    dest: Path,
    sha256: str | None,
    *,
    progress: bool | None = None,
    timeout: float = 30.0,
    chunk: int = 1 << 16,
    attempts: int = 4,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` unless it is already there with hash ``sha256``.

    ``sha256`` None: no check (a present ``dest`` is trusted). ``progress`` None: a progress
    line on stderr only if stderr is a TTY. Transient failures (connection reset or
    refused, timeouts, truncated bodies, HTTP 5xx/429) are retried up to ``attempts``
    times in all, resuming the ``.part`` file, waiting ``backoff * 2**i`` seconds between
    tries. Raises :class:`~voiceid.errors.DownloadError` with a hint on failure; nothing is
    ever left at ``dest`` that did not match ``sha256``.
    """
    dest = Path(dest)
    expected = sha256.lower() if sha256 else None
    if dest.is_file() and (expected is None or sha256_file(dest) == expected):
        return dest
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(
            f"cannot create {dest.parent}: {e.strerror or e}",
            hint="set VOICEID_HOME to a writable directory",
        ) from e
    show = sys.stderr.isatty() if progress is None else progress
    restarted = False
    attempt = 0
    while True:
        attempt += 1
        try:
            resumed = _download(url, part, dest, expected, timeout, chunk, show)
        except _Transient as t:
            if attempt >= attempts:
                raise t.error from t.__cause__
            time.sleep(backoff * 2 ** (attempt - 1))
            continue
        if expected is not None:
            got = sha256_file(part)
            if got != expected:
                part.unlink(missing_ok=True)
                if resumed and not restarted:
                    # The old part may have been stale or corrupt: one clean try.
                    restarted = True
                    continue
                raise DownloadError(
                    f"sha256 mismatch for {url}: expected {expected}, got {got}",
                    hint=(
                        "nothing was kept; if you trust this file, pin it with "
                        f"`--sha256 {got}`, or place the right file by hand at {dest}"
                    ),
                )
        try:
            os.replace(part, dest)
            _fsync_dir(dest.parent)
        except OSError as e:
            raise DownloadError(
                f"cannot move {part} to {dest}: {e.strerror or e}",
                hint="check permissions and free space, or set VOICEID_HOME",
            ) from e
        return dest


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _download(
    url: str,
    part: Path,
    dest: Path,
    expected: str | None,
    timeout: float,
    chunk: int,
    show: bool,
) -> bool:
    """One HTTP request into ``part``. Returns True if it continued an existing part.

    Raises ``_Transient`` for retryable failures, ``DownloadError`` otherwise.
    """
    host = urllib.parse.urlsplit(url).hostname or url
    offset = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            return True  # the part already holds the whole file: verify it
        error = DownloadError(
            f"HTTP {e.code} {e.reason} for {url}",
            hint=f"check the URL or try again later; or {_by_hand(dest, expected)}",
        )
        if e.code >= 500 or e.code in (408, 429):
            raise _Transient(error) from e
        raise error from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        error = DownloadError(
            f"cannot reach {host}: {_describe(reason)}",
            hint=f"are you offline? {_by_hand(dest, expected)}",
        )
        if isinstance(reason, socket.gaierror):
            raise error from e  # DNS failure: retrying will not help
        raise _Transient(error) from e

    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else None
        resuming = False
        if offset and status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if m and int(m.group(1)) == offset:
                resuming = True
                total = int(m.group(3)) if m.group(3) != "*" else None
            else:  # not the range asked for: start over from 0 on the next try
                part.unlink(missing_ok=True)
                raise _Transient(_unexpected(url, dest, expected, "bad Content-Range"))
        elif status == 200:
            total = size  # full body: a server ignoring Range restarts us from 0
        else:
            raise _Transient(_unexpected(url, dest, expected, f"HTTP {status}"))
        start = offset if resuming else 0
        bar = _Progress(dest.name, sys.stderr, start, total) if show else None
        try:
            with open(part, "ab" if resuming else "wb") as f:
                done = _copy(resp, f, start, chunk, bar)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if isinstance(e, TimeoutError | ConnectionError):
                raise _Transient(
                    DownloadError(
                        f"connection to {host} lost after {part.stat().st_size} bytes: "
                        f"{_describe(e)}",
                        hint=f"run again to resume; or {_by_hand(dest, expected)}",
                    )
                ) from e
            raise DownloadError(
                f"cannot write {part}: {e.strerror or e}",
                hint="check free space and permissions, or set VOICEID_HOME",
            ) from e
        except http.client.IncompleteRead as e:
            raise _Transient(
                DownloadError(
                    f"connection to {host} closed after {part.stat().st_size} bytes "
                    f"of {total or '?'}",
                    hint=f"run again to resume; or {_by_hand(dest, expected)}",
                )
            ) from e
        finally:
            if bar:
                bar.update(part.stat().st_size if part.exists() else 0, final=True)
        if total is not None and done != total:
            raise _Transient(
                DownloadError(
                    f"connection to {host} closed after {done} bytes of {total}",
                    hint=f"run again to resume; or {_by_hand(dest, expected)}",
                )
            )
        return resuming


def _copy(
    src: http.client.HTTPResponse, dst: BinaryIO, done: int, chunk: int, bar: _Progress | None
) -> int:
    while block := src.read(chunk):
        dst.write(block)
        done += len(block)
        if bar:
            bar.update(done)
    return done


def _unexpected(url: str, dest: Path, expected: str | None, what: str) -> DownloadError:
    return DownloadError(
        f"unexpected answer from {url}: {what}",
        hint=f"try again later; or {_by_hand(dest, expected)}",
    )


def _describe(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"name lookup failed ({reason.strerror or reason})"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__
