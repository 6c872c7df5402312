"""Secret values: AES-256-GCM at rest, bound to where they live, with key rotation.

A stored secret reads ``mzenc:v1:<key id>:<base64 nonce+ciphertext>``; the associated data is
the value's location (a config key's app/env/cluster/namespace/key, a resource's kind/namespace/name
and field), so a ciphertext copied to another place does not decrypt. Keys come from
``MEZZO_SECRET_KEYS`` (comma-separated base64 keys, the first one encrypts) or else a key file
generated in the data directory on first start (``mezzo.node.keyring`` loads them once per node).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "mzenc:v1:"
MASK = "******"


class SecretError(ValueError):
    """A secret that cannot be decrypted with any configured key."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise ValueError("a secret key is 32 bytes in base64 (e.g. `openssl rand -base64 32`)") from None
    if len(key) != 32:
        raise ValueError(f"a secret key is 32 bytes in base64, this one is {len(key)} bytes")
    return key


class Keyring:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self.active = key_id(keys[0])
        self._ciphers = {key_id(k): AESGCM(k) for k in keys}

    @classmethod
    def load(cls, keys_setting: str | None, key_file: Path) -> Keyring:
        """From the setting if given, else from ``key_file`` (created with a new random key)."""
        if keys_setting:
            return cls([decode_key(part) for part in keys_setting.split(",") if part.strip()])
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(base64.b64encode(AESGCM.generate_key(bit_length=256)).decode() + "\n")
        lines = [line for line in key_file.read_text().splitlines() if line.strip() and not line.startswith("#")]
        return cls([decode_key(line) for line in lines])

    def encrypt(self, plaintext: str, where: str) -> str:
        nonce = os.urandom(12)
        sealed = self._ciphers[self.active].encrypt(nonce, plaintext.encode(), where.encode())
        return f"{PREFIX}{self.active}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, stored: str, where: str) -> str:
        if not stored.startswith(PREFIX):
            return stored  # written before the key was marked secret
        kid, _, blob = stored[len(PREFIX):].partition(":")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise SecretError(f"secret at {where} was encrypted with key {kid}, which is not configured")
        try:
            raw = base64.b64decode(blob, validate=True)
            return cipher.decrypt(raw[:12], raw[12:], where.encode()).decode()
        except (InvalidTag, ValueError):  # bad base64 or a cut value is not a ciphertext either
            raise SecretError(f"secret at {where} does not decrypt (tampered or moved)") from None

    def needs_rotation(self, stored: str) -> bool:
        return stored.startswith(PREFIX) and not stored.startswith(f"{PREFIX}{self.active}:")

    def rotate(self, stored: str, where: str) -> str:
        return self.encrypt(self.decrypt(stored, where), where)
