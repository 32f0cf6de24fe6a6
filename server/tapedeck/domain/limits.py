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
  the chunks received through the API (presigned chunk PUTs count once a chunk listing
  has recorded them, or from finalize on).
  ``StorageMeter`` measures that sum (one query over the project's recordings and chunks,
  ~25 ms for 10k recordings here) at most every ``METER_TTL_S`` while the project is far from
  its quota: a measurement is reused only while it plus the largest upload each check since
  let in could not reach the quota, so near the quota every check measures.

The per-credential request rate is ``tapedeck.domain.ratelimit``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import datetime

from tapedeck.clock import Clock, iso, parse_iso
from tapedeck.errors import TapedeckError, error
from tapedeck.infra.sql import Tx
from tapedeck.settings import Settings

_USED_SQL = (
    "SELECT COALESCE(SUM(COALESCE(r.file_size_bytes,"
    " (SELECT SUM(c.size_bytes) FROM chunks c WHERE c.recording_id = r.id))), 0)"
    " FROM recordings r WHERE r.project_id = ?")


def storage_used(db: Tx, project_id: str) -> int:
    """Bytes the project's recordings hold, as the ledger knows them."""
    return int(db.execute(_USED_SQL, [project_id]).fetchone()[0])


METER_TTL_S = 10.0


@dataclass
class _Measured:
    used: int
    at: float
    allowance: int  # bytes the checks let in since (each counted at its largest size)


class StorageMeter:
    """The storage quota check, reusing a measurement only within bounds (module doc).
    Bytes that arrive other than through its checks (another API process, stitching) are
    seen at the next measurement: at most ``METER_TTL_S`` later."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._measured: dict[str, _Measured] = {}

    def check(self, db: Tx, settings: Settings, project_id: str,
              adds: int) -> None:
        """``storage_quota_exceeded`` when the project reached its quota; ``adds`` is the
        most the request being let in can store (a chunk, a file; 0 for a create)."""
        quota = settings.storage_quota_bytes
        if quota <= 0:
            return
        now = self._clock.now().timestamp()
        with self._lock:
            m = self._measured.get(project_id)
            if (m is not None and now - m.at < METER_TTL_S
                    and m.used + m.allowance + adds < quota):
                m.allowance += adds
                return
        used = storage_used(db, project_id)
        with self._lock:
            if len(self._measured) > 10_000:
                self._measured.clear()
            self._measured[project_id] = _Measured(used, now, adds)
        if used >= quota:
            raise _quota_error(quota, used)


def _quota_error(quota: int, used: int) -> TapedeckError:
    return error("storage_quota_exceeded",
                 f"The project stores {used} bytes, its quota is {quota}; delete "
                 "recordings or raise TAPEDECK_STORAGE_QUOTA_BYTES.",
                 quota_bytes=quota, used_bytes=used)


def check_streaming_cap(tx: Tx, settings: Settings, now: datetime,
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
