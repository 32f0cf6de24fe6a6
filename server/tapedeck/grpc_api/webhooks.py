"""WebhookService: authenticate, translate, call ``domain.webhooks``. No rules here: scopes,
visibility, URL policy and validation live in ``tapedeck.domain.webhooks``."""

from __future__ import annotations

import grpc

from tapedeck.domain import Domain
from tapedeck.grpc_api import _convert as cv
from tapedeck.grpc_api._errors import translate_errors
from tapedeck.grpc_api.servicers import principal
from tapedeck.v1 import webhook_pb2 as pb
from tapedeck.v1 import webhook_pb2_grpc
from tapedeck.webhooks.models import Attempt, Delivery, Endpoint

SERVICES = (pb.DESCRIPTOR.services_by_name["WebhookService"].full_name,)


# -- conversions -------------------------------------------------------------------------
def webhook_pb(e: Endpoint) -> pb.Webhook:
    return pb.Webhook(
        id=e.id, url=e.url, events=list(e.events), description=e.description or "",
        status=pb.WebhookStatus.Value("WEBHOOK_STATUS_" + e.status.upper()),
        disabled_reason=e.disabled_reason or "", secret_hint=e.secret_hint,
        create_time=cv.ts(e.created_at), update_time=cv.ts(e.updated_at))


def attempt_pb(a: Attempt) -> pb.Attempt:
    out = pb.Attempt(attempt=a.attempt, attempt_time=cv.ts(a.attempted_at),
                     latency_ms=a.latency_ms or 0, error=a.error or "")
    if a.status_code is not None:
        out.status_code = a.status_code
    return out


def delivery_pb(d: Delivery) -> pb.Delivery:
    return pb.Delivery(
        id=d.id, webhook_id=d.webhook_id, event_id=d.event_id, event_type=d.event_type,
        replay=d.origin == "replay",
        status=pb.DeliveryStatus.Value("DELIVERY_STATUS_" + d.status.upper()),
        attempt_count=d.attempt_count, next_attempt_time=cv.ts(d.next_attempt_at),
        create_time=cv.ts(d.created_at), complete_time=cv.ts(d.completed_at),
        attempts=[attempt_pb(a) for a in d.attempts])


# -- service -----------------------------------------------------------------------------
class WebhookServicer(webhook_pb2_grpc.WebhookServiceServicer):
    """tapedeck.v1.WebhookService over the domain."""

    def __init__(self, domain: Domain) -> None:
        self._d = domain

    @translate_errors
    def CreateWebhook(self, request: pb.CreateWebhookRequest,
                      context: grpc.ServicerContext) -> pb.CreateWebhookResponse:
        created = self._d.webhooks.create(principal(self._d, context), request.url,
                                          list(request.events), request.description or None)
        return pb.CreateWebhookResponse(webhook=webhook_pb(created.endpoint),
                                        secret=created.secret)

    @translate_errors
    def GetWebhook(self, request: pb.GetWebhookRequest,
                   context: grpc.ServicerContext) -> pb.GetWebhookResponse:
        return pb.GetWebhookResponse(
            webhook=webhook_pb(self._d.webhooks.get(principal(self._d, context), request.id)))

    @translate_errors
    def ListWebhooks(self, request: pb.ListWebhooksRequest,
                     context: grpc.ServicerContext) -> pb.ListWebhooksResponse:
        page = self._d.webhooks.list(principal(self._d, context),
                                     limit=cv.page_limit(request.page_size),
                                     cursor=request.page_token or None)
        return pb.ListWebhooksResponse(webhooks=[webhook_pb(e) for e in page.data],
                                       next_page_token=page.next_cursor or "")

    @translate_errors
    def DeleteWebhook(self, request: pb.DeleteWebhookRequest,
                      context: grpc.ServicerContext) -> pb.DeleteWebhookResponse:
        self._d.webhooks.delete(principal(self._d, context), request.id)
        return pb.DeleteWebhookResponse()

    @translate_errors
    def ListWebhookDeliveries(self, request: pb.ListWebhookDeliveriesRequest,
                              context: grpc.ServicerContext
                              ) -> pb.ListWebhookDeliveriesResponse:
        page = self._d.webhooks.deliveries(
            principal(self._d, context), request.webhook_id,
            limit=cv.page_limit(request.page_size), cursor=request.page_token or None,
            status=cv.enum_name(pb.DeliveryStatus.DESCRIPTOR, "DELIVERY_STATUS_",
                                request.status, "status"),
            event_id=request.event_id or None)
        return pb.ListWebhookDeliveriesResponse(
            deliveries=[delivery_pb(d) for d in page.data],
            next_page_token=page.next_cursor or "")

    @translate_errors
    def ReplayWebhookEvents(self, request: pb.ReplayWebhookEventsRequest,
                            context: grpc.ServicerContext) -> pb.ReplayWebhookEventsResponse:
        result = self._d.webhooks.replay(
            principal(self._d, context), request.webhook_id,
            since=cv.from_ts(request.start_time, request.HasField("start_time")),
            until=cv.from_ts(request.end_time, request.HasField("end_time")),
            event_ids=list(request.event_ids) or None)
        return pb.ReplayWebhookEventsResponse(
            webhook_id=result.webhook_id, replayed=result.replayed,
            already_pending=result.already_pending,
            next_start_time=cv.ts(result.next_since))


def add_to_server(domain: Domain, server: grpc.Server) -> tuple[str, ...]:
    """Register WebhookService on ``server``; return its full name."""
    webhook_pb2_grpc.add_WebhookServiceServicer_to_server(WebhookServicer(domain), server)
    return SERVICES
