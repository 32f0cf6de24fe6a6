"""REST routes for webhook endpoints (``api.md`` "Webhooks"). Handlers only translate, as in
``routes``; the rules live in ``tapedeck.domain.webhooks``.

``POST /v1/webhooks`` answers the ``whsec_`` secret once; with an ``Idempotency-Key`` the
stored response holds it only sealed (``secret_field``: see ``domain.idempotency``).
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, Field

from tapedeck.domain.idempotency import StoredResponse, fingerprint
from tapedeck.gateway.body import parse_json
from tapedeck.gateway.docs import body_doc, errors_doc
from tapedeck.gateway.routes import ON_POST, Gateway, IdempotencyKey
from tapedeck.gateway.schemas import DeletedOut, RequestModel, ResponseModel
from tapedeck.webhooks.models import DELIVERY_STATUSES, EVENT_TYPES

EventType = Literal["*", "recording.created", "recording.uploaded", "recording.failed",
                    "recording.expired", "recording.deleted", "transcription.queued",
                    "transcription.started", "transcription.completed", "transcription.failed",
                    "device.offline", "device.online", "device.storage_low", "device.backlog"]
DeliveryStatus = Literal["pending", "succeeded", "failed", "cancelled"]
assert (get_args(EventType)[1:], get_args(DeliveryStatus)) == (EVENT_TYPES, DELIVERY_STATUSES), \
    "gateway/webhooks.py is out of date"
WebhookId = Annotated[str, Path(description="Webhook endpoint identifier (wh_…).")]
Cursor = Annotated[str | None, Query(description="next_cursor of a previous page")]


# -- request bodies ----------------------------------------------------------------------
class CreateWebhookRequest(RequestModel):
    """Body of ``POST /v1/webhooks``."""

    url: Annotated[str, Field(min_length=1, max_length=2048)] = Field(
        description="Absolute http(s) URL without credentials or fragment. Loopback, "
                    "private, link-local and metadata addresses are refused (checked again "
                    "after DNS resolution on every delivery).")
    events: list[str] = Field(
        min_length=1, max_length=len(EVENT_TYPES) + 1,
        description="Event types to deliver, or [\"*\"] for all: " + ", ".join(EVENT_TYPES)
        + " (others → invalid_request listing unknown_events).")
    description: Annotated[str, Field(max_length=500)] | None = None


class ReplayRequest(RequestModel):
    """Body of ``POST /v1/webhooks/{id}/replay``: a time range (``since`` ≤ created_at <
    ``until``, subscribed types) or ``event_ids`` (exactly those events), not both."""

    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    event_ids: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        default=None, max_length=1000)


BODY_MODELS = (CreateWebhookRequest, ReplayRequest)


# -- responses ---------------------------------------------------------------------------
class WebhookOut(ResponseModel):
    """A webhook endpoint (its secret is never shown again)."""

    id: str
    url: str
    events: list[str]
    description: str | None
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None
    secret_hint: str
    created_at: AwareDatetime
    updated_at: AwareDatetime


class CreatedWebhookOut(WebhookOut):
    """A new endpoint and its signing secret (``whsec_…``), shown only here."""

    secret: str


class WebhookPageOut(ResponseModel):
    """One page of endpoints, newest first."""

    data: list[WebhookOut]
    has_more: bool
    next_cursor: str | None


class AttemptOut(ResponseModel):
    """One HTTP attempt: when, the status code (null if no answer), latency, error."""

    attempt: int
    attempted_at: AwareDatetime
    status_code: int | None
    latency_ms: int | None
    error: str | None


class DeliveryOut(ResponseModel):
    """One event's delivery to the endpoint, with every attempt."""

    id: str
    webhook_id: str
    event_id: str
    event_type: str
    replay: bool
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: AwareDatetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: AwareDatetime
    completed_at: AwareDatetime | None
    attempts: list[AttemptOut]


class DeliveryPageOut(ResponseModel):
    """One page of the delivery log, newest first."""

    data: list[DeliveryOut]
    has_more: bool
    next_cursor: str | None


class ReplayOut(ResponseModel):
    """What a replay queued; ``next_since`` continues a range of more than 10,000 events."""

    webhook_id: str
    replayed: int
    already_pending: int
    has_more: bool
    next_since: AwareDatetime | None


