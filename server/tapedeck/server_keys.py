"""The server's own keys, one place for every node: ``ServerKeys``.

Two purposes need a key that every node of a deployment shares: signing ``up_`` chunk
upload tokens (``upload-signing``) and sealing webhook and idempotency secrets
(``webhook-secrets``). Where each key comes from:

- ``TAPEDECK_SECRET_KEY`` set (at least 32 characters): each purpose's 32-byte key is
  HKDF-SHA256 of it (salt ``tapedeck``, info ``tapedeck/v1/<purpose>``), so any node with
  the same setting signs and opens the same way and nothing node-local is needed.
- unset (the embedded default): the key file ``DATA/<purpose>.key``, created on first use
  (mode 0600), exactly as before.

Rotation: keys are tried newest first. New tokens and sealed values always use the current
key; the keys still *accepted* are those of ``TAPEDECK_SECRET_KEY_PREVIOUS`` and, for a move
from the embedded default, the purpose's key file if the data dir has one. ``tapedeck admin
reseal-secrets`` re-seals every stored webhook secret under the current key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tapedeck.auth import UploadTokens
from tapedeck.errors import invalid
from tapedeck.infra import keyfile
from tapedeck.settings import Settings
from tapedeck.webhooks.secretbox import SecretBox

MIN_SECRET_LEN = 32
UPLOAD_SIGNING = "upload-signing"
WEBHOOK_SECRETS = "webhook-secrets"
PURPOSES = (UPLOAD_SIGNING, WEBHOOK_SECRETS)


def derive(secret: str, purpose: str) -> bytes:
    """The 32-byte key of ``purpose`` derived from the secret key (HKDF-SHA256)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"tapedeck",
                info=f"tapedeck/v1/{purpose}".encode())
    return hkdf.derive(secret.encode())


def check_secret_key(settings: Settings) -> None:
    """``invalid_request`` (exit code 2) unless the secret-key settings are usable."""
    for name in ("secret_key", "secret_key_previous"):
        value: str = getattr(settings, name)
        if value and len(value) < MIN_SECRET_LEN:
            raise invalid(name, f"TAPEDECK_{name.upper()} must be at least {MIN_SECRET_LEN} "
                                f"characters (it has {len(value)}).")
    if settings.secret_key_previous and not settings.secret_key:
        raise invalid("secret_key_previous", "TAPEDECK_SECRET_KEY_PREVIOUS needs "
                                             "TAPEDECK_SECRET_KEY (the new key) too.")
    if settings.secret_key and settings.secret_key == settings.secret_key_previous:
        raise invalid("secret_key_previous", "TAPEDECK_SECRET_KEY_PREVIOUS equals "
                                             "TAPEDECK_SECRET_KEY.")


@dataclass(frozen=True)
class ServerKeys:
    """Where this node's keys come from (see the module docstring)."""

    data_dir: Path
    secret_key: str = ""
    previous: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerKeys:
        """The keys of ``settings`` (checked: ``invalid_request`` if unusable)."""
        check_secret_key(settings)
        return cls(settings.data_dir, settings.secret_key, settings.secret_key_previous)

    def keys(self, purpose: str) -> list[bytes]:
        """The keys of ``purpose``, current first, then those still accepted."""
        path = self.data_dir / f"{purpose}.key"
        if not self.secret_key:
            return [keyfile.load_or_create(path)]
        found = [derive(self.secret_key, purpose)]
        if self.previous:
            found.append(derive(self.previous, purpose))
        if path.exists():  # left by the embedded default: still opens what it sealed
            found.append(keyfile.load_or_create(path))
        return found

    def upload_tokens(self) -> UploadTokens:
        """The signer and checker of ``up_`` chunk upload tokens."""
        current, *older = self.keys(UPLOAD_SIGNING)
        return UploadTokens(current, accepted=older)

    def secret_box(self) -> SecretBox:
        """The sealer of webhook signing secrets and secrets in idempotent responses."""
        current, *older = self.keys(WEBHOOK_SECRETS)
        return SecretBox(current, accepted=older)
