"""Encryption at rest of webhook signing secrets.

The dispatcher must sign with the plaintext secret, so it cannot be stored as a hash. It is
sealed with AES-256-GCM under a key from ``tapedeck.server_keys`` (derived from
``TAPEDECK_SECRET_KEY``, or by default ``webhook-secrets.key`` in the data directory, mode
0600; never in SQLite). The endpoint id is the associated data, so a sealed secret
copied onto another endpoint's row does not open. Format: ``v1.`` + urlsafe base64 of
``nonce(12) || ciphertext || tag(16)``.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tapedeck.infra import keyfile

KEY_FILE = "webhook-secrets.key"
_VERSION = "v1."
_NONCE = 12


class SecretBox:
    """Seals and opens short secrets with one AES-256-GCM key."""

    def __init__(self, key: bytes, accepted: Iterable[bytes] = ()) -> None:
        """Seal with ``key``; open with it or any ``accepted`` (older) key (rotation)."""
        if any(len(k) != 32 for k in (key, *accepted)):
            raise ValueError("SecretBox needs 32-byte keys")
        self._aead = AESGCM(key)
        self._aeads = [self._aead, *(AESGCM(k) for k in accepted)]

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> SecretBox:
        """Load (or create, mode 0600, fsynced) ``DATA/webhook-secrets.key``."""
        return cls(keyfile.load_or_create(data_dir / KEY_FILE))

    def seal(self, plaintext: str, associated: str) -> str:
        """Encrypt ``plaintext`` bound to ``associated`` (e.g. the endpoint id)."""
        nonce = secrets.token_bytes(_NONCE)
        ct = self._aead.encrypt(nonce, plaintext.encode(), associated.encode())
        return _VERSION + base64.urlsafe_b64encode(nonce + ct).decode()

    def open(self, sealed: str, associated: str) -> str:
        """Decrypt a value from ``seal``; ValueError if tampered, foreign or malformed."""
        if not sealed.startswith(_VERSION):
            raise ValueError("unknown sealed-secret version")
        try:
            raw = base64.urlsafe_b64decode(sealed[len(_VERSION):])
        except ValueError:
            raise ValueError("sealed secret does not open with this key") from None
        for aead in self._aeads:
            try:
                return aead.decrypt(raw[:_NONCE], raw[_NONCE:], associated.encode()).decode()
            except (InvalidTag, ValueError):
                continue
        raise ValueError("sealed secret does not open with this key")

    def opens_with_current(self, sealed: str, associated: str) -> bool:
        """Whether ``sealed`` opens with the current key (``reseal`` skips those)."""
        try:
            raw = base64.urlsafe_b64decode(sealed.removeprefix(_VERSION))
            self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], associated.encode())
        except (InvalidTag, ValueError):
            return False
        return sealed.startswith(_VERSION)