# -- routes ------------------------------------------------------------------------------
def add_webhook_routes(router: APIRouter, gw: Gateway) -> None:
    """Register the webhook routes on ``router`` (the app's router, whose ``route_class``
    ``routes.add_routes`` has already set)."""
    _endpoint_routes(router, gw)
    _log_routes(router, gw)


def _endpoint_routes(r: APIRouter, gw: Gateway) -> None:
    d = gw.domain

    @r.post("/v1/webhooks", status_code=201, response_model=CreatedWebhookOut,
            summary="Create a webhook endpoint", responses=errors_doc(*ON_POST),
            openapi_extra=body_doc(CreateWebhookRequest))
    async def create_webhook(request: Request,
                             idempotency_key: IdempotencyKey = None) -> Response:
        """A new endpoint (``webhooks:write``) receiving the listed event types from now on.
        The ``secret`` that signs its deliveries is shown only in this answer."""
        p = await gw.caller(request)
        body = await parse_json(request, CreateWebhookRequest, gw.max_json_bytes)
        fp = fingerprint("webhooks.create", body.model_dump())
        return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
            201, d.webhooks.create(p, body.url, body.events, body.description).to_json()),
            secret_field="secret")

    @r.get("/v1/webhooks", response_model=WebhookPageOut, summary="List webhook endpoints",
           responses=errors_doc())
    async def list_webhooks(request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 25,
                            cursor: Cursor = None) -> Response:
        """The project's endpoints, newest first (``webhooks:read``)."""
        p = await gw.caller(request)
        page = await anyio.to_thread.run_sync(
            lambda: d.webhooks.list(p, limit=limit, cursor=cursor))
        return JSONResponse(page.to_json())

    @r.get("/v1/webhooks/{webhook_id}", response_model=WebhookOut,
           summary="Get a webhook endpoint", responses=errors_doc("webhook_not_found"))
    async def get_webhook(request: Request, webhook_id: WebhookId) -> Response:
        """One endpoint of the caller's project (``webhooks:read``)."""
        p = await gw.caller(request)
        endpoint = await anyio.to_thread.run_sync(lambda: d.webhooks.get(p, webhook_id))
        return JSONResponse(endpoint.to_json())

    @r.delete("/v1/webhooks/{webhook_id}", response_model=DeletedOut,
              summary="Delete a webhook endpoint", responses=errors_doc("webhook_not_found"))
    async def delete_webhook(request: Request, webhook_id: WebhookId) -> Response:
        """Delete the endpoint (``webhooks:write``); its pending deliveries are cancelled."""
        p = await gw.caller(request)
        await anyio.to_thread.run_sync(lambda: d.webhooks.delete(p, webhook_id))
        return JSONResponse({"id": webhook_id, "deleted": True})


def _log_routes(r: APIRouter, gw: Gateway) -> None:
    d = gw.domain

    @r.get("/v1/webhooks/{webhook_id}/deliveries", response_model=DeliveryPageOut,
           summary="List an endpoint's deliveries", responses=errors_doc("webhook_not_found"))
    async def list_deliveries(request: Request, webhook_id: WebhookId,
                              limit: Annotated[int, Query(ge=1, le=100)] = 25,
                              cursor: Cursor = None, status: DeliveryStatus | None = None,
                              event_id: str | None = None) -> Response:
        """The delivery log, newest first (``webhooks:read``): each delivery with every
        attempt's time, HTTP status, latency and error."""
        p = await gw.caller(request)
        page = await anyio.to_thread.run_sync(lambda: d.webhooks.deliveries(
            p, webhook_id, limit=limit, cursor=cursor, status=status, event_id=event_id))
        return JSONResponse(page.to_json())

    @r.post("/v1/webhooks/{webhook_id}/replay", response_model=ReplayOut,
            summary="Replay past events", responses=errors_doc("webhook_not_found", *ON_POST),
            openapi_extra=body_doc(ReplayRequest))
    async def replay(request: Request, webhook_id: WebhookId,
                     idempotency_key: IdempotencyKey = None) -> Response:
        """Queue past events for this endpoint again (``webhooks:write``), with their
        original ``webhook-id``. Events already pending for it are not queued twice.
        Replaying to a disabled endpoint enables it again."""
        p = await gw.caller(request)
        body = await parse_json(request, ReplayRequest, gw.max_json_bytes)
        fp = fingerprint("webhooks.replay", {"id": webhook_id, **body.model_dump()})
        return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
            200, d.webhooks.replay(p, webhook_id, since=body.since, until=body.until,
                                   event_ids=body.event_ids).to_json()))
