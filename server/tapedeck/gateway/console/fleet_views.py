"""What each fleet page of the console shows, built from domain calls only (``fleet.py``
registers the routes). Each view takes the caller and the page's path and query parameters
and returns the template context; a domain error (``forbidden`` for a missing scope,
``*_not_found``, ``invalid_request`` for a bad filter or cursor) propagates to the page."""

from __future__ import annotations

from typing import Any

from tapedeck.auth import ALL_SCOPES, Principal
from tapedeck.domain import Domain
from tapedeck.domain.devices import HEARTBEAT_STATE_FIELDS
from tapedeck.domain.fleet import DEVICE_FILTERS
from tapedeck.errors import TapedeckError
from tapedeck.webhooks.models import DELIVERY_STATUSES

#: Rows per page of every fleet list.
PAGE = 25
#: The scope checkboxes of the key form, in order.
SCOPES = tuple(sorted(ALL_SCOPES))
#: The notices an action's redirect may ask a page to show (``?notice=``); nothing else
#: from the URL is ever shown as a message.
NOTICES = {
    "unbound": "Device unbound: its device tokens are revoked.",
    "replayed": "Replay queued: the event is on its way again.",
    "already_pending": "That event already has a delivery pending on this endpoint.",
    "revoked": "API key revoked.",
}


def _opt(q: dict[str, str], name: str) -> str | None:
    return q.get(name) or None


def devices_view(d: Domain, p: Principal, q: dict[str, str]) -> dict[str, Any]:
    """The project's devices (oldest first), optionally by health ``state``."""
    page = d.fleet.list(p, state=_opt(q, "state"), cursor=_opt(q, "cursor"), limit=PAGE)
    return {"page": page, "states": ("", *DEVICE_FILTERS), "f": {"state": q.get("state", "")}}


def device_view(d: Domain, p: Principal, q: dict[str, str]) -> dict[str, Any]:
    """One device with its last heartbeat and its end user (name if readable)."""
    dev = d.devices.get(p, q["device_id"])
    end_user = None
    if dev.end_user_id and "end_users:read" in p.scopes:
        try:
            end_user = d.end_users.get(p, dev.end_user_id)
        except TapedeckError:
            end_user = None
    heartbeat = [(name, dev.heartbeat.get(name)) for name in HEARTBEAT_STATE_FIELDS]
    return {"dev": dev, "end_user": end_user, "heartbeat": heartbeat,
            "can_write": "devices:write" in p.scopes}


def end_users_view(d: Domain, p: Principal, q: dict[str, str]) -> dict[str, Any]:
    """End users (newest first) with their devices (if readable) and voice profile counts."""
    page = d.end_users.list(p, cursor=_opt(q, "cursor"), limit=PAGE)
    ids = [e.id for e in page.data]
    devices = d.devices.bound_to(p, ids) if "devices:read" in p.scopes else None
    return {"page": page, "devices": devices, "profiles": d.voice_profiles.counts(p, ids)}


def end_user_view(d: Domain, p: Principal, q: dict[str, str]) -> dict[str, Any]:
    """One end user with their devices (if readable) and voice profile count."""
    eu = d.end_users.get(p, q["end_user_id"])
    devices = d.devices.bound_to(p, [eu.id])[eu.id] if "devices:read" in p.scopes else None
    return {"eu": eu, "devices": devices, "profiles": d.voice_profiles.counts(p, [eu.id])[eu.id]}


def webhooks_view(d: Domain, p: Principal, q: dict[str, str]) -> dict[str, Any]:
    """The project's webhook endpoints, newest first."""
    return {"page": d.webhooks.list(p, cursor=_opt(q, "cursor"), limit=PAGE)}


def webhook_view(d: Domain, p: Principal, q: dict[str, str]) -> dict[str, Any]:
    """One endpoint and its deliveries (newest first, each with its attempts)."""
    wh = d.webhooks.get(p, q["webhook_id"])
    page = d.webhooks.deliveries(p, wh.id, cursor=_opt(q, "cursor"),
                                 status=_opt(q, "status"), limit=PAGE)
    return {"wh": wh, "page": page, "statuses": ("", *DELIVERY_STATUSES),
            "f": {"status": q.get("status", "")}, "can_replay": "webhooks:write" in p.scopes}


def api_keys_view(d: Domain, p: Principal, q: dict[str, str]) -> dict[str, Any]:
    """The project's keys, newest first (secret keys only: others get ``forbidden``)."""
    page = d.keys.list(p, cursor=_opt(q, "cursor"), limit=PAGE)
    return {"page": page, "scopes": SCOPES, "mine": p.credential_id}
