"""Credentials: secret keys, restricted keys, device tokens and signed upload tokens.

Token format: ``{prefix}{32 random base62}{6-char base62 CRC32 of prefix+random}``, e.g.
``sk_test_…``. The checksum suffix lets a mistyped token fail (``unauthorized``) before the
database is asked. Stored only as SHA-256 hashes (the tokens carry 190 bits of entropy, so a
plain hash is enough); the hash lookup is by index and the final comparison is constant time.

``up_`` upload tokens are stateless: ``up_{payload}.{hmac}`` bound to one recording and an
expiry, signed with the ``upload-signing`` key of ``tapedeck.server_keys`` (derived from
``TAPEDECK_SECRET_KEY``, or a key file in the data directory; never in SQLite).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tapedeck.clock import Clock, iso
from tapedeck.errors import error
from tapedeck.ids import base62, new_id, random_base62
from tapedeck.infra import keyfile
from tapedeck.infra.db import Database
from tapedeck.infra.sql import Tx

if TYPE_CHECKING:
    pass

ALL_SCOPES = frozenset(
    f"{res}:{op}"
    for res in ("recordings", "transcriptions", "devices", "end_users", "webhooks")
    for op in ("read", "write")
)
#: What a device token may do (api.md): its own recordings (create, upload, finalize, read)
#: and heartbeats. Refreshing itself needs no scope: only a device token can, for itself.
DEVICE_SCOPES = frozenset({"recordings:read", "recordings:write", "devices:heartbeat"})
TOKEN_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_", "dtok_test_", "dtok_live_")
_BODY_LEN = 32
_CHECK_LEN = 6


@dataclass(frozen=True)
class Principal:
    """Who is calling: the project, the credential kind and what it may do."""

    project_id: str
    kind: str  # secret | restricted | device | upload
    credential_id: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    device_id: str | None = None
    end_user_id: str | None = None
    recording_id: str | None = None  # upload tokens only
    mode: str = "test"  # test | live: the mode of the credential (new credentials inherit it)

    def require(self, scope: str) -> None:
        """Raise ``forbidden`` unless this credential holds ``scope``."""
        if scope not in self.scopes:
            raise error("forbidden", f"This credential lacks the {scope} scope.", scope=scope)


def _checksum(text: str) -> str:
    return base62(zlib.crc32(text.encode()), _CHECK_LEN)[-_CHECK_LEN:]


def make_token(prefix: str) -> str:
    """A new random token with ``prefix`` and its checksum suffix."""
    body = random_base62(_BODY_LEN)
    return prefix + body + _checksum(prefix + body)


def token_prefix(token: str) -> str:
    """The token's prefix, after checking its shape and checksum; ``unauthorized`` if bad."""
    for prefix in TOKEN_PREFIXES:
        if token.startswith(prefix) and len(token) == len(prefix) + _BODY_LEN + _CHECK_LEN:
            body = token[: -_CHECK_LEN]
            if hmac.compare_digest(_checksum(body), token[-_CHECK_LEN:]):
                return prefix
            break
    raise error("unauthorized", "The credential is malformed or mistyped.")


def hash_token(token: str) -> str:
    """SHA-256 hex of a token: the only form in which tokens are stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def hint(token: str) -> str:
    """A safe reminder of a token: its prefix and last four characters."""
    return token[: token.index("_", token.index("_") + 1) + 1] + "…" + token[-4:]


class UploadTokens:
    """Signs and checks ``up_`` tokens (one recording, until an expiry)."""

    def __init__(self, key: bytes, accepted: Iterable[bytes] = ()) -> None:
        """Issue with ``key``; verify with it or any ``accepted`` (older) key (rotation)."""
        self._key = key
        self._keys = (key, *accepted)

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> UploadTokens:
        """Load (or create, mode 0600) the signing key ``DATA/upload-signing.key``."""
        return cls(keyfile.load_or_create(data_dir / "upload-signing.key"))

    def issue(self, project_id: str, recording_id: str, expires_at: datetime) -> str:
        """An ``up_`` token for ``recording_id`` of ``project_id``, valid until
        ``expires_at`` (whole seconds), signed with this instance's key."""
        payload = json.dumps(
            {"p": project_id, "r": recording_id, "e": int(expires_at.timestamp())},
            separators=(",", ":"),
        ).encode()
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"up_{body}.{self._sign(body)}"

    def _sign(self, body: str, key: bytes | None = None) -> str:
        mac = hmac.new(key or self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:24]).decode()

    def _signed(self, body: str, sig: str) -> bool:
        return any(hmac.compare_digest(self._sign(body, k), sig) for k in self._keys)

    def verify(self, token: str, now: datetime) -> Principal:
        """The principal of a valid token; ``unauthorized`` if tampered or expired."""
        try:
            body, sig = token.removeprefix("up_").split(".", 1)
            if not token.startswith("up_") or not self._signed(body, sig):
                raise ValueError("bad signature")
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, json.JSONDecodeError):
            raise error("unauthorized", "The upload token is invalid.") from None
        if now.timestamp() >= claims["e"]:
            raise error("unauthorized", "The upload token has expired.")
        return Principal(
            project_id=claims["p"], kind="upload", credential_id="upload",
            scopes=frozenset({"recordings:write"}), recording_id=claims["r"],
        )


