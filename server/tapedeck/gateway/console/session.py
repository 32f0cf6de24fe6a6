"""Console sessions: the API key sealed (AES-GCM, key ``DATA/console-session.key``) in an
HttpOnly SameSite=Strict cookie with an expiry and a CSRF token. Every request re-checks the
key through ``Domain.authenticate``, so a revoked key ends its sessions at once."""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tapedeck.infra import keyfile

COOKIE = "tapedeck_console"
TTL_S = 8 * 3600


@dataclass(frozen=True)
class Session:
    """What a console cookie carries."""

    api_key: str
    csrf: str
    expires: int


class SessionSealer:
    """Seals and opens session cookies with one data-dir key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> SessionSealer:
        return cls(keyfile.load_or_create(data_dir / "console-session.key"))

    def seal(self, api_key: str, now: datetime) -> tuple[str, Session]:
        """A new session for ``api_key`` (fresh CSRF token), and its cookie value."""
        s = Session(api_key, secrets.token_urlsafe(24), int(now.timestamp()) + TTL_S)
        nonce = os.urandom(12)
        data = json.dumps({"k": s.api_key, "c": s.csrf, "e": s.expires}).encode()
        return base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, data, b"console")
                                        ).decode(), s

    def open(self, cookie: str | None, now: datetime) -> Session | None:
        """The session of a valid, unexpired cookie; None otherwise."""
        try:
            raw = base64.urlsafe_b64decode(cookie or "")
            data = json.loads(self._aead.decrypt(raw[:12], raw[12:], b"console"))
        except (ValueError, InvalidTag):
            return None
        s = Session(str(data["k"]), str(data["c"]), int(data["e"]))
        return s if now.timestamp() < s.expires else None
