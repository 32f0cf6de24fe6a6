"""The event outbox: every domain event is a row appended inside the transaction that made
it true; the webhook dispatcher delivers them later (``tapedeck.webhooks.dispatcher``)."""

from __future__ import annotations

import json
from typing import Any

from tapedeck.clock import Clock, iso
from tapedeck.ids import new_id
from tapedeck.infra.sql import Tx


def emit(tx: Tx, clock: Clock, project_id: str, type: str,
         data: dict[str, Any], recording_id: str | None = None) -> str:
    """Append an event to the outbox inside the caller's write transaction."""
    event_id = new_id("evt_", clock.now())
    tx.execute(
        "INSERT INTO events (id, project_id, type, recording_id, created_at, data)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [event_id, project_id, type, recording_id, iso(clock.now()), json.dumps(data)])
    return event_id
