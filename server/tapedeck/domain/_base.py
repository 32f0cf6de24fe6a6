"""Shared plumbing of the domain services: loading visible recordings, object keys,
per-recording locks and the event outbox."""

from __future__ import annotations

import base64
import json
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from tapedeck.auth import Principal
from tapedeck.clock import Clock, iso, parse_iso
from tapedeck.db import Database, KeyedLocks  # noqa: F401  (KeyedLocks: re-exported)
from tapedeck.domain.models import Media, Recording
from tapedeck.errors import TapedeckError, error, invalid
from tapedeck.ids import new_id
from tapedeck.jobs import JobSignals
from tapedeck.settings import Settings
from tapedeck.sql import Tx
from tapedeck.store import ObjectInfo, ObjectStore

# A part's object: ``chunk_{part}.{version}.opus``, one new object (a fresh sortable version)
# per upload or presigned URL, so no upload ever overwrites another; ``chunk_{part}.opus``
# (no version, the oldest) is the layout before issue 15.
CHUNK_KEY_RE = re.compile(
    r"^recordings/(rec_[0-9A-Za-z]+)/chunks/chunk_(\d+)(?:\.(v[0-9A-Za-z]+))?\.opus$")


def chunk_prefix(recording_id: str) -> str:
    """Store prefix under which a recording's chunks live."""
    return f"recordings/{recording_id}/chunks/"


def chunk_key(recording_id: str, part: int, version: str | None = None) -> str:
    """Store key of one object of a part: ``recordings/{id}/chunks/chunk_{part}.{version}.opus``
    (``chunk_{part}.opus`` without a version). THE chunk layout: every writer and reader
    of a part's object goes through this function, ``new_chunk_key``, ``part_key`` or
    ``stored_parts``."""
    suffix = "" if version is None else f".{version}"
    return f"{chunk_prefix(recording_id)}chunk_{part}{suffix}.opus"


def new_chunk_key(recording_id: str, part: int) -> str:
    """A key no object has yet for a new upload of ``part`` (newer than every earlier one)."""
    return chunk_key(recording_id, part, new_id("v"))


def part_key(recording_id: str, part: int, pinned: str | None) -> str:
    """The object finalize pinned for ``part`` (``chunks.object_key``); ledger rows written
    before pinning existed (``None``) name the unversioned key."""
    return pinned if pinned is not None else chunk_key(recording_id, part)


def chunk_objects(store: ObjectStore, recording_id: str,
                  part: int | None = None) -> dict[int, list[ObjectInfo]]:
    """Every chunk object the store holds for a recording (or only for ``part``), by part,
    oldest upload first."""
    prefix = chunk_prefix(recording_id) + ("" if part is None else f"chunk_{part}.")
    parts: dict[int, list[tuple[str, ObjectInfo]]] = {}
    for obj in store.list(prefix):
        m = CHUNK_KEY_RE.match(obj.key)
        if m and m.group(1) == recording_id:
            parts.setdefault(int(m.group(2)), []).append((m.group(3) or "", obj))
    return {part: [obj for _, obj in sorted(objs, key=lambda vo: vo[0])]
            for part, objs in parts.items()}


def stored_parts(store: ObjectStore, recording_id: str,
                 part: int | None = None) -> dict[int, ObjectInfo]:
    """The current object of each part the store holds (its latest upload), by part number:
    the truth that finalize, expiry and chunk listings go by."""
    return {n: objs[-1] for n, objs in chunk_objects(store, recording_id, part).items()}


def recording_prefix(recording_id: str) -> str:
    """Store prefix of every object a recording owns."""
    return f"recordings/{recording_id}/"


def check_part(rec: Recording, part: int) -> None:
    """Parts run 1..max_chunks (``invalid_request`` naming ``part`` otherwise)."""
    limit = rec.max_chunks or 0
    if not 1 <= part <= limit:
        raise error("invalid_request", f"part must be between 1 and {limit}.", field="part")


