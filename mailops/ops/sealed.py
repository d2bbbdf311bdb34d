"""Client-side encryption and content addressing of backup objects.

A backup key (32 random bytes, kept outside the backup: see key_file) gives
two subkeys by HKDF: one names objects (HMAC-SHA256 of the plaintext's
SHA-256, so an unchanged message has the same name in every backup and is
stored once, while the name does not reveal a hash of the content), one
encrypts them (AES-256-GCM, a fresh nonce per object, the object's name as
associated data: an object moved to another name, truncated or altered
does not open).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mailops.core.errors import MailopsError
from mailops.core.paths import STATE_ROOT

MAGIC = b"MOB1"  # mailops object, format 1
KEY_ENV = "MAILOPS_BACKUP_KEY_FILE"


class SealError(MailopsError):
    """An object that does not open: wrong key, truncated or tampered."""


def key_file(inventory_dir: Path, lab_name: str | None) -> Path:
    """Where the backup key lives: never inside the inventory or the backup
    (a copy of it must be kept offline: without it no backup opens)."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV])
    name = lab_name or inventory_dir.resolve().name
    if lab_name:
        # Not under the lab's own folder: `lab down` must not take it along.
        return STATE_ROOT / "keys" / f"{name}.backup-key"
    return Path.home() / ".config" / "mailops" / f"{name}.backup-key"


def load_or_make_key(path: Path, create: bool) -> bytes:
    if not path.exists():
        if not create:
            raise MailopsError(f"{path}: no backup key there: restore needs the key the backup "
                               f"was made with (put it there, or point {KEY_ENV} at it)")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    try:
        key = base64.b64decode(path.read_text().strip(), validate=True)
    except ValueError as e:
        raise MailopsError(f"{path}: not a backup key (base64 of 32 bytes): {e}") from None
    if len(key) != 32:
        raise MailopsError(f"{path}: not a backup key (base64 of 32 bytes, this is "
                           f"{len(key)} bytes)")
    return key


def _derive(key: bytes, what: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=what).derive(key)


@dataclass(frozen=True)
class Sealer:
    key: bytes

    @property
    def key_id(self) -> str:
        """Names the key in a backup's manifest without revealing it."""
        return hashlib.sha256(_derive(self.key, b"mailops id")).hexdigest()[:16]

    def name(self, data: bytes) -> str:
        """The content address of a plaintext."""
        return self.name_of_digest(hashlib.sha256(data).hexdigest())

    def name_of_digest(self, sha256_hex: str) -> str:
        """The same, from the plaintext's SHA-256 (what a node reports about
        a message without sending it: only new messages are sent)."""
        return hmac.new(_derive(self.key, b"mailops name"), sha256_hex.encode(),
                        hashlib.sha256).hexdigest()

    def seal(self, name: str, data: bytes) -> bytes:
        nonce = os.urandom(12)
        return MAGIC + nonce + AESGCM(_derive(self.key, b"mailops seal")).encrypt(
            nonce, data, name.encode())

    def open(self, name: str, blob: bytes) -> bytes:
        if len(blob) < len(MAGIC) + 12 + 16 or not blob.startswith(MAGIC):
            raise SealError(f"object {name}: truncated or not a mailops backup object "
                            f"({len(blob)} bytes)")
        nonce, body = blob[len(MAGIC):len(MAGIC) + 12], blob[len(MAGIC) + 12:]
        try:
            return AESGCM(_derive(self.key, b"mailops seal")).decrypt(nonce, body,
                                                                      name.encode())
        except InvalidTag:
            raise SealError(f"object {name}: does not open with this key: the key is not the "
                            "one the backup was made with, or the object was altered or "
                            "truncated") from None
