"""Webhook endpoint rules: create, read, list, delete, delivery log, replay.

Every public method takes the caller's ``Principal`` first (``webhooks:read`` for reads,
``webhooks:write`` for changes) and raises only ``TapedeckError``s. Another project's or a
deleted endpoint answers ``webhook_not_found``.

Contracts:

- ``create`` returns the ``whsec_`` secret once; only its AES-GCM sealed form is stored.
  The endpoint receives events committed AFTER it was created (``start_after_seq``).
- ``delete`` is soft (the delivery log stays for the record) and cancels pending deliveries.
- ``replay`` queues a new delivery (same ``webhook-id`` = event id) for each chosen event
  that has none pending on this endpoint. By time range it picks the subscribed event types;
  by ids it takes exactly those events. Replaying to a disabled endpoint re-enables it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from tapedeck.auth import Principal
from tapedeck.clock import iso, parse_iso
from tapedeck.domain import cursors
from tapedeck.domain.context import Context
from tapedeck.domain.models import Page
from tapedeck.errors import error, invalid
from tapedeck.ids import new_id
from tapedeck.infra.db import Database
from tapedeck.infra.sql import Tx
from tapedeck.webhooks.models import (
    ALL_EVENTS,
    DELIVERY_STATUSES,
    EVENT_TYPES,
    Attempt,
    CreatedEndpoint,
    Delivery,
    Endpoint,
    ReplayResult,
)
from tapedeck.webhooks.netguard import NetPolicy, ip_literal
from tapedeck.webhooks.secretbox import SecretBox
from tapedeck.webhooks.signing import new_secret, secret_hint

MAX_ENDPOINTS = 100
MAX_URL = 2048
MAX_REPLAY = 10_000
MAX_REPLAY_IDS = 1000


def validate_url(url: str, policy: NetPolicy) -> str:
    """An absolute http(s) URL without credentials or fragment, not aimed at an address the
    policy refuses when the host is an IP literal or ``localhost`` (host names are checked
    again, after resolution, on every delivery)."""
    if not url or len(url) > MAX_URL or any(c.isspace() or ord(c) < 32 for c in url):
        raise invalid("url", f"url must be a non-empty URL of at most {MAX_URL} characters.")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid("url", "url must be an absolute http:// or https:// URL.")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise invalid("url", "url must not contain credentials or a #fragment.")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise invalid("url", "url has an invalid port.") from None
    host = parts.hostname
    literal = ip_literal(host)
    if host == "localhost" or host.endswith(".localhost"):
        literal = ip_literal("127.0.0.1")
    reason = policy.refusal(literal) if literal is not None else None
    if reason is not None:
        raise error("invalid_request",
                    f"url points to a {reason} address, which webhooks may not reach.",
                    field="url", reason=reason)
    return url


def validate_events(events: Sequence[str]) -> tuple[str, ...]:
    """A non-empty list of known event types (or ``*`` for all), duplicates removed."""
    if not events:
        raise invalid("events", "events must list at least one event type (or \"*\").")
    unknown = [e for e in events if e not in EVENT_TYPES and e != ALL_EVENTS]
    if unknown:
        raise error("invalid_request", f"Unknown event types: {', '.join(map(str, unknown))}.",
                    field="events", unknown_events=unknown)
    return tuple(dict.fromkeys(events))


class Webhooks:
    """The webhook endpoint service of one deployment."""

    def __init__(self, ctx: Context, box: SecretBox) -> None:
        self._ctx = ctx
        self._box = box
        self._policy = NetPolicy(allow_private=ctx.settings.webhooks_allow_private)

    # -- endpoints ------------------------------------------------------------------------
    def create(self, p: Principal, url: str, events: Sequence[str],
               description: str | None = None) -> CreatedEndpoint:
        """A new endpoint with its secret (shown once)."""
        p.require("webhooks:write")
        url = validate_url(url, self._policy)
        types = validate_events(events)
        if description is not None and len(description) > 500:
            raise invalid("description", "description must be at most 500 characters.")
        secret, endpoint_id = new_secret(), new_id("wh_")
        now = iso(self._ctx.clock.now())
        with self._ctx.db.write() as tx:
            count = tx.execute("SELECT count(*) FROM webhook_endpoints WHERE project_id = ?"
                               " AND status != 'deleted'", [p.project_id]).fetchone()[0]
            if count >= MAX_ENDPOINTS:
                raise invalid("url", f"A project may have at most {MAX_ENDPOINTS} endpoints.")
            tx.execute(
                "INSERT INTO webhook_endpoints (id, project_id, url, description, events,"
                " secret_sealed, secret_hint, status, start_after_seq, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'enabled', ?, ?, ?)",
                [endpoint_id, p.project_id, url, description, json.dumps(list(types)),
                 self._box.seal(secret, endpoint_id), secret_hint(secret),
                 outbox_high_water(tx), now, now])
            endpoint = _load(tx, p, endpoint_id)
        return CreatedEndpoint(endpoint, secret)

    def get(self, p: Principal, webhook_id: str) -> Endpoint:
        """One endpoint of the caller's project."""
        p.require("webhooks:read")
        return _load(self._ctx.db.read(), p, webhook_id)

    def list(self, p: Principal, *, limit: int = 25, cursor: str | None = None) -> Page:
        """Endpoints newest first; ``cursor`` continues a previous page."""
        p.require("webhooks:read")
        _check_limit(limit)
        where, args = "project_id = ? AND status != 'deleted'", [p.project_id]
        if cursor:
            where += " AND id < ?"
            args.append(cursors.decode_key(cursor, str))
        rows = _rows(self._ctx.db.read(), f"SELECT * FROM webhook_endpoints WHERE {where}"
                     " ORDER BY id DESC LIMIT ?", [*args, limit + 1])
        nxt = cursors.encode_key(rows[limit - 1]["id"]) if len(rows) > limit else None
        return Page([Endpoint.from_row(r) for r in rows[:limit]], nxt)

    def delete(self, p: Principal, webhook_id: str) -> None:
        """Delete the endpoint; its pending deliveries are cancelled."""
        p.require("webhooks:write")
        now = iso(self._ctx.clock.now())
        with self._ctx.db.write() as tx:
            _load(tx, p, webhook_id)
            tx.execute("UPDATE webhook_endpoints SET status = 'deleted', deleted_at = ?,"
                       " updated_at = ? WHERE id = ?", [now, now, webhook_id])
            cancel_pending(tx, webhook_id, now, "endpoint deleted")

    # -- delivery log -----------------------------------------------------------------------
    def deliveries(self, p: Principal, webhook_id: str, *, limit: int = 25,
                   cursor: str | None = None, status: str | None = None,
                   event_id: str | None = None) -> Page:
        """The endpoint's deliveries newest first, each with all its attempts."""
        p.require("webhooks:read")
        _check_limit(limit)
        if status is not None and status not in DELIVERY_STATUSES:
            raise invalid("status", f"status must be one of {', '.join(DELIVERY_STATUSES)}.")
        db = self._ctx.db.read()
        _load(db, p, webhook_id)
        where = ["d.endpoint_id = ?"]
        args: list[str | int] = [webhook_id]
        for col, value in (("d.status", status), ("d.event_id", event_id)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if cursor:
            where.append("d.seq < ?")
            args.append(cursors.decode_key(cursor, int))
        rows = _rows(db, "SELECT d.*, e.type AS event_type FROM webhook_deliveries d"
                     " LEFT JOIN events e ON e.id = d.event_id"
                     f" WHERE {' AND '.join(where)} ORDER BY d.seq DESC LIMIT ?",
                     [*args, limit + 1])
        nxt = cursors.encode_key(rows[limit - 1]["seq"]) if len(rows) > limit else None
        return Page(_with_attempts(db, rows[:limit]), nxt)

    # -- replay -------------------------------------------------------------------------------
    def replay(self, p: Principal, webhook_id: str, *, since: datetime | None = None,
               until: datetime | None = None,
               event_ids: Sequence[str] | None = None) -> ReplayResult:
        """Queue past events again, by time range (``since`` ≤ created_at < ``until``) or ids."""
        p.require("webhooks:write")
        _check_replay_args(since, until, event_ids)
        now = iso(self._ctx.clock.now())
        with self._ctx.db.write() as tx:
            endpoint = _load(tx, p, webhook_id)
            if event_ids:
                chosen, next_since = _events_by_id(tx, p.project_id, event_ids), None
            else:
                chosen, next_since = _events_in_range(tx, p.project_id, endpoint, since, until)
            pending = _pending_events(tx, webhook_id)
            fresh = [e for e in chosen if e not in pending]
            for event_id in fresh:
                insert_delivery(tx, webhook_id, event_id, p.project_id, "replay", now)
            if endpoint.status == "disabled":
                tx.execute("UPDATE webhook_endpoints SET status = 'enabled', disabled_reason ="
                           " NULL, updated_at = ? WHERE id = ?", [now, webhook_id])
        return ReplayResult(webhook_id, len(fresh), len(chosen) - len(fresh), next_since)


# -- shared with the dispatcher ----------------------------------------------------------------
def outbox_high_water(tx: Tx) -> int:
    """The highest ``webhook_outbox.seq`` ever assigned (AUTOINCREMENT never reuses one)."""
    if tx.dialect == "postgresql":  # the identity's sequence (NULL before its first value)
        row = tx.execute("SELECT pg_sequence_last_value("
                         "pg_get_serial_sequence('webhook_outbox', 'seq')::regclass)").fetchone()
    else:
        row = tx.execute("SELECT seq FROM sqlite_sequence WHERE name = 'webhook_outbox'"
                         ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def insert_delivery(tx: Tx, endpoint_id: str, event_id: str,
                    project_id: str, origin: str, now: str | None) -> str:
    """A new pending delivery, due ``now``."""
    delivery_id = new_id("whd_")
    tx.execute(
        "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, project_id, origin,"
        " status, next_attempt_at, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
        [delivery_id, endpoint_id, event_id, project_id, origin, now, now, now])
    return delivery_id


def cancel_pending(tx: Tx, endpoint_id: str, now: str | None,
                   reason: str) -> None:
    """Cancel every pending delivery of an endpoint (deleted or disabled)."""
    tx.execute("UPDATE webhook_deliveries SET status = 'cancelled', lease_owner = NULL,"
               " last_error = ?, completed_at = ?, updated_at = ?"
               " WHERE endpoint_id = ? AND status = 'pending'", [reason, now, now, endpoint_id])


# -- helpers ---------------------------------------------------------------------------------
def _rows(db: Tx, sql: str, args: list[Any]) -> list[dict[str, Any]]:
    cur = db.execute(sql, args)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def _load(db: Tx, p: Principal, webhook_id: str) -> Endpoint:
    rows = _rows(db, "SELECT * FROM webhook_endpoints WHERE id = ? AND project_id = ?"
                 " AND status != 'deleted'", [webhook_id, p.project_id])
    if not rows:
        raise error("webhook_not_found", "Webhook endpoint not found.", webhook_id=webhook_id)
    return Endpoint.from_row(rows[0])


def _iso(t: datetime) -> str:
    out = iso(t)
    assert out is not None
    return out


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 100:
        raise invalid("limit", "limit must be between 1 and 100.")


def _check_replay_args(since: datetime | None, until: datetime | None,
                       event_ids: Sequence[str] | None) -> None:
    if event_ids and (since is not None or until is not None):
        raise invalid("event_ids", "Give either event_ids or a time range, not both.")
    if not event_ids and since is None and until is None:
        raise invalid("since", "Give a time range (since and/or until) or event_ids.")
    if event_ids and len(event_ids) > MAX_REPLAY_IDS:
        raise invalid("event_ids", f"At most {MAX_REPLAY_IDS} event ids per replay.")
    if since is not None and until is not None and since >= until:
        raise invalid("until", "until must be later than since.")


def _events_by_id(tx: Tx, project_id: str,
                  event_ids: Sequence[str]) -> list[str]:
    wanted = list(dict.fromkeys(event_ids))
    marks = ", ".join("?" * len(wanted))
    found = {r[0]: r[1] for r in tx.execute(
        f"SELECT id, created_at FROM events WHERE project_id = ? AND id IN ({marks})",
        [project_id, *wanted]).fetchall()}
    unknown = [e for e in wanted if e not in found]
    if unknown:
        raise error("invalid_request", "Some events do not exist in this project.",
                    field="event_ids", unknown_event_ids=unknown)
    return sorted(wanted, key=lambda e: (found[e], e))


def _events_in_range(tx: Tx, project_id: str, endpoint: Endpoint,
                     since: datetime | None,
                     until: datetime | None) -> tuple[list[str], datetime | None]:
    where, args = ["project_id = ?"], [project_id]
    if since is not None:
        where.append("created_at >= ?")
        args.append(_iso(since))
    if until is not None:
        where.append("created_at < ?")
        args.append(_iso(until))
    if ALL_EVENTS not in endpoint.events:
        where.append(f"type IN ({', '.join('?' * len(endpoint.events))})")
        args += list(endpoint.events)
    rows = tx.execute(f"SELECT id, created_at FROM events WHERE {' AND '.join(where)}"
                      " ORDER BY created_at, rowid LIMIT ?", [*args, MAX_REPLAY + 1]).fetchall()
    next_since = parse_iso(rows[MAX_REPLAY][1]) if len(rows) > MAX_REPLAY else None
    return [r[0] for r in rows[:MAX_REPLAY]], next_since


def _pending_events(tx: Tx, endpoint_id: str) -> set[str]:
    return {r[0] for r in tx.execute(
        "SELECT event_id FROM webhook_deliveries WHERE endpoint_id = ? AND status = 'pending'",
        [endpoint_id]).fetchall()}


def _with_attempts(db: Tx, rows: list[dict[str, Any]]) -> list[Delivery]:
    by_delivery: dict[str, list[Attempt]] = {r["id"]: [] for r in rows}
    if rows:
        marks = ", ".join("?" * len(rows))
        for a in _rows(db, "SELECT * FROM webhook_attempts WHERE delivery_id IN"
                       f" ({marks}) ORDER BY id", [r["id"] for r in rows]):
            at = parse_iso(a["attempted_at"])
            assert at is not None
            by_delivery[a["delivery_id"]].append(Attempt(
                attempt=a["attempt"], attempted_at=at, status_code=a["status_code"],
                latency_ms=a["latency_ms"], error=a["error"]))
    out = []
    for r in rows:
        created = parse_iso(r["created_at"])
        assert created is not None
        out.append(Delivery(
            id=r["id"], webhook_id=r["endpoint_id"], event_id=r["event_id"],
            event_type=r["event_type"] or "", origin=r["origin"], status=r["status"],
            attempt_count=r["attempts"],
            next_attempt_at=parse_iso(r["next_attempt_at"]) if r["status"] == "pending" else None,
            last_status_code=r["last_status_code"], last_error=r["last_error"],
            created_at=created, completed_at=parse_iso(r["completed_at"]),
            attempts=by_delivery[r["id"]]))
    return out




def reseal_secrets(db: Database, box: SecretBox) -> dict[str, int]:
    """``tapedeck admin reseal-secrets``: seal every endpoint's secret under ``box``'s current
    key (after a key rotation, so the previous key can be dropped). Returns the counts
    ``resealed``, ``current`` (already under the current key) and ``unreadable`` (opens with
    no accepted key; left as it is)."""
    counts = {"resealed": 0, "current": 0, "unreadable": 0}
    with db.write() as tx:
        rows = tx.execute("SELECT id, secret_sealed FROM webhook_endpoints").fetchall()
        for endpoint_id, sealed in rows:
            if box.opens_with_current(sealed, endpoint_id):
                counts["current"] += 1
                continue
            try:
                secret = box.open(sealed, endpoint_id)
            except ValueError:
                counts["unreadable"] += 1
                continue
            tx.execute("UPDATE webhook_endpoints SET secret_sealed = ? WHERE id = ?",
                       [box.seal(secret, endpoint_id), endpoint_id])
            counts["resealed"] += 1
    return counts