def emit(tx: Tx, clock: Clock, project_id: str, type: str,
         data: dict[str, Any], recording_id: str | None = None) -> str:
    """Append an event to the outbox inside the caller's write transaction."""
    event_id = new_id("evt_")
    tx.execute(
        "INSERT INTO events (id, project_id, type, recording_id, created_at, data)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [event_id, project_id, type, recording_id, iso(clock.now()), json.dumps(data)])
    return event_id


class NamedLocks(Protocol):
    """Locks by name held across store I/O: ``Database.hold`` (in process on SQLite, an
    advisory lock on PostgreSQL, so every api process of a deployment shares them)."""

    def hold(self, key: str) -> AbstractContextManager[None]: ...


@dataclass
class Context:
    """What every domain service is built from. ``job_signals``: call
    ``job_signals.notify(kind)`` after committing a transaction that enqueued a ``kind`` job,
    so this process's idle workers of that kind start it at once (``tapedeck.worker``
    subscribes; the domain never imports the worker)."""

    db: Database
    store: ObjectStore
    clock: Clock
    settings: Settings
    locks: NamedLocks
    job_signals: JobSignals = field(default_factory=JobSignals)


def load_recording(db: Tx, p: Principal, recording_id: str) -> Recording:
    """The recording if this principal may see it, else ``recording_not_found``.

    Other projects' and (for device tokens) other devices' recordings are reported as not
    found, never as forbidden, so their existence is not revealed."""
    row = db.execute("SELECT * FROM recordings WHERE id = ?", [recording_id]).fetchone()
    if row is not None:
        cols = [d[0] for d in db.execute("SELECT * FROM recordings LIMIT 0").description]
        rec = dict(zip(cols, row, strict=True))
        if _visible(p, rec):
            return to_recording(db, rec)
    raise error("recording_not_found", "Recording not found.", recording_id=recording_id)


def _visible(p: Principal, rec: dict[str, Any]) -> bool:
    if rec["project_id"] != p.project_id:
        return False
    if p.kind == "device":
        return bool(rec["device_id"] == p.device_id)
    if p.kind == "upload":
        return bool(rec["id"] == p.recording_id)
    return True


def to_recording(db: Tx, rec: dict[str, Any]) -> Recording:
    """A ``Recording`` from a row, with its chunk count and media."""
    count = db.execute("SELECT count(*) FROM chunks WHERE recording_id = ?",
                       [rec["id"]]).fetchone()[0]
    media = [
        Media(id=m[0], type=m[1], mime_type=m[2], file_size_bytes=m[3], status=m[4],
              created_at=parse_iso(m[5]) or datetime.now(UTC), object_key=m[6])
        for m in db.execute(
            "SELECT id, type, mime_type, file_size_bytes, status, created_at, object_key"
            " FROM media WHERE recording_id = ? ORDER BY created_at, id", [rec["id"]])
    ]
    return Recording.from_row(rec, count, media)


def not_streaming(rec: Recording) -> TapedeckError:
    """The typed error for a chunk or finalize on a recording that is not streaming."""
    if rec.status == "expired" or rec.finalized_by == "expiry":
        return error("recording_expired", "The recording expired before it was finalized.",
                     status=rec.status)
    return error("recording_not_streaming",
                 f"The recording is {rec.status}; it no longer accepts chunks or finalize.",
                 status=rec.status)


def check_md5_b64(value: str | None) -> str | None:
    """A client's base64 Content-MD5, or None; ``invalid_request`` on ``content_md5`` if it is
    not the base64 of 16 bytes."""
    if not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise invalid("content_md5", "content_md5 must be the base64 of a 16-byte MD5.")
    return value


def check_size(size_bytes: int | None, limit: int | None) -> int | None:
    """A client's announced upload size, or None: ``invalid_request`` on ``size_bytes`` unless
    positive, ``payload_too_large`` above ``limit``."""
    if size_bytes is None:
        return None
    if size_bytes < 1:
        raise invalid("size_bytes", "size_bytes must be a positive integer.")
    if limit is not None and size_bytes > limit:
        raise error("payload_too_large", f"A chunk may be at most {limit} bytes.",
                    max_bytes=limit)
    return size_bytes
