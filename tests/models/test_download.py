"""fetch() against a real HTTP server on 127.0.0.1: resume, restart, hash errors, offline."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from voiceid.errors import DownloadError
from voiceid.models.download import fetch, sha256_file

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
CUT = 100_000


@dataclass
class Behaviour:
    mode: str = "normal"  # normal | cut | cut-once | ignore-range | 404 | 500
    requests: list[str | None] = field(default_factory=list)  # Range header of each request


class Handler(http.server.BaseHTTPRequestHandler):
    behaviour: Behaviour  # set per server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        b = self.behaviour
        rng = self.headers.get("Range")
        b.requests.append(rng)
        if b.mode in ("404", "500"):
            self.send_error(int(b.mode))
            return
        start = 0
        if rng and b.mode != "ignore-range":
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            assert m, rng
            start = int(m.group(1))
            if start >= len(DATA):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(DATA)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
        else:
            self.send_response(200)
        body = DATA[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        cut = b.mode == "cut" or (b.mode == "cut-once" and len(b.requests) == 1)
        if cut:
            self.wfile.write(body[:CUT])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self.wfile.write(body)


@pytest.fixture()
def server() -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour()
    handler = type("H", (Handler,), {"behaviour": behaviour})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/models/m.onnx", behaviour
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def test_sha256_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(DATA)
    assert sha256_file(p) == SHA


def test_success(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, b = server
    dest = tmp_path / "cache" / "m.onnx"
    assert fetch(url, dest, SHA, progress=False) == dest
    assert dest.read_bytes() == DATA
    assert not _part(dest).exists()
    assert b.requests == [None]


def test_uppercase_hash_and_no_hash(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, _ = server
    fetch(url, tmp_path / "a", SHA.upper(), progress=False)
    fetch(url, tmp_path / "b", None, progress=False)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes() == DATA


def test_progress_line_on_stderr(
    server: tuple[str, Behaviour], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = server
    fetch(url, tmp_path / "m.onnx", SHA, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "\r" in captured.err and "100.0%" in captured.err and "MB/s" in captured.err
    assert captured.err.endswith("\n")


def test_wrong_hash(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, _ = server
    dest = tmp_path / "m.onnx"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as info:
        fetch(url, dest, wrong, progress=False)
    msg = str(info.value)
    assert wrong in msg and SHA in msg
    assert f"--sha256 {SHA}" in msg and "by hand" in msg and str(dest) in msg
    assert not dest.exists()
    assert not _part(dest).exists()


def test_interrupted_then_resumed(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, b = server
    dest = tmp_path / "m.onnx"
    b.mode = "cut"
    with pytest.raises(DownloadError, match="resume"):
        fetch(url, dest, SHA, progress=False, attempts=1)
    assert not dest.exists()
    assert _part(dest).stat().st_size == CUT
    b.mode = "normal"
    fetch(url, dest, SHA, progress=False)
    assert b.requests == [None, f"bytes={CUT}-"]
    assert sha256_file(dest) == SHA
    assert not _part(dest).exists()


def test_retry_resumes_within_one_call(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, b = server
    b.mode = "cut-once"
    dest = tmp_path / "m.onnx"
    fetch(url, dest, SHA, progress=False, backoff=0.0)
    assert b.requests == [None, f"bytes={CUT}-"]
    assert dest.read_bytes() == DATA


def test_server_ignores_range(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, b = server
    dest = tmp_path / "m.onnx"
    _part(dest).write_bytes(DATA[:CUT])
    b.mode = "ignore-range"
    fetch(url, dest, SHA, progress=False)
    assert b.requests == [f"bytes={CUT}-"]  # asked, got 200, restarted from 0
    assert dest.read_bytes() == DATA
    assert not _part(dest).exists()


def test_complete_part_416(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, b = server
    dest = tmp_path / "m.onnx"
    _part(dest).write_bytes(DATA)
    fetch(url, dest, SHA, progress=False)
    assert b.requests == [f"bytes={len(DATA)}-"]
    assert dest.read_bytes() == DATA


def test_corrupt_part_is_restarted_once(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, b = server
    dest = tmp_path / "m.onnx"
    _part(dest).write_bytes(b"\0" * CUT)  # stale garbage
    fetch(url, dest, SHA, progress=False)
    assert b.requests == [f"bytes={CUT}-", None]
    assert dest.read_bytes() == DATA


def test_already_present(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, b = server
    dest = tmp_path / "m.onnx"
    dest.write_bytes(DATA)
    assert fetch(url, dest, SHA, progress=False) == dest
    assert b.requests == []


def test_present_but_wrong_is_replaced(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, b = server
    dest = tmp_path / "m.onnx"
    dest.write_bytes(b"old")
    fetch(url, dest, SHA, progress=False)
    assert dest.read_bytes() == DATA and b.requests == [None]


def test_no_network(tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "m.onnx"
    with pytest.raises(DownloadError) as info:
        fetch(f"http://127.0.0.1:{port}/m.onnx", dest, SHA, progress=False, backoff=0.0)
    msg = str(info.value)
    assert "cannot reach 127.0.0.1" in msg and "connection refused" in msg
    assert "offline" in msg and f"by hand at {dest} (sha256 {SHA})" in msg
    assert "VOICEID_HOME" in msg
    assert not dest.exists()


def test_http_404(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, b = server
    b.mode = "404"
    with pytest.raises(
        DownloadError, match=r"HTTP 404 .* for http://127\.0\.0\.1:\d+/models/m.onnx"
    ):
        fetch(url, tmp_path / "m.onnx", SHA, progress=False)
    assert b.requests == [None]  # not retried
    assert not (tmp_path / "m.onnx").exists()


def test_http_500_is_retried(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, b = server
    b.mode = "500"
    with pytest.raises(DownloadError, match="HTTP 500"):
        fetch(url, tmp_path / "m.onnx", SHA, progress=False, attempts=3, backoff=0.0)
    assert len(b.requests) == 3