class Authenticator:
    """Turns a bearer credential into a ``Principal`` (or raises ``unauthorized``)."""

    def __init__(self, db: Database, uploads: UploadTokens, clock: Clock) -> None:
        self._db = db
        self._uploads = uploads
        self._clock = clock

    def authenticate(self, authorization: str | None, *,
                     allow_upload_token: bool = False) -> Principal:
        """Accepts ``Bearer <token>`` (or the bare token). ``up_`` upload tokens are accepted
        only where the transport says so (chunk uploads): anywhere else they are
        ``unauthorized``, so a leaked chunk URL cannot finalize or delete a recording."""
        token = (authorization or "").strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        if not token:
            raise error("unauthorized", "Missing credentials: send Authorization: Bearer <key>.")
        if token.startswith("up_"):
            if not allow_upload_token:
                raise error("unauthorized", "Upload tokens are only valid for chunk uploads.")
            return self._uploads.verify(token, self._clock.now())
        prefix = token_prefix(token)
        if prefix.startswith("dtok_"):
            return self._device(token)
        return self._key(token)

    def _key(self, token: str) -> Principal:
        row = self._db.read().execute(
            "SELECT id, project_id, kind, token_hash, scopes, revoked_at, mode FROM api_keys"
            " WHERE token_hash = ?", [hash_token(token)]).fetchone()
        if row is None or not hmac.compare_digest(row[3], hash_token(token)) or row[5]:
            raise error("unauthorized", "The API key is unknown or revoked.")
        scopes = ALL_SCOPES if row[2] == "secret" else frozenset(json.loads(row[4]))
        return Principal(project_id=row[1], kind=row[2], credential_id=row[0], scopes=scopes,
                         mode=row[6])

    def _device(self, token: str) -> Principal:
        row = self._db.read().execute(
            "SELECT t.id, t.project_id, t.token_hash, t.revoked_at, d.id, d.end_user_id, t.mode"
            " FROM device_tokens t JOIN devices d ON d.id = t.device_id"
            " WHERE t.token_hash = ?", [hash_token(token)]).fetchone()
        if row is None or not hmac.compare_digest(row[2], hash_token(token)) or row[3]:
            raise error("unauthorized", "The device token is unknown or revoked.")
        return Principal(project_id=row[1], kind="device", credential_id=row[0],
                         scopes=DEVICE_SCOPES, device_id=row[4], end_user_id=row[5],
                         mode=row[6])


def insert_api_key(tx: Tx, project_id: str, kind: str, mode: str,
                   scopes: Iterable[str], name: str | None, now: str | None) -> tuple[str, str]:
    """Store a new ``secret``/``restricted`` key (hash only) in the caller's write
    transaction; return (key id, the key itself — shown once, never stored)."""
    token = make_token(("sk_" if kind == "secret" else "rk_") + mode + "_")
    key_id = new_id("key_")
    tx.execute(
        "INSERT INTO api_keys (id, project_id, kind, mode, token_hash, hint, scopes, name,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [key_id, project_id, kind, mode, hash_token(token), hint(token),
         json.dumps(sorted(scopes)), name, now])
    return key_id, token


def insert_device_token(tx: Tx, project_id: str, device_id: str, mode: str,
                        now: str | None) -> tuple[str, str]:
    """Store a new device token (hash only) in the caller's write transaction; return
    (token id, the ``dtok_`` token itself — shown once, never stored)."""
    token = make_token(f"dtok_{mode}_")
    token_id = new_id("dtk_")
    tx.execute(
        "INSERT INTO device_tokens (id, device_id, project_id, mode, token_hash, hint,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [token_id, device_id, project_id, mode, hash_token(token), hint(token), now])
    return token_id, token


def create_project(db: Database, clock: Clock, name: str = "default") -> tuple[str, str]:
    """Create a project and its first secret key; return (project_id, key shown once)."""
    project_id = new_id("prj_")
    now = iso(clock.now())
    with db.write() as tx:
        tx.execute("INSERT INTO projects VALUES (?, ?, ?)", [project_id, name, now])
        _, key = insert_api_key(tx, project_id, "secret", "test", ALL_SCOPES, "bootstrap", now)
    return project_id, key


def issue_device_token(db: Database, clock: Clock, project_id: str,
                       device_id: str | None = None) -> tuple[str, str]:
    """Register ``device_id`` if new (bound, no end user) and issue a token shown once."""
    device_id = device_id or new_id("dev_")
    now = iso(clock.now())
    with db.write() as tx:
        if tx.execute("SELECT 1 FROM projects WHERE id = ?", [project_id]).fetchone() is None:
            raise error("invalid_request", f"No project {project_id}.", field="project_id")
        row = tx.execute("SELECT project_id FROM devices WHERE id = ?", [device_id]).fetchone()
        if row is None:
            tx.execute(
                "INSERT INTO devices (id, project_id, status, created_at) VALUES (?, ?, ?, ?)",
                [device_id, project_id, "bound", now])
        elif row[0] != project_id:
            raise error("device_not_found", f"No device {device_id} in this project.")
        _, token = insert_device_token(tx, project_id, device_id, "test", now)
    return device_id, token


