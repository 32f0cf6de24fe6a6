"""The fleet: device health transitions, their events, device listing, pushed settings.

Health (per device, stored in ``devices``; each flag changes only inside a write
transaction, so every transition emits its event exactly once, whatever the number of
API processes and sweepers):

- ``offline``: the sweeper (``sweep_offline``) marks a device that has sent heartbeats but
  none for ``device_offline_after_s`` and emits ``device.offline``; the device's next
  heartbeat clears it and emits ``device.online``. A device that never sent a heartbeat is
  neither.
- ``storage_low``: a heartbeat with ``storage_used_mb / storage_total_mb`` at or above
  ``device_storage_low_percent`` sets it and emits ``device.storage_low``; a heartbeat
  below it (or without the storage fields) clears it silently.
- ``backlog_overdue``: a heartbeat whose ``backlog_oldest_age_s`` is at or above
  ``device_backlog_alert_s`` sets it and emits ``device.backlog``; a heartbeat below it
  clears it silently.

Settings (chunk duration, bitrate, DTX, heartbeat interval) are kept for a project and,
as overrides, for single devices; an unset field inherits (device → project → the agent's
own configuration). Every change takes the next number of the project's one sequence, so a
device's effective version (the larger of its project's and its own) grows with every
change that can affect it. Heartbeat answers carry the effective settings; agents apply
them from their next recording and report the version they run (``settings_version``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from tapedeck.auth import Principal
from tapedeck.clock import iso, parse_iso
from tapedeck.domain import cursors
from tapedeck.domain._base import Context, emit
from tapedeck.domain.devices import (
    Device,
    Heartbeat,
    _key_device_id,
    heartbeat_device_id,
    load_device,
    store_heartbeat,
    validate_heartbeat,
)
from tapedeck.errors import invalid
from tapedeck.infra.sql import Tx

#: ``GET /v1/devices?state=`` values.
DEVICE_FILTERS = ("offline", "online", "storage_low", "backlog")
FLEET_EVENTS = ("device.offline", "device.online", "device.storage_low", "device.backlog")
_PROJECT = ""  # device_id of a project's own settings row
_RANGES = {"chunk_duration_ms": (1_000, 3_600_000), "bitrate": (6_000, 510_000),
           "heartbeat_interval_s": (5, 86_400)}


@dataclass(frozen=True)
class DeviceSettings:
    """Settings pushed to devices; ``None`` = not set here (inherited)."""

    chunk_duration_ms: int | None = None
    bitrate: int | None = None
    dtx: bool | None = None
    heartbeat_interval_s: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def over(self, base: DeviceSettings) -> DeviceSettings:
        """These settings, falling back to ``base`` field by field."""
        return DeviceSettings(**{f.name: getattr(self, f.name) if getattr(self, f.name)
                                 is not None else getattr(base, f.name) for f in fields(self)})


SETTING_FIELDS = tuple(f.name for f in fields(DeviceSettings))


@dataclass(frozen=True)
class SettingsView:
    """Settings at one level. ``version`` 0 and all fields ``None``: never set. For a
    device, ``settings`` are the effective ones and ``overrides`` its own row."""

    device_id: str | None
    version: int
    settings: DeviceSettings
    overrides: DeviceSettings | None
    updated_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        """``{"version", <fields>, "updated_at"}`` (+ ``device_id``, ``overrides``)."""
        out: dict[str, Any] = {"version": self.version, **self.settings.to_json(),
                               "updated_at": iso(self.updated_at)}
        if self.device_id is not None:
            out = {"device_id": self.device_id, **out,
                   "overrides": (self.overrides or DeviceSettings()).to_json()}
        return out


@dataclass(frozen=True)
class HeartbeatAck:
    """The answer to a heartbeat: when it was stored and the settings the device should
    run from its next recording."""

    at: datetime
    settings: SettingsView

    def to_json(self) -> dict[str, Any]:
        body = self.settings.to_json()
        return {"status": "ok", "settings": {k: body[k] for k in ("version", *SETTING_FIELDS)}}


@dataclass(frozen=True)
class DevicePage:
    """One page of devices, oldest first, and the cursor of the next page."""

    data: list[Device]
    next_cursor: str | None

    def to_json(self) -> dict[str, Any]:
        return {"data": [d.to_json() for d in self.data], "has_more": self.next_cursor is not None,
                "next_cursor": self.next_cursor}


def validate_settings(s: DeviceSettings) -> None:
    """Range checks (``invalid_request`` naming the field)."""
    for name, (low, high) in _RANGES.items():
        value = getattr(s, name)
        if value is not None and (isinstance(value, bool) or not low <= value <= high):
            raise invalid(name, f"{name} must be between {low} and {high}.")
    if s.chunk_duration_ms is not None and s.chunk_duration_ms % 20:
        raise invalid("chunk_duration_ms", "chunk_duration_ms must be a multiple of 20 "
                                           "(whole 20 ms Opus frames).")


def _row_settings(tx: Tx, project_id: str,
                  device_id: str) -> tuple[int, DeviceSettings, datetime | None] | None:
    row = tx.execute(
        "SELECT version, chunk_duration_ms, bitrate, dtx, heartbeat_interval_s, updated_at"
        " FROM device_settings WHERE project_id = ? AND device_id = ?",
        [project_id, device_id]).fetchone()
    if row is None:
        return None
    dtx = None if row[3] is None else bool(row[3])
    return int(row[0]), DeviceSettings(row[1], row[2], dtx, row[4]), parse_iso(row[5])


def effective_settings(tx: Tx, project_id: str,
                       device_id: str | None) -> SettingsView:
    """The project's settings, or a device's (its overrides over the project's)."""
    base = _row_settings(tx, project_id, _PROJECT) or (0, DeviceSettings(), None)
    if device_id is None:
        return SettingsView(None, base[0], base[1], None, base[2])
    own = _row_settings(tx, project_id, device_id)
    if own is None:
        return SettingsView(device_id, base[0], base[1], DeviceSettings(), base[2])
    times = [t for t in (base[2], own[2]) if t is not None]
    return SettingsView(device_id, max(base[0], own[0]), own[1].over(base[1]), own[1],
                        max(times) if times else None)


def _storage_percent(hb: Heartbeat) -> float | None:
    if hb.storage_used_mb is None or not hb.storage_total_mb:
        return None
    return 100.0 * hb.storage_used_mb / hb.storage_total_mb


class Fleet:
    """Health transitions, listing and pushed settings (see the module docstring)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    @property
    def offline_after_s(self) -> int:
        return self._ctx.settings.device_offline_after_s

    # -- heartbeats -----------------------------------------------------------------------
    def heartbeat(self, p: Principal, device_id: str, hb: Heartbeat) -> HeartbeatAck:
        """Store ``hb`` as the device's latest state, apply the health transitions (their
        events commit with it) and answer the settings the device should run."""
        device_id = heartbeat_device_id(p, device_id)
        validate_heartbeat(hb)
        now = self._ctx.clock.now()
        with self._ctx.db.write() as tx:
            before, previous_at = store_heartbeat(tx, p.project_id, device_id, hb, now)
            self.on_heartbeat(tx, before, previous_at, hb)
            return HeartbeatAck(now, effective_settings(tx, p.project_id, device_id))

    def on_heartbeat(self, tx: Tx, device: Device,
                     previous_at: datetime | None, hb: Heartbeat) -> list[str]:
        """Apply the health transitions of a heartbeat just stored, inside its write
        transaction (``device`` as it was before); returns the event types emitted."""
        s, clock = self._ctx.settings, self._ctx.clock
        base = {"device_id": device.id, "end_user_id": device.end_user_id}
        emitted: list[str] = []
        if device.offline:
            emit(tx, clock, device.project_id, "device.online",
                 {**base, "last_heartbeat_at": iso(clock.now()),
                  "previous_heartbeat_at": iso(previous_at)})
            emitted.append("device.online")
        percent = _storage_percent(hb)
        low = percent is not None and percent >= s.device_storage_low_percent
        if low and not device.storage_low:
            emit(tx, clock, device.project_id, "device.storage_low",
                 {**base, "storage_used_mb": hb.storage_used_mb,
                  "storage_total_mb": hb.storage_total_mb,
                  "storage_used_percent": round(percent or 0.0, 1),
                  "threshold_percent": s.device_storage_low_percent})
            emitted.append("device.storage_low")
        age = hb.backlog_oldest_age_s
        late = age is not None and age >= s.device_backlog_alert_s
        if late and not device.backlog_overdue:
            emit(tx, clock, device.project_id, "device.backlog",
                 {**base, "backlog_recordings": hb.backlog_recordings,
                  "backlog_chunks": hb.backlog_chunks, "backlog_bytes": hb.backlog_bytes,
                  "backlog_oldest_age_s": age, "threshold_s": s.device_backlog_alert_s})
            emitted.append("device.backlog")
        tx.execute("UPDATE devices SET offline = 0, storage_low = ?, backlog_overdue = ?"
                   " WHERE id = ?", [int(low), int(late), device.id])
        return emitted

    # -- the sweeper ----------------------------------------------------------------------
    def sweep_offline(self, limit: int = 100) -> list[str]:
        """Mark devices silent for ``device_offline_after_s`` offline, one event each;
        returns their ids (at most ``limit``)."""
        clock, after = self._ctx.clock, self._ctx.settings.device_offline_after_s
        cutoff = iso(clock.now() - timedelta(seconds=after))
        marked: list[str] = []
        due = ("SELECT id, project_id, end_user_id, last_heartbeat_at FROM devices"
               " WHERE offline = 0 AND last_heartbeat_at IS NOT NULL"
               " AND last_heartbeat_at < ? ORDER BY last_heartbeat_at LIMIT ?")
        if not self._ctx.db.read().execute(due, [cutoff, 1]).fetchall():
            return marked  # the usual case: no write transaction at all
        with self._ctx.db.write() as tx:  # re-read under the write lock: exactly once
            rows = tx.execute(due, [cutoff, limit]).fetchall()
            for device_id, project_id, end_user_id, last_at in rows:
                tx.execute("UPDATE devices SET offline = 1 WHERE id = ?", [device_id])
                emit(tx, clock, project_id, "device.offline",
                     {"device_id": device_id, "end_user_id": end_user_id,
                      "last_heartbeat_at": last_at, "offline_after_s": after})
                marked.append(device_id)
        return marked

    # -- listing --------------------------------------------------------------------------
    def list(self, p: Principal, *, state: str | None = None, limit: int = 25,
             cursor: str | None = None) -> DevicePage:
        """The project's devices, oldest first; ``state`` filters by health."""
        p.require("devices:read")
        if not 1 <= limit <= 100:
            raise invalid("limit", "limit must be between 1 and 100.")
        where, args = "project_id = ?", [p.project_id]
        if state is not None:
            if state not in DEVICE_FILTERS:
                raise invalid("state", f"state must be one of {', '.join(DEVICE_FILTERS)}.")
            where += {"offline": " AND offline = 1",
                      "online": " AND offline = 0 AND last_heartbeat_at IS NOT NULL",
                      "storage_low": " AND storage_low = 1",
                      "backlog": " AND backlog_overdue = 1"}[state]
        if cursor:
            where += " AND (created_at, id) > (?, ?)"
            args += list(cursors.decode_position(cursor))
        db = self._ctx.db.read()
        ids = [r[0] for r in db.execute(
            f"SELECT id FROM devices WHERE {where} ORDER BY created_at, id LIMIT ?",
            [*args, limit + 1]).fetchall()]
        devices = [load_device(db, p.project_id, i) for i in ids[:limit]]
        more = len(ids) > limit
        return DevicePage(devices, cursors.encode_position(iso(devices[-1].created_at),
                                                           devices[-1].id) if more else None)

    # -- settings -------------------------------------------------------------------------
    def get_settings(self, p: Principal, device_id: str | None) -> SettingsView:
        """The project's settings (``device_id=None``) or a device's effective ones."""
        p.require("devices:read")
        db = self._ctx.db.read()
        if device_id is not None:
            device_id = _key_device_id(device_id)
            load_device(db, p.project_id, device_id)
        return effective_settings(db, p.project_id, device_id)

    def put_settings(self, p: Principal, device_id: str | None,
                     new: DeviceSettings) -> SettingsView:
        """Replace the project's settings or a device's overrides (unset fields inherit);
        the change takes the project's next version number."""
        p.require("devices:write")
        validate_settings(new)
        now = iso(self._ctx.clock.now())
        with self._ctx.db.write() as tx:
            if device_id is not None:
                device_id = _key_device_id(device_id)
                load_device(tx, p.project_id, device_id)
            row = tx.execute("SELECT COALESCE(MAX(version), 0) FROM device_settings"
                             " WHERE project_id = ?", [p.project_id]).fetchone()
            dtx = None if new.dtx is None else int(new.dtx)
            tx.execute(
                "INSERT INTO device_settings (project_id, device_id, version, chunk_duration_ms,"
                " bitrate, dtx, heartbeat_interval_s, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (project_id, device_id) DO UPDATE SET version = excluded.version,"
                " chunk_duration_ms = excluded.chunk_duration_ms, bitrate = excluded.bitrate,"
                " dtx = excluded.dtx, heartbeat_interval_s = excluded.heartbeat_interval_s,"
                " updated_at = excluded.updated_at",
                [p.project_id, device_id or _PROJECT, int(row[0]) + 1, new.chunk_duration_ms,
                 new.bitrate, dtx, new.heartbeat_interval_s, now])
            return effective_settings(tx, p.project_id, device_id)

