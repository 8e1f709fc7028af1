"""Encryption of voice templates (embeddings, centroids) at rest: AES-256-GCM.

* The key is 32 random bytes, read from a file (raw, 64 hex digits or base64) or from
  systemd's credential directory (``$CREDENTIALS_DIRECTORY/<name>``, ``LoadCredential=``).
  It is never written to the profile database; the database keeps only its *key id*
  (:attr:`TemplateKey.key_id`, a domain-separated SHA-256 of the key, 16 hex digits),
  so a wrong key is reported clearly instead of as a pile of failed decryptions.
* Every blob gets a fresh random 96-bit nonce (``os.urandom``). With at most a few
  million blobs per key, the chance of a nonce repeating is far below 2^-32 (NIST SP
  800-38D's bound for random nonces).
* The associated data binds a blob to where it belongs: (profile id, kind, index). A
  blob copied into another profile, another row or from a centroid into an utterance
  fails authentication.

Blob layout (:data:`OVERHEAD` = 29 bytes over the float32 vector)::

    version (1 byte, 0x01) | nonce (12 bytes) | ciphertext (4·dim bytes) | tag (16 bytes)

What this does *not* protect: profile names, metadata, model fingerprints and
thresholds are stored in clear (names are needed to resolve ``verify NAME``), and an
attacker who can write the database can still delete or rename profiles. It protects
the biometric templates' confidentiality and integrity if the file (or a backup of it)
leaks or is tampered with.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from voiceid.errors import ConfigError, VoiceidError

if TYPE_CHECKING:
    from voiceid.config import SecuritySection

log = logging.getLogger(__name__)

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
BLOB_VERSION: Final = 1
#: Bytes an encrypted blob has over the plain float32 vector.
OVERHEAD: Final = 1 + NONCE_BYTES + TAG_BYTES
_AAD_PREFIX: Final = b"voiceid-template-v1\x00"
_KEY_ID_PREFIX: Final = b"voiceid-profile-key-id-v1\x00"
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_.@:-]{1,255}")
_HEX = re.compile(r"[0-9a-fA-F]{64}")

Kind = Literal["centroid", "utterance"]
KINDS: Final[tuple[str, ...]] = ("centroid", "utterance")


class TemplateAuthError(VoiceidError):
    """A blob failed authentication: wrong key, or the blob was altered or moved."""


def key_id_of(key: bytes) -> str:
    """The key's public id (16 hex digits); stored in the database, reveals nothing."""
    return hashlib.sha256(_KEY_ID_PREFIX + key).hexdigest()[:16]


def associated_data(profile_id: str, kind: str, index: int) -> bytes:
    """What a blob is bound to: its profile, its kind and its index."""
    if kind not in KINDS:
        raise ValueError(f"unknown template kind {kind!r}")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"template index must be an integer >= 0, got {index!r}")
    return _AAD_PREFIX + f"{profile_id}\x00{kind}\x00{index}".encode()


class TemplateKey:
    """A 256-bit AES-GCM key and where it came from (``source``, for messages).

    The key bytes never appear in ``repr``/``str`` or in any message.
    """

    __slots__ = ("_aead", "_key", "key_id", "source")

    def __init__(self, key: bytes, source: str = "<memory>") -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
            raise ConfigError(
                f"profile key from {source} must be {KEY_BYTES} bytes, got {size}",
                hint="make one with `voiceid key new FILE`",
            )
        try:  # imported here: a store without a key does not need the package
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise ConfigError(
                "encrypting profiles needs the 'cryptography' package",
                hint="pip install 'cryptography>=42'",
            ) from None
        self._key = bytes(key)
        self._aead: Any = AESGCM(self._key)
        self.key_id: str = key_id_of(self._key)
        self.source = source

    @classmethod
    def generate(cls) -> TemplateKey:
        return cls(os.urandom(KEY_BYTES), "<new>")

    def __repr__(self) -> str:
        return f"TemplateKey(id={self.key_id}, source={self.source!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TemplateKey):
            return NotImplemented
        return self.key_id == other.key_id

    def __hash__(self) -> int:
        return hash(self.key_id)

    def to_text(self) -> str:
        """The key as 64 hex digits (what ``voiceid key new`` writes)."""
        return self._key.hex()

    def encrypt(self, plaintext: bytes, *, profile_id: str, kind: Kind, index: int) -> bytes:
        """A blob (:data:`OVERHEAD` bytes longer than ``plaintext``) bound to its place."""
        nonce = os.urandom(NONCE_BYTES)
        aad = associated_data(profile_id, kind, index)
        return bytes([BLOB_VERSION]) + nonce + bytes(self._aead.encrypt(nonce, plaintext, aad))

    def decrypt(self, blob: bytes, *, profile_id: str, kind: Kind, index: int) -> bytes:
        """The plaintext of ``blob``; :class:`TemplateAuthError` when it does not
        authenticate (wrong key, altered bytes, or a blob of another profile/kind/index)."""
        if len(blob) < OVERHEAD:
            raise TemplateAuthError(f"encrypted blob too short ({len(blob)} bytes)")
        if blob[0] != BLOB_VERSION:
            raise TemplateAuthError(f"unknown encrypted blob version {blob[0]}")
        from cryptography.exceptions import InvalidTag

        nonce = blob[1 : 1 + NONCE_BYTES]
        aad = associated_data(profile_id, kind, index)
        try:
            return bytes(self._aead.decrypt(nonce, blob[1 + NONCE_BYTES :], aad))
        except InvalidTag:
            raise TemplateAuthError(
                f"{kind} {index} of profile {profile_id} fails authentication",
                hint="wrong key, or the database was altered",
            ) from None


