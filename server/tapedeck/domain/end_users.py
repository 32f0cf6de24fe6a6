"""End users: the people recordings belong to (``eu_…``).

Rules (``api.md`` "Devices and end users"):

- ``external_id`` (the customer's own id) is optional and unique per project: a second end
  user with the same one is ``resource_already_exists`` (409), naming the existing end user.
- ``end_users:write`` creates, ``end_users:read`` reads and lists (newest first); device
  tokens hold neither.
- Another project's end user answers ``end_user_not_found`` (never reveals it exists).
- Deleting an end user (``end_users:write``) deletes the person, not the audio: their voice
  profiles (the embeddings, biometric data) are deleted; their recordings and transcripts
  stay in the project but are unbound (``end_user_id`` becomes null, and a transcript speaker
  that named them no longer does); devices bound to them are unbound and their device tokens
  revoked (reason ``end_user_deleted``); their recordings' rows leave the search index
  (``SearchIndex.remove_end_user``: what they said is no longer found by search; ``tapedeck
  admin reindex`` would index the kept transcripts again, unbound). All in one transaction.
  Delete the recordings first (``DELETE /v1/recordings/{id}``) to remove the audio too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tapedeck.auth import Principal
from tapedeck.clock import iso, parse_iso
from tapedeck.domain import cursors
from tapedeck.domain._base import Context
from tapedeck.domain.models import Page
from tapedeck.domain.search_index import backend_for
from tapedeck.errors import error, invalid
from tapedeck.ids import new_id
from tapedeck.infra.sql import Tx

MAX_EXTERNAL_ID = 255
MAX_NAME = 500
MAX_EMAIL = 320
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")


@dataclass(frozen=True)
class NewEndUser:
    """The body of a create request, already type-checked by the transport."""

    external_id: str | None = None
    email: str | None = None
    name: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EndUser:
    """An end user as stored; ``to_json`` is its REST shape."""

    id: str
    project_id: str
    external_id: str | None
    email: str | None
    name: str | None
    metadata: dict[str, str]
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The end user object of ``api.md``."""
        return {"id": self.id, "external_id": self.external_id, "email": self.email,
                "name": self.name, "metadata": self.metadata,
                "created_at": iso(self.created_at)}


def validate_metadata(metadata: dict[str, str]) -> None:
    """At most 50 keys of ≤40 characters with values of ≤500 (as for recordings)."""
    if len(metadata) > 50 or any(len(k) > 40 or len(v) > 500 for k, v in metadata.items()):
        raise invalid("metadata", "metadata allows 50 keys of ≤40 chars with values ≤500 chars.")


def validate_new_end_user(req: NewEndUser) -> None:
    """Length and shape checks (``invalid_request`` naming the field)."""
    if req.external_id is not None and not 1 <= len(req.external_id) <= MAX_EXTERNAL_ID:
        raise invalid("external_id", f"external_id must be 1 to {MAX_EXTERNAL_ID} characters.")
    if req.email is not None and (len(req.email) > MAX_EMAIL or not _EMAIL_RE.match(req.email)):
        raise invalid("email", "email must look like name@domain.")
    if req.name is not None and len(req.name) > MAX_NAME:
        raise invalid("name", f"name must be at most {MAX_NAME} characters.")
    validate_metadata(req.metadata)


def load_end_user(db: Tx, project_id: str, end_user_id: str) -> EndUser:
    """The end user of this project, else ``end_user_not_found``."""
    row = db.execute(
        "SELECT id, project_id, external_id, email, name, metadata, created_at FROM end_users"
        " WHERE id = ? AND project_id = ?", [end_user_id, project_id]).fetchone()
    if row is None:
        raise error("end_user_not_found", "End user not found.", end_user_id=end_user_id)
    created = parse_iso(row[6])
    assert created is not None
    return EndUser(id=row[0], project_id=row[1], external_id=row[2], email=row[3], name=row[4],
                   metadata=json.loads(row[5]), created_at=created)


