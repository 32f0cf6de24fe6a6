"""Devices (``dev_…``): register, bind to an end user, unbind, token refresh, heartbeats.

Rules (``api.md`` "Devices and end users", "Authentication and scopes"):

- ``create`` registers a device as ``unbound`` (``devices:write``).
- ``bind`` (``devices:write``) ties an unbound device to an end user of the same project and
  returns a new ``dtok_`` device token, shown only in that answer (stored as a hash). A bound
  device answers ``device_already_bound``; unbind it first. Recordings created with the token
  take the device and that end user from it.
- ``unbind`` (``devices:write``) revokes every token of the device (each fails on its very next
  request) and makes it ``unbound`` again. Repeating it is harmless.
- ``refresh_token``: only a device token, for its own device (``me`` or its id); it returns a
  new token and revokes the presented one in the same transaction, so the old one fails on
  the very next request and two refreshes racing with one token cannot both succeed.
- ``heartbeat``: a device token for its own device (``me`` or its id), or a key with
  ``devices:write``. Every field is optional; the heartbeat replaces the device's previous
  heartbeat state (fields it omits become null) and sets ``last_heartbeat_at``; a
  ``firmware_version`` in it also updates the device's firmware version.
- ``get`` (``devices:read``) shows the device with its last heartbeat; ``bound_to`` lists
  the devices bound to given end users.
- Keys act on devices of their own project, a device token only on its own device; anything
  else answers ``device_not_found`` (never reveals that the device exists). New tokens take
  the mode (test/live) of the credential that issued them.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

from tapedeck.auth import Principal, insert_device_token
from tapedeck.clock import iso, parse_iso
from tapedeck.domain._base import Context
from tapedeck.domain.end_users import load_end_user
from tapedeck.errors import error, invalid
from tapedeck.ids import new_id
from tapedeck.infra.sql import Tx

DEVICE_STATES = ("idle", "recording", "syncing", "uploading", "charging", "low_battery",
                 "storage_full", "error")
ME = "me"
_CONNECTION_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
_MAX_MB = 1_000_000_000
_TEXT_LIMITS = {"serial_number": 255, "model": 255, "firmware_version": 100}


@dataclass(frozen=True)
class Heartbeat:
    """One heartbeat; every field optional (``None`` = not reported)."""

    battery_percent: int | None = None
    storage_used_mb: int | None = None
    storage_total_mb: int | None = None
    signal_strength_dbm: int | None = None
    firmware_version: str | None = None
    device_state: str | None = None
    pending_recordings: int | None = None
    connection_type: str | None = None
    # Backlog: audio recorded on the device and not yet acknowledged by the server.
    backlog_recordings: int | None = None
    backlog_chunks: int | None = None
    backlog_bytes: int | None = None
    backlog_oldest_age_s: int | None = None
    # The version of the pushed device settings the device runs (0 = none).
    settings_version: int | None = None

    def state(self) -> dict[str, Any]:
        """The stored state: every field except ``firmware_version`` (a device field)."""
        return {k: v for k, v in asdict(self).items() if k != "firmware_version"}


HEARTBEAT_STATE_FIELDS = tuple(f.name for f in fields(Heartbeat) if f.name != "firmware_version")


@dataclass(frozen=True)
class NewDevice:
    """The body of a create request, already type-checked by the transport."""

    serial_number: str | None = None
    model: str | None = None
    firmware_version: str | None = None


@dataclass(frozen=True)
class Device:
    """A device as stored, with its last heartbeat; ``to_json`` is its REST shape."""

    id: str
    project_id: str
    serial_number: str | None
    model: str | None
    firmware_version: str | None
    status: str
    end_user_id: str | None
    created_at: datetime
    bound_at: datetime | None
    last_heartbeat_at: datetime | None
    heartbeat: dict[str, Any]
    # Fleet health flags (``tapedeck.domain.fleet``).
    offline: bool = False
    storage_low: bool = False
    backlog_overdue: bool = False

    def to_json(self) -> dict[str, Any]:
        """The device object of ``api.md``: device fields, last heartbeat, its time."""
        out: dict[str, Any] = {
            "id": self.id, "serial_number": self.serial_number, "model": self.model,
            "firmware_version": self.firmware_version, "status": self.status,
            "end_user_id": self.end_user_id, "created_at": iso(self.created_at),
            "bound_at": iso(self.bound_at), "last_heartbeat_at": iso(self.last_heartbeat_at),
        }
        out.update({name: self.heartbeat.get(name) for name in HEARTBEAT_STATE_FIELDS})
        out.update(offline=self.offline, storage_low=self.storage_low,
                   backlog_overdue=self.backlog_overdue)
        return out


@dataclass(frozen=True)
class IssuedToken:
    """A device and a new device token for it (the token is shown only this once)."""

    device: Device
    device_token: str

    def to_json(self) -> dict[str, Any]:
        """The device object plus its new ``device_token`` (shown only this once)."""
        return {**self.device.to_json(), "device_token": self.device_token}


@dataclass(frozen=True)
class RefreshedToken:
    """The answer of a token refresh: the device id and its new token (shown once)."""

    device_id: str
    device_token: str

    def to_json(self) -> dict[str, Any]:
        """``device_id`` and the new ``device_token`` (shown only this once)."""
        return {"device_id": self.device_id, "device_token": self.device_token}


def validate_new_device(req: NewDevice) -> None:
    """Length checks (``invalid_request`` naming the field)."""
    for name, limit in _TEXT_LIMITS.items():
        value = getattr(req, name)
        if value is not None and not 1 <= len(value) <= limit:
            raise invalid(name, f"{name} must be 1 to {limit} characters.")


def validate_heartbeat(hb: Heartbeat) -> None:
    """Range checks of a heartbeat (``invalid_request`` naming the field)."""
    ranges = {"battery_percent": (0, 100), "storage_used_mb": (0, _MAX_MB),
              "storage_total_mb": (0, _MAX_MB), "signal_strength_dbm": (-200, 0),
              "pending_recordings": (0, 1_000_000), "backlog_recordings": (0, 1_000_000),
              "backlog_chunks": (0, 100_000_000), "backlog_bytes": (0, 2 ** 50),
              "backlog_oldest_age_s": (0, 10 ** 9), "settings_version": (0, 2 ** 62)}
    for name, (low, high) in ranges.items():
        value = getattr(hb, name)
        if value is not None and not low <= value <= high:
            raise invalid(name, f"{name} must be between {low} and {high}.")
    used, total = hb.storage_used_mb, hb.storage_total_mb
    if used is not None and total is not None and used > total:
        raise invalid("storage_used_mb", "storage_used_mb is larger than storage_total_mb.")
    if hb.device_state is not None and hb.device_state not in DEVICE_STATES:
        raise invalid("device_state", f"device_state must be one of {', '.join(DEVICE_STATES)}.")
    if hb.connection_type is not None and not _CONNECTION_RE.match(hb.connection_type):
        raise invalid("connection_type",
                      "connection_type must be 1 to 32 of a-z, 0-9, '_' or '-' (e.g. wifi).")
    if hb.firmware_version is not None and not 1 <= len(hb.firmware_version) <= 100:
        raise invalid("firmware_version", "firmware_version must be 1 to 100 characters.")


_COLUMNS = ("id, project_id, serial_number, model, firmware_version, status, end_user_id,"
            " created_at, bound_at, last_heartbeat_at, heartbeat, offline, storage_low,"
            " backlog_overdue")


def load_device(db: Tx, project_id: str, device_id: str) -> Device:
    """The device of this project, else ``device_not_found``."""
    row = db.execute(f"SELECT {_COLUMNS} FROM devices WHERE id = ? AND project_id = ?",
                     [device_id, project_id]).fetchone()
    if row is None:
        raise error("device_not_found", "Device not found.", device_id=device_id)
    created = parse_iso(row[7])
    assert created is not None
    return Device(id=row[0], project_id=row[1], serial_number=row[2], model=row[3],
                  firmware_version=row[4], status=row[5], end_user_id=row[6],
                  created_at=created, bound_at=parse_iso(row[8]),
                  last_heartbeat_at=parse_iso(row[9]), heartbeat=json.loads(row[10] or "{}"),
                  offline=bool(row[11]), storage_low=bool(row[12]),
                  backlog_overdue=bool(row[13]))


def own_device_id(p: Principal, device_id: str) -> str:
    """The device a device token names (``me`` or its own id); ``device_not_found`` for
    any other id, so a device cannot learn which other devices exist."""
    assert p.kind == "device" and p.device_id is not None
    if device_id not in (ME, p.device_id):
        raise error("device_not_found", "Device not found.", device_id=device_id)
    return p.device_id


def recording_owner(tx: Tx, p: Principal, device_id: str | None,
                    end_user_id: str | None) -> tuple[str | None, str | None]:
    """The device and end user a new recording belongs to. A device token's own (body
    values are ignored); for keys, a named device and end user must be of the caller's
    project (``device_not_found`` / ``end_user_not_found``), and a device named without an
    end user lends the end user it is bound to."""
    if p.kind == "device":
        return p.device_id, p.end_user_id
    if device_id:
        end_user_id = end_user_id or load_device(tx, p.project_id, device_id).end_user_id
    if end_user_id:
        load_end_user(tx, p.project_id, end_user_id)
    return device_id, end_user_id


def _key_device_id(device_id: str) -> str:
    """A device id as named by an API key (which has no ``me``)."""
    if device_id == ME:
        raise invalid("device_id", "'me' names the calling device; use a device token.")
    if not device_id:
        raise invalid("device_id", "device_id is required.")
    return device_id


class Devices:
    """The device rules."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def create(self, p: Principal, req: NewDevice) -> Device:
        """Register a new ``unbound`` device."""
        p.require("devices:write")
        validate_new_device(req)
        device_id = new_id("dev_")
        with self._ctx.db.write() as tx:
            tx.execute(
                "INSERT INTO devices (id, project_id, serial_number, model, firmware_version,"
                " status, created_at) VALUES (?, ?, ?, ?, ?, 'unbound', ?)",
                [device_id, p.project_id, req.serial_number, req.model, req.firmware_version,
                 iso(self._ctx.clock.now())])
            return load_device(tx, p.project_id, device_id)

    def get(self, p: Principal, device_id: str) -> Device:
        """One device of the caller's project, with its last heartbeat."""
        p.require("devices:read")
        return load_device(self._ctx.db.read(), p.project_id, _key_device_id(device_id))

    def bind(self, p: Principal, device_id: str, end_user_id: str) -> IssuedToken:
        """Bind an unbound device to an end user; return it with a new device token."""
        p.require("devices:write")
        device_id = _key_device_id(device_id)
        if not end_user_id:
            raise invalid("end_user_id", "end_user_id is required.")
        now = iso(self._ctx.clock.now())
        with self._ctx.db.write() as tx:
            device = load_device(tx, p.project_id, device_id)
            load_end_user(tx, p.project_id, end_user_id)
            if device.status == "bound":
                raise error("device_already_bound",
                            "The device is already bound; unbind it first.",
                            device_id=device_id, end_user_id=device.end_user_id)
            tx.execute("UPDATE devices SET status = 'bound', end_user_id = ?, bound_at = ?"
                       " WHERE id = ?", [end_user_id, now, device_id])
            _, token = insert_device_token(tx, p.project_id, device_id, p.mode, now)
            return IssuedToken(load_device(tx, p.project_id, device_id), token)

    def unbind(self, p: Principal, device_id: str) -> Device:
        """Revoke every token of the device and make it ``unbound``."""
        p.require("devices:write")
        device_id = _key_device_id(device_id)
        now = iso(self._ctx.clock.now())
        with self._ctx.db.write() as tx:
            load_device(tx, p.project_id, device_id)
            tx.execute("UPDATE device_tokens SET revoked_at = ?, revoked_reason = 'unbound'"
                       " WHERE device_id = ? AND revoked_at IS NULL", [now, device_id])
            tx.execute("UPDATE devices SET status = 'unbound', end_user_id = NULL,"
                       " bound_at = NULL WHERE id = ?", [device_id])
            return load_device(tx, p.project_id, device_id)

    def refresh_token(self, p: Principal, device_id: str) -> RefreshedToken:
        """Replace the presented device token by a new one (the old one is revoked)."""
        if p.kind != "device":
            raise error("forbidden", "Only a device token can refresh itself.")
        device_id = own_device_id(p, device_id)
        now = iso(self._ctx.clock.now())
        with self._ctx.db.write() as tx:
            revoked = tx.execute(
                "UPDATE device_tokens SET revoked_at = ?, revoked_reason = 'refreshed'"
                " WHERE id = ? AND revoked_at IS NULL", [now, p.credential_id]).rowcount
            if revoked != 1:  # refreshed or revoked since this request authenticated
                raise error("unauthorized", "The device token is unknown or revoked.")
            _, token = insert_device_token(tx, p.project_id, device_id, p.mode, now)
        return RefreshedToken(device_id, token)

    def bound_to(self, p: Principal, end_user_ids: list[str]) -> dict[str, list[Device]]:
        """The devices bound to each of ``end_user_ids`` (of the caller's project; ids of
        other projects simply have none), oldest first; every id is a key of the answer."""
        p.require("devices:read")
        out: dict[str, list[Device]] = {i: [] for i in end_user_ids}
        if not end_user_ids:
            return out
        db = self._ctx.db.read()
        marks = ", ".join("?" * len(out))
        for device_id, end_user_id in db.execute(
                f"SELECT id, end_user_id FROM devices WHERE project_id = ? AND end_user_id IN"
                f" ({marks}) ORDER BY created_at, id", [p.project_id, *out]).fetchall():
            out[end_user_id].append(load_device(db, p.project_id, device_id))
        return out

    def heartbeat(self, p: Principal, device_id: str, hb: Heartbeat) -> datetime:
        """Store ``hb`` as the device's latest state; return its ``last_heartbeat_at``.
        (Transports call ``Fleet.heartbeat``, which adds the fleet transitions.)"""
        device_id = heartbeat_device_id(p, device_id)
        validate_heartbeat(hb)
        now = self._ctx.clock.now()
        with self._ctx.db.write() as tx:
            store_heartbeat(tx, p.project_id, device_id, hb, now)
        return now


def heartbeat_device_id(p: Principal, device_id: str) -> str:
    """The device a heartbeat is for, after the credential checks: a device token for its
    own device (``devices:heartbeat``), or a key with ``devices:write``."""
    if p.kind == "device":
        p.require("devices:heartbeat")
        return own_device_id(p, device_id)
    p.require("devices:write")
    return _key_device_id(device_id)


def store_heartbeat(tx: Tx, project_id: str, device_id: str, hb: Heartbeat,
                    now: datetime) -> tuple[Device, datetime | None]:
    """Store ``hb`` (validated) as the device's latest state inside ``tx``; returns the
    device as it was before and its previous ``last_heartbeat_at``."""
    device = load_device(tx, project_id, device_id)
    tx.execute(
        "UPDATE devices SET heartbeat = ?, last_heartbeat_at = ?,"
        " firmware_version = COALESCE(?, firmware_version) WHERE id = ?",
        [json.dumps(hb.state()), iso(now), hb.firmware_version, device_id])
    return device, device.last_heartbeat_at
