"""API keys of a project: create (secret ``sk_`` or restricted ``rk_``), list, revoke.

Rules (``api.md`` "Authentication and scopes"):

- Only a secret key manages keys (restricted keys and device tokens answer ``forbidden``),
  so no credential can mint one stronger than itself.
- A restricted key holds exactly the scopes it was created with: a non-empty subset of
  ``auth.ALL_SCOPES`` (anything else is ``invalid_request`` naming ``scopes``). A secret key
  holds every scope; it is created with no explicit scopes.
- The key itself is returned once, by ``create``; only its SHA-256 and a hint (prefix and last
  four characters) are stored. New keys take the mode (test/live) of the key creating them.
- ``revoke`` takes effect on the key's very next request; revoking a revoked key returns it
  unchanged; the project's last active secret key cannot be revoked (the project would be
  locked out). Another project's key answers ``key_not_found``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tapedeck.auth import ALL_SCOPES, Principal, insert_api_key
from tapedeck.clock import iso, parse_iso
from tapedeck.domain import cursors
from tapedeck.domain._base import Context
from tapedeck.errors import error, invalid
from tapedeck.infra.sql import Tx

KEY_KINDS = ("secret", "restricted")
MAX_NAME = 100


@dataclass(frozen=True)
class ApiKey:
    """A stored key (never its secret); ``to_json`` is its REST shape."""

    id: str
    project_id: str
    kind: str
    mode: str
    name: str | None
    scopes: list[str]
    hint: str
    created_at: datetime
    revoked_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        """The key object of ``api.md``: never the secret, only its ``hint``."""
        return {"id": self.id, "kind": self.kind, "mode": self.mode, "name": self.name,
                "scopes": self.scopes, "hint": self.hint, "created_at": iso(self.created_at),
                "revoked_at": iso(self.revoked_at)}


@dataclass(frozen=True)
class CreatedKey:
    """A new key and its secret (shown only this once)."""

    key: ApiKey
    secret: str

    def to_json(self) -> dict[str, Any]:
        """The key object plus its ``secret`` (the only time it is shown)."""
        return {**self.key.to_json(), "secret": self.secret}


@dataclass(frozen=True)
class KeyPage:
    """One page of keys, newest first."""

    data: list[ApiKey]
    next_cursor: str | None

    def to_json(self) -> dict[str, Any]:
        """``data`` (key objects), ``has_more`` and ``next_cursor``."""
        return {"data": [k.to_json() for k in self.data],
                "has_more": self.next_cursor is not None, "next_cursor": self.next_cursor}


def require_secret_key(p: Principal) -> None:
    """``forbidden`` unless the caller is a secret key."""
    if p.kind != "secret":
        raise error("forbidden", "Only a secret key can manage API keys.")


def check_scopes(kind: str, scopes: Iterable[str]) -> frozenset[str]:
    """The scopes a new key of ``kind`` holds (``invalid_request`` naming ``scopes``)."""
    if kind not in KEY_KINDS:
        raise invalid("kind", f"kind must be one of {', '.join(KEY_KINDS)}.")
    wanted = frozenset(scopes)
    if kind == "secret":
        if wanted:
            raise invalid("scopes", "Secret keys hold every scope; omit scopes.")
        return ALL_SCOPES
    unknown = sorted(wanted - ALL_SCOPES)
    if unknown:
        raise error("invalid_request", f"Unknown scopes: {', '.join(unknown)}.",
                    field="scopes", unknown_scopes=unknown, valid_scopes=sorted(ALL_SCOPES))
    if not wanted:
        raise invalid("scopes", "A restricted key needs at least one scope.")
    return wanted


_COLUMNS = "id, project_id, kind, mode, name, scopes, hint, created_at, revoked_at"


def _key(row: tuple[Any, ...]) -> ApiKey:
    created = parse_iso(row[7])
    assert created is not None
    scopes = sorted(ALL_SCOPES) if row[2] == "secret" else sorted(json.loads(row[5]))
    return ApiKey(id=row[0], project_id=row[1], kind=row[2], mode=row[3], name=row[4],
                  scopes=scopes, hint=row[6], created_at=created, revoked_at=parse_iso(row[8]))


def load_key(db: Tx, project_id: str, key_id: str) -> ApiKey:
    """The key of this project, else ``key_not_found``."""
    row = db.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ? AND project_id = ?",
                     [key_id, project_id]).fetchone()
    if row is None:
        raise error("key_not_found", "API key not found.", key_id=key_id)
    return _key(row)


class Keys:
    """The API key rules."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def create(self, p: Principal, *, kind: str = "restricted", scopes: Iterable[str] = (),
               name: str | None = None) -> CreatedKey:
        """A new key of the caller's project and mode."""
        require_secret_key(p)
        granted = check_scopes(kind, scopes)
        if name is not None and not 1 <= len(name) <= MAX_NAME:
            raise invalid("name", f"name must be 1 to {MAX_NAME} characters.")
        with self._ctx.db.write() as tx:
            key_id, secret = insert_api_key(tx, p.project_id, kind, p.mode, granted, name,
                                            iso(self._ctx.clock.now()))
            return CreatedKey(load_key(tx, p.project_id, key_id), secret)

    def list(self, p: Principal, *, limit: int = 25, cursor: str | None = None) -> KeyPage:
        """The project's keys (revoked ones included), newest first."""
        require_secret_key(p)
        if not 1 <= limit <= 100:
            raise invalid("limit", "limit must be between 1 and 100.")
        where, args = "project_id = ?", [p.project_id]
        if cursor:
            where += " AND (created_at, id) < (?, ?)"
            args += list(cursors.decode_position(cursor))
        rows = self._ctx.db.read().execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE {where}"
            " ORDER BY created_at DESC, id DESC LIMIT ?", [*args, limit + 1]).fetchall()
        keys = [_key(r) for r in rows[:limit]]
        more = len(rows) > limit
        return KeyPage(keys, cursors.encode_position(iso(keys[-1].created_at), keys[-1].id)
                       if more else None)

    def get(self, p: Principal, key_id: str) -> ApiKey:
        """One key of the caller's project (never its secret)."""
        require_secret_key(p)
        return load_key(self._ctx.db.read(), p.project_id, key_id)

    def revoke(self, p: Principal, key_id: str) -> ApiKey:
        """Revoke a key of the caller's project (idempotent)."""
        require_secret_key(p)
        with self._ctx.db.write() as tx:
            key = load_key(tx, p.project_id, key_id)
            if key.revoked_at is not None:
                return key
            if key.kind == "secret" and _active_secret_keys(tx, p.project_id) <= 1:
                raise invalid("id", "This is the project's last active secret key; create"
                                    " another secret key before revoking it.")
            tx.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?",
                       [iso(self._ctx.clock.now()), key_id])
            return load_key(tx, p.project_id, key_id)


def _active_secret_keys(tx: Tx, project_id: str) -> int:
    row = tx.execute("SELECT count(*) FROM api_keys WHERE project_id = ? AND kind = 'secret'"
                     " AND revoked_at IS NULL", [project_id]).fetchone()
    return int(row[0])


