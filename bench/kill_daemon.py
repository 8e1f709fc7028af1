"""kill -9 the real daemon while it enrolls, N times; then check the profile database.

    .venv/bin/python bench/kill_daemon.py [--runs 100] [--audio DIR]

Each run starts ``voiceid run`` (resemblyzer-ge2e, loopback ports, one shared DB), waits
until ``/readyz`` answers, posts a one-shot enrollment of 3 utterances to the REST API
and sends SIGKILL at a random instant between the request and its answer (or right after
it). At the end: ``PRAGMA integrity_check`` (via ``ProfileStore.integrity_check``), every
profile has exactly 3 utterances and a centroid, and every enrollment the API confirmed
(HTTP 201) is present. Not in CI: about 2-4 s per run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from voiceid.cli.demo import find_audio, speaker_files
from voiceid.profiles.store import ProfileStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def multipart(name: str, files: list[Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n']
    body = "".join(parts).encode()
    for f in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="{f.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        body += head.encode() + f.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError("daemon not ready in time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--audio", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    spk = speaker_files(find_audio(args.audio))
    voices = [files[:3] for files in spk.values() if len(files) >= 3]
    work = Path(tempfile.mkdtemp(prefix="voiceid-kill-"))
    db = work / "profiles.db"
    confirmed: list[str] = []
    killed_during = 0
    t0 = time.monotonic()
    for run in range(args.runs):
        http, ws = free_port(), free_port()
        cfg = work / "config.yaml"
        cfg.write_text(
            f"model: {{name: resemblyzer-ge2e, device: cpu}}\ndb: {db}\n"
            f"websocket: {{port: {ws}}}\nhttp: {{port: {http}}}\nstdout_events: false\n"
            "engine: {max_batch: 4}\nlog: {level: ERROR}\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "voiceid", "run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=os.environ.copy(),
        )
        url = f"http://127.0.0.1:{http}"
        try:
            wait_ready(url, proc)
            name = f"run{run:03d}"
            body, ctype = multipart(name, voices[run % len(voices)])
            req = urllib.request.Request(
                url + "/api/v1/enroll", data=body, method="POST", headers={"Content-Type": ctype}
            )
            delay = rng.uniform(0.0, 0.5)  # the enrollment takes about 0.1-0.5 s here
            killer = threading.Timer(delay, proc.send_signal, args=(signal.SIGKILL,))
            killer.start()
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    if r.status == 201:
                        confirmed.append(name)
            except (urllib.error.URLError, OSError, ConnectionError):
                killed_during += 1
            killer.join()
        finally:
            proc.kill()
            proc.wait()
    with ProfileStore.open(db) as store:
        report = store.integrity_check()
        profiles = store.list()
        bad = [p.name for p in profiles if p.n_utterances != 3]
        names = {p.name for p in profiles}
    missing = [n for n in confirmed if n not in names]
    result = {
        "runs": args.runs,
        "killed_before_the_answer": killed_during,
        "confirmed_enrollments": len(confirmed),
        "profiles_in_db": len(profiles),
        "integrity": report,
        "profiles_not_3_utterances": bad,
        "confirmed_but_missing": missing,
        "seconds": round(time.monotonic() - t0, 1),
    }
    print(json.dumps(result, indent=1))
    ok = report == "ok" and not bad and not missing
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
