"""AES-GCM template encryption: round trips, binding to (profile, kind, index), tamper
detection, key files (raw / hex / base64), systemd credentials, ``voiceid key new``."""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voiceid.config import SecuritySection
from voiceid.errors import ConfigError
from voiceid.security.templates import (
    KEY_BYTES,
    OVERHEAD,
    TemplateAuthError,
    TemplateKey,
    associated_data,
    env_profile_key,
    key_id_of,
    load_credential,
    load_key_file,
    parse_key,
    profile_key,
    write_new_key,
)

pytest.importorskip("cryptography", reason="pyproject: cryptography>=42")

PID = "0123456789abcdef0123456789abcdef"
RAW = bytes(range(32))


@pytest.fixture()
def key() -> TemplateKey:
    return TemplateKey(RAW, "test")


def test_round_trip_and_layout(key: TemplateKey) -> None:
    plain = os.urandom(4 * 192)
    blob = key.encrypt(plain, profile_id=PID, kind="utterance", index=3)
    assert len(blob) == len(plain) + OVERHEAD
    assert blob[0] == 1 and plain not in blob
    assert key.decrypt(blob, profile_id=PID, kind="utterance", index=3) == plain


def test_fresh_nonce_per_blob(key: TemplateKey) -> None:
    plain = b"\0" * 64
    blobs = {key.encrypt(plain, profile_id=PID, kind="centroid", index=0) for _ in range(200)}
    assert len(blobs) == 200
    assert len({b[1:13] for b in blobs}) == 200


@pytest.mark.parametrize(
    ("pid", "kind", "index"),
    [
        ("f" * 32, "utterance", 0),  # another profile
        (PID, "centroid", 0),  # another kind
        (PID, "utterance", 1),  # another row
    ],
)
def test_blob_is_bound_to_its_place(key: TemplateKey, pid: str, kind: str, index: int) -> None:
    blob = key.encrypt(b"x" * 32, profile_id=PID, kind="utterance", index=0)
    with pytest.raises(TemplateAuthError, match="fails authentication"):
        key.decrypt(blob, profile_id=pid, kind=kind, index=index)  # type: ignore[arg-type]


def test_wrong_key_and_damaged_blobs(key: TemplateKey) -> None:
    blob = key.encrypt(b"y" * 64, profile_id=PID, kind="centroid", index=0)
    other = TemplateKey(bytes(32), "other")
    with pytest.raises(TemplateAuthError):
        other.decrypt(blob, profile_id=PID, kind="centroid", index=0)
    with pytest.raises(TemplateAuthError, match="too short"):
        key.decrypt(blob[:20], profile_id=PID, kind="centroid", index=0)
    with pytest.raises(TemplateAuthError, match="version"):
        key.decrypt(b"\x02" + blob[1:], profile_id=PID, kind="centroid", index=0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plain=st.binary(max_size=2048),
    index=st.integers(0, 10**6),
    kind=st.sampled_from(["centroid", "utterance"]),
    flip=st.integers(0, 10**9),
    bit=st.integers(0, 7),
)
def test_any_flipped_bit_is_detected(
    plain: bytes, index: int, kind: str, flip: int, bit: int
) -> None:
    key = TemplateKey(RAW, "test")
    blob = key.encrypt(plain, profile_id=PID, kind=kind, index=index)  # type: ignore[arg-type]
    assert key.decrypt(blob, profile_id=PID, kind=kind, index=index) == plain  # type: ignore[arg-type]
    pos = flip % len(blob)
    bad = bytearray(blob)
    bad[pos] ^= 1 << bit
    with pytest.raises(TemplateAuthError):
        key.decrypt(bytes(bad), profile_id=PID, kind=kind, index=index)  # type: ignore[arg-type]


def test_associated_data_rejects_bad_places() -> None:
    with pytest.raises(ValueError):
        associated_data(PID, "speaker", 0)
    with pytest.raises(ValueError):
        associated_data(PID, "centroid", -1)
    assert associated_data(PID, "centroid", 1) != associated_data(PID, "centroid", 10)


def test_key_id_and_repr_do_not_leak(key: TemplateKey) -> None:
    assert key.key_id == key_id_of(RAW) and len(key.key_id) == 16
    assert int(key.key_id, 16) >= 0
    assert key.key_id != TemplateKey(bytes(32)).key_id
    for text in (repr(key), str(key)):
        assert RAW.hex() not in text and key.key_id in text
    assert key == TemplateKey(RAW, "elsewhere") and key != TemplateKey(bytes(32))


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_wrong_key_sizes(size: int) -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        TemplateKey(b"k" * size)