class EndUsers:
    """The end user rules."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def create(self, p: Principal, req: NewEndUser) -> EndUser:
        """A new end user; ``resource_already_exists`` if ``external_id`` is taken."""
        p.require("end_users:write")
        validate_new_end_user(req)
        end_user_id = new_id("eu_")
        now = iso(self._ctx.clock.now())
        with self._ctx.db.write() as tx:
            if req.external_id is not None:
                taken = tx.execute(
                    "SELECT id FROM end_users WHERE project_id = ? AND external_id = ?",
                    [p.project_id, req.external_id]).fetchone()
                if taken is not None:
                    raise error("resource_already_exists",
                                "An end user with this external_id already exists.",
                                field="external_id", end_user_id=taken[0])
            tx.execute(
                "INSERT INTO end_users (id, project_id, external_id, email, name, metadata,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [end_user_id, p.project_id, req.external_id, req.email, req.name,
                 json.dumps(req.metadata), now])
            return load_end_user(tx, p.project_id, end_user_id)

    def get(self, p: Principal, end_user_id: str) -> EndUser:
        """One end user of the caller's project."""
        p.require("end_users:read")
        return load_end_user(self._ctx.db.read(), p.project_id, end_user_id)

    def delete(self, p: Principal, end_user_id: str) -> DeletedEndUser:
        """Delete the end user and their voice profiles; unbind their recordings,
        transcript speakers and devices (module docstring). ``end_user_not_found`` if it is
        not this project's (so a repeated delete answers it too)."""
        p.require("end_users:write")
        now = iso(self._ctx.clock.now())
        with self._ctx.db.write() as tx:
            load_end_user(tx, p.project_id, end_user_id)
            profiles = tx.execute("DELETE FROM voice_profiles WHERE project_id = ? AND"
                                  " end_user_id = ?", [p.project_id, end_user_id]).rowcount
            tx.execute("UPDATE device_tokens SET revoked_at = ?, revoked_reason ="
                       " 'end_user_deleted' WHERE revoked_at IS NULL AND device_id IN"
                       " (SELECT id FROM devices WHERE project_id = ? AND end_user_id = ?)",
                       [now, p.project_id, end_user_id])
            devices = tx.execute("UPDATE devices SET status = 'unbound', end_user_id = NULL,"
                                 " bound_at = NULL WHERE project_id = ? AND end_user_id = ?",
                                 [p.project_id, end_user_id]).rowcount
            backend_for(tx).remove_end_user(tx, p.project_id, end_user_id)  # their words
            recordings = tx.execute("UPDATE recordings SET end_user_id = NULL WHERE"
                                    " project_id = ? AND end_user_id = ?",
                                    [p.project_id, end_user_id]).rowcount
            speakers = _unname_speakers(tx, p.project_id, end_user_id)
            tx.execute("DELETE FROM end_users WHERE id = ? AND project_id = ?",
                       [end_user_id, p.project_id])
        return DeletedEndUser(end_user_id, int(profiles), int(recordings), int(devices),
                              speakers)

    def list(self, p: Principal, *, limit: int = 25, cursor: str | None = None) -> Page:
        """One page of the project's end users, newest first (``limit`` 1..100; ``cursor``
        is a previous page's ``next_cursor``)."""
        p.require("end_users:read")
        if not 1 <= limit <= 100:
            raise invalid("limit", "limit must be between 1 and 100.")
        where, args = "project_id = ?", [p.project_id]
        if cursor:
            where += " AND (created_at, id) < (?, ?)"
            args += list(cursors.decode_position(cursor))
        db = self._ctx.db.read()
        ids = [r[0] for r in db.execute(
            f"SELECT id FROM end_users WHERE {where} ORDER BY created_at DESC, id DESC"
            " LIMIT ?", [*args, limit + 1]).fetchall()]
        found = [load_end_user(db, p.project_id, i) for i in ids[:limit]]
        more = len(ids) > limit
        return Page(found, cursors.encode_position(iso(found[-1].created_at), found[-1].id)
                    if more else None)


@dataclass(frozen=True)
class DeletedEndUser:
    """What deleting an end user did; ``to_json`` is the REST response."""

    id: str
    voice_profiles_deleted: int
    recordings_unbound: int
    devices_unbound: int
    transcripts_unnamed: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "deleted": True,
                "voice_profiles_deleted": self.voice_profiles_deleted,
                "recordings_unbound": self.recordings_unbound,
                "devices_unbound": self.devices_unbound,
                "transcripts_unnamed": self.transcripts_unnamed}


def _unname_speakers(tx: Tx, project_id: str, end_user_id: str) -> int:
    """Clear ``end_user_id`` in every transcript speaker of the project that named the end
    user (JSON rewritten here, not in SQL, to stay portable); how many transcripts changed."""
    rows = tx.execute("SELECT id, speakers FROM transcriptions WHERE project_id = ? AND"
                      " speakers LIKE ?", [project_id, f"%{end_user_id}%"]).fetchall()
    changed = 0
    for txn_id, raw in rows:
        speakers = json.loads(raw)
        hit = [s for s in speakers if s.get("end_user_id") == end_user_id]
        for s in hit:
            s["end_user_id"] = None
        if hit:
            tx.execute("UPDATE transcriptions SET speakers = ? WHERE id = ?",
                       [json.dumps(speakers), txn_id])
            changed += 1
    return changed
