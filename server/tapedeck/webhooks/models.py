"""Webhook domain objects and their REST (JSON) shapes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tapedeck.clock import iso, parse_iso

EVENT_TYPES = (
    "recording.created", "recording.uploaded", "recording.failed", "recording.expired",
    "recording.deleted", "transcription.queued", "transcription.started",
    "transcription.completed", "transcription.failed",
    "device.offline", "device.online", "device.storage_low", "device.backlog",
)
ALL_EVENTS = "*"
DELIVERY_STATUSES = ("pending", "succeeded", "failed", "cancelled")


def _dt(s: str | None) -> datetime | None:
    return parse_iso(s)


def subscribed(events: tuple[str, ...], event_type: str) -> bool:
    """Whether an endpoint subscribed to ``events`` receives ``event_type``."""
    return ALL_EVENTS in events or event_type in events


@dataclass(frozen=True)
class Endpoint:
    """A webhook endpoint of a project (its secret is never part of it)."""

    id: str
    url: str
    events: tuple[str, ...]
    description: str | None
    status: str
    disabled_reason: str | None
    secret_hint: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Endpoint:
        """The endpoint of a ``webhook_endpoints`` row (the sealed secret is not read)."""
        created, updated = _dt(row["created_at"]), _dt(row["updated_at"])
        assert created is not None and updated is not None
        return cls(id=row["id"], url=row["url"], events=tuple(json.loads(row["events"])),
                   description=row["description"], status=row["status"],
                   disabled_reason=row["disabled_reason"], secret_hint=row["secret_hint"],
                   created_at=created, updated_at=updated)

    def to_json(self) -> dict[str, Any]:
        """The webhook endpoint object of ``api.md``: never the secret, only its hint."""
        return {"id": self.id, "url": self.url, "events": list(self.events),
                "description": self.description, "status": self.status,
                "disabled_reason": self.disabled_reason, "secret_hint": self.secret_hint,
                "created_at": iso(self.created_at), "updated_at": iso(self.updated_at)}


@dataclass(frozen=True)
class CreatedEndpoint:
    """A new endpoint and its ``whsec_`` secret, which is shown only in this response."""

    endpoint: Endpoint
    secret: str

    def to_json(self) -> dict[str, Any]:
        """The endpoint object plus its ``secret`` (the only time it is shown)."""
        return {**self.endpoint.to_json(), "secret": self.secret}


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt of a delivery."""

    attempt: int
    attempted_at: datetime
    status_code: int | None
    latency_ms: int | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        """One attempt of a delivery's ``attempts`` list."""
        return {"attempt": self.attempt, "attempted_at": iso(self.attempted_at),
                "status_code": self.status_code, "latency_ms": self.latency_ms,
                "error": self.error}


@dataclass(frozen=True)
class Delivery:
    """One event on its way to one endpoint, with every attempt made so far."""

    id: str
    webhook_id: str
    event_id: str
    event_type: str
    origin: str
    status: str
    attempt_count: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    completed_at: datetime | None
    attempts: list[Attempt] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The delivery object of ``api.md``, with its attempts, oldest first."""
        return {"id": self.id, "webhook_id": self.webhook_id, "event_id": self.event_id,
                "event_type": self.event_type, "replay": self.origin == "replay",
                "status": self.status, "attempt_count": self.attempt_count,
                "next_attempt_at": iso(self.next_attempt_at),
                "last_status_code": self.last_status_code, "last_error": self.last_error,
                "created_at": iso(self.created_at), "completed_at": iso(self.completed_at),
                "attempts": [a.to_json() for a in self.attempts]}


@dataclass(frozen=True)
class ReplayResult:
    """What a replay queued: new deliveries, events already on their way, continuation."""

    webhook_id: str
    replayed: int
    already_pending: int
    next_since: datetime | None

    def to_json(self) -> dict[str, Any]:
        """What a replay queued, with ``has_more`` and ``next_since`` to continue."""
        return {"webhook_id": self.webhook_id, "replayed": self.replayed,
                "already_pending": self.already_pending,
                "has_more": self.next_since is not None, "next_since": iso(self.next_since)}