@pytest.mark.parametrize(
    "encode",
    [
        lambda k: k,
        lambda k: k.hex().encode(),
        lambda k: (k.hex().upper() + "\n").encode(),
        lambda k: base64.b64encode(k) + b"\n",
        lambda k: base64.urlsafe_b64encode(k).rstrip(b"="),
        lambda k: b"  " + base64.b64encode(k) + b"\r\n",
    ],
    ids=["raw", "hex", "HEX-newline", "base64", "urlsafe-nopad", "base64-spaces"],
)
def test_parse_key_formats(encode: object) -> None:
    raw = os.urandom(KEY_BYTES)
    assert parse_key(encode(raw), "f") == TemplateKey(raw)  # type: ignore[operator]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\n",
        b"z" * 64,  # not hex
        bytes(33),
        ("ab" * 31).encode(),  # 31 bytes of hex
        base64.b64encode(bytes(24)),  # 24 bytes
        "é".encode() * 40,
    ],
    ids=["empty", "newline", "not-hex", "33-bytes", "31-hex", "b64-24", "utf8"],
)
def test_parse_key_refuses_garbage(data: bytes) -> None:
    with pytest.raises(ConfigError, match=r"holds no valid key|passphrase"):
        parse_key(data, "f")


def test_passphrase_is_not_a_key() -> None:
    with pytest.raises(ConfigError, match="passphrase"):
        parse_key(b"correct horse battery staple 123", "f")


def test_key_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match="cannot read profile key file"):
        load_key_file(tmp_path / "missing")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_key_file(tmp_path)
    f = tmp_path / "k"
    f.write_text(RAW.hex())
    f.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        assert load_key_file(f) == TemplateKey(RAW)
    assert not caplog.records
    f.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        load_key_file(f)
    assert "readable by group or others" in caplog.text
    assert RAW.hex() not in caplog.text


def test_credentials(tmp_path: Path) -> None:
    (tmp_path / "profile-key").write_bytes(RAW)
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert load_credential("profile-key", env) == TemplateKey(RAW)
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set"):
        load_credential("profile-key", {})
    for bad in ("../profile-key", "a/b", "", ".."):
        with pytest.raises(ConfigError, match="invalid credential name"):
            load_credential(bad, env)
    with pytest.raises(ConfigError, match="cannot read profile key credential"):
        load_credential("other", env)


def test_profile_key_from_settings(tmp_path: Path) -> None:
    f = tmp_path / "k"
    f.write_bytes(RAW)
    assert profile_key(SecuritySection()) is None
    assert profile_key(SecuritySection(profile_key_file=f)) == TemplateKey(RAW)
    (tmp_path / "cred").write_bytes(RAW)
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert profile_key(SecuritySection(profile_key_credential="cred"), env) == TemplateKey(RAW)
    with pytest.raises(ConfigError, match="not both"):
        profile_key(SecuritySection(profile_key_file=f, profile_key_credential="cred"), env)


def test_write_new_key(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        key = write_new_key(tmp_path / "new.key")
    finally:
        os.umask(old)
    path = tmp_path / "new.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path) == key and key.source == str(path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="never overwritten"):
        write_new_key(path)
    assert path.read_bytes() == before
    assert write_new_key(tmp_path / "other.key") != key
    with pytest.raises(ConfigError, match="cannot create"):
        write_new_key(tmp_path / "no" / "such" / "dir.key")


def test_env_profile_key(tmp_path: Path) -> None:
    f = tmp_path / "k"
    f.write_bytes(RAW)
    (tmp_path / "cred").write_bytes(RAW)
    assert env_profile_key({}) is None
    assert env_profile_key({"VOICEID_SECURITY__PROFILE_KEY_FILE": str(f)}) == TemplateKey(RAW)
    env = {
        "VOICEID_SECURITY__PROFILE_KEY_CREDENTIAL": "cred",
        "CREDENTIALS_DIRECTORY": str(tmp_path),
    }
    assert env_profile_key(env) == TemplateKey(RAW)
    with pytest.raises(ConfigError, match="not both"):
        env_profile_key({**env, "VOICEID_SECURITY__PROFILE_KEY_FILE": str(f)})