# ----------------------------------------------------------------------------- loading


def parse_key(data: bytes, source: str) -> TemplateKey:
    """A key from file contents: exactly 32 raw bytes, or text holding 64 hex digits or
    the base64 (standard or URL-safe, padding optional) of 32 bytes.

    32 bytes that are all printable ASCII are refused: that is a passphrase, not a
    random key (a random key looks like that with probability ~1e-14)."""
    if len(data) == KEY_BYTES:
        if all(0x20 <= b <= 0x7E for b in data):
            raise ConfigError(
                f"profile key {source} looks like a 32-character passphrase, not a key",
                hint="use 32 random bytes: `voiceid key new FILE`",
            )
        return TemplateKey(data, source)
    bad = ConfigError(
        f"profile key {source} holds no valid key ({len(data)} bytes)",
        hint=f"it must be {KEY_BYTES} raw bytes, 64 hex digits or base64 of {KEY_BYTES} "
        "bytes; make one with `voiceid key new FILE`",
    )
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise bad from None
    if _HEX.fullmatch(text):
        return TemplateKey(bytes.fromhex(text), source)
    compact = "".join(text.split())
    padded = compact + "=" * (-len(compact) % 4)
    for alphabet in (b"+/", b"-_"):
        try:
            raw = base64.b64decode(padded, altchars=alphabet, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == KEY_BYTES:
            return TemplateKey(raw, source)
    raise bad


def load_key_file(path: Path | str, *, what: str = "profile key file") -> TemplateKey:
    """Read a key file. Warns when group or others may read it (it should be 0600/0400)."""
    p = Path(path).expanduser()
    try:
        # O_NONBLOCK: a FIFO in its place must not hang the daemon
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise ConfigError(f"{what} {p} is not a regular file")
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(
            f"cannot read {what} {p}: {exc.strerror or exc}",
            hint="check the path and that voiceid's user may read it "
            "(make a key with `voiceid key new FILE`)",
        ) from None
    if mode & 0o077:
        log.warning(
            "%s %s is readable by group or others (mode %03o): chmod 600 it",
            what,
            p,
            stat.S_IMODE(mode),
        )
    return parse_key(data, str(p))


def load_credential(name: str, environ: Mapping[str, str] | None = None) -> TemplateKey:
    """The key systemd passed as credential ``name`` (``LoadCredential=name:/path``)."""
    env = os.environ if environ is None else environ
    if not _CREDENTIAL_NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"security.profile_key_credential: invalid credential name {name!r}")
    creds = env.get("CREDENTIALS_DIRECTORY")
    if not creds:
        raise ConfigError(
            f"security.profile_key_credential is {name!r} but $CREDENTIALS_DIRECTORY is not set",
            hint="run under systemd with LoadCredential=, or use security.profile_key_file",
        )
    return load_key_file(Path(creds) / name, what="profile key credential")


def profile_key(
    security: SecuritySection, environ: Mapping[str, str] | None = None
) -> TemplateKey | None:
    """The key configured in ``security`` (``profile_key_file`` or
    ``profile_key_credential``), or None when profiles are to be stored in clear."""
    if security.profile_key_file is not None and security.profile_key_credential is not None:
        raise ConfigError(
            "security: set profile_key_file or profile_key_credential, not both",
            hint="profile_key_credential is for systemd LoadCredential=",
        )
    if security.profile_key_file is not None:
        return load_key_file(security.profile_key_file)
    if security.profile_key_credential is not None:
        return load_credential(security.profile_key_credential, environ)
    return None


#: What the command line reads (the daemon reads ``security.*`` from its config, where
#: the same variables override the file).
ENV_KEY_FILE = "VOICEID_SECURITY__PROFILE_KEY_FILE"
ENV_KEY_CREDENTIAL = "VOICEID_SECURITY__PROFILE_KEY_CREDENTIAL"


def env_profile_key(environ: Mapping[str, str] | None = None) -> TemplateKey | None:
    """The key named by ``$VOICEID_SECURITY__PROFILE_KEY_FILE`` (or ``..._CREDENTIAL``),
    for commands that have no config file; None when neither is set."""
    env = os.environ if environ is None else environ
    path, cred = env.get(ENV_KEY_FILE) or None, env.get(ENV_KEY_CREDENTIAL) or None
    if path is not None and cred is not None:
        raise ConfigError(f"set ${ENV_KEY_FILE} or ${ENV_KEY_CREDENTIAL}, not both")
    if path is not None:
        return load_key_file(path)
    if cred is not None:
        return load_credential(cred, env)
    return None


def write_new_key(path: Path | str) -> TemplateKey:
    """Create ``path`` (mode 0600, never overwriting) holding a new key as hex text."""
    p = Path(path).expanduser()
    key = TemplateKey.generate()
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"{p} already exists; a key file is never overwritten",
            hint="choose another path (losing a key loses the profiles encrypted with it)",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot create {p}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key.to_text() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        p.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {p}: {exc.strerror or exc}") from None
    key.source = str(p)
    return key
