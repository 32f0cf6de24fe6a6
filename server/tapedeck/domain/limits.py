"""Limits on what one device or project can hold (on by default; 0 turns one off).

- ``max_streaming_per_device``: a device may have this many *open* streaming recordings
  (status ``streaming``, not yet past ``expires_at``); one more is refused with
  ``streaming_limit_exceeded`` (429) whose ``retry_after_s`` is the time until the oldest
  open one expires. Counted inside the creating transaction, so concurrent creates cannot
  overshoot. Single-file recordings are not counted.
- ``storage_quota_bytes``: a project whose stored bytes reached its quota gets no new bytes
  (new recordings, chunk uploads, upload URLs) — ``storage_quota_exceeded`` (403, gRPC
  RESOURCE_EXHAUSTED); deleting recordings frees space. The check is before the upload, so a
  project can end up at most one chunk (``max_chunk_bytes``) or one file over its quota.
  Stored bytes are the ledger's: a recording's file size once it has one, else the sizes of
  the chunks received through the API (presigned chunk PUTs count from finalize on).

The per-credential request rate is ``tapedeck.domain.ratelimit``.
"""

from __future__ import annotations

import math
from datetime import datetime

import sqlite_utils

from tapedeck.clock import iso, parse_iso
from tapedeck.errors import error
from tapedeck.settings import Settings

_USED_SQL = (
    "SELECT COALESCE(SUM(COALESCE(r.file_size_bytes,"
    " (SELECT SUM(c.size_bytes) FROM chunks c WHERE c.recording_id = r.id))), 0)"
    " FROM recordings r WHERE r.project_id = ?")


def storage_used(db: sqlite_utils.Database, project_id: str) -> int:
    """Bytes the project's recordings hold, as the ledger knows them."""
    return int(db.execute(_USED_SQL, [project_id]).fetchone()[0])


def check_storage(db: sqlite_utils.Database, settings: Settings, project_id: str) -> None:
    """``storage_quota_exceeded`` when the project's stored bytes reached its quota."""
    quota = settings.storage_quota_bytes
    if quota <= 0:
        return
    used = storage_used(db, project_id)
    if used >= quota:
        raise error("storage_quota_exceeded",
                    f"The project stores {used} bytes, its quota is {quota}; delete "
                    "recordings or raise TAPEDECK_STORAGE_QUOTA_BYTES.",
                    quota_bytes=quota, used_bytes=used)


def check_streaming_cap(tx: sqlite_utils.Database, settings: Settings, now: datetime,
                        device_id: str | None) -> None:
    """``streaming_limit_exceeded`` when ``device_id`` already has the maximum of open
    streaming recordings (call inside the transaction that creates one)."""
    cap = settings.max_streaming_per_device
    if cap <= 0 or device_id is None:
        return
    count, oldest = tx.execute(
        "SELECT COUNT(*), MIN(expires_at) FROM recordings WHERE device_id = ?"
        " AND status = 'streaming' AND (expires_at IS NULL OR expires_at > ?)",
        [device_id, iso(now)]).fetchone()
    if count < cap:
        return
    frees = parse_iso(oldest)
    wait = max(1, math.ceil((frees - now).total_seconds())) if frees else 60
    raise error("streaming_limit_exceeded",
                f"This device already has {count} open streaming recordings (the limit is "
                f"{cap}); finalize one, or retry in {wait} s.",
                limit=cap, retry_after_s=wait)
