"""The webhook API over real REST and gRPC servers (with the dispatcher role running): CRUD,
secret shown once, scopes and project isolation, delivery log, replay, and an event from a
real domain action arriving signed at a real receiver."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tapedeck.auth import create_project
from tapedeck.grpc_api._errors import from_rpc_error
from tapedeck.v1 import recording_pb2, webhook_pb2, webhook_pb2_grpc

from serverkit import RunningServer, auth, drop_bucket, make_settings, start_server
from webhookkit import Receiver

# Part of the API contract subset that runs on both databases (issue 19).
pytestmark = pytest.mark.both_backends


@pytest.fixture
def srv(weed: Any, tmp_path: Path) -> Iterator[RunningServer]:
    s = start_server(make_settings(weed, tmp_path / "data"),
                     roles=["grpc", "http", "dispatcher"])
    try:
        yield s
    finally:
        s.close()
        drop_bucket(weed, s.app.settings.s3_bucket)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def _http(srv: RunningServer, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=srv.http_url, timeout=30,
                        headers={"authorization": f"Bearer {key or srv.api_key}"})


def test_rest_lifecycle_and_real_delivery(srv: RunningServer, receiver: Receiver) -> None:
    with _http(srv) as c:
        r = c.post("/v1/webhooks", json={"url": receiver.url, "description": "mine",
                                         "events": ["recording.created", "recording.deleted"]})
        assert r.status_code == 201, r.text
        created = r.json()
        secret, wh_id = created["secret"], created["id"]
        assert secret.startswith("whsec_") and wh_id.startswith("wh_")
        assert created["status"] == "enabled" and created["secret_hint"].endswith(secret[-4:])

        got = c.get(f"/v1/webhooks/{wh_id}").json()
        assert "secret" not in got and got["url"] == receiver.url
        assert got == {k: v for k, v in created.items() if k != "secret"}
        assert [w["id"] for w in c.get("/v1/webhooks").json()["data"]] == [wh_id]

        # a real domain action: its event reaches the receiver, signed
        rec = srv.recordings().CreateRecording(recording_pb2.CreateRecordingRequest(
            name="standup"), metadata=auth(srv.api_key)).recording
        assert receiver.wait_for(lambda rs: len(rs) == 1, 30)
        [req] = receiver.requests
        payload = Webhook(secret).verify(req.body, req.headers)
        assert payload["type"] == "recording.created" and payload["data"]["id"] == rec.id
        assert payload["id"] == req.webhook_id and payload["id"].startswith("evt_")

        log = _wait_log(c, wh_id, lambda d: d["data"] and d["data"][0]["status"] == "succeeded")
        [delivery] = log["data"]
        assert delivery["event_id"] == payload["id"] and delivery["attempt_count"] == 1
        [attempt] = delivery["attempts"]
        assert attempt["status_code"] == 200 and attempt["error"] is None
        assert isinstance(attempt["latency_ms"], int)

        r = c.post(f"/v1/webhooks/{wh_id}/replay", json={"event_ids": [payload["id"]]})
        assert r.status_code == 200, r.text
        assert r.json() == {"webhook_id": wh_id, "replayed": 1, "already_pending": 0,
                            "has_more": False, "next_since": None}
        assert receiver.wait_for(lambda rs: len(rs) == 2, 30)
        assert receiver.requests[1].body == req.body  # same id, same bytes

        assert c.delete(f"/v1/webhooks/{wh_id}").json() == {"id": wh_id, "deleted": True}
        r = c.get(f"/v1/webhooks/{wh_id}")
        assert r.status_code == 404 and r.json()["error"]["type"] == "webhook_not_found"
        assert c.get("/v1/webhooks").json()["data"] == []


def _wait_log(c: httpx.Client, wh_id: str, ready: Any) -> dict[str, Any]:
    for _ in range(300):
        log: dict[str, Any] = c.get(f"/v1/webhooks/{wh_id}/deliveries").json()
        if ready(log):
            return log
        time.sleep(0.05)
    raise AssertionError(log)


def test_rest_validation_scopes_and_isolation(srv: RunningServer, receiver: Receiver) -> None:
    with _http(srv) as c:
        r = c.post("/v1/webhooks", json={"url": receiver.url, "events": ["recording.made"]})
        assert r.status_code == 400
        assert r.json()["error"]["unknown_events"] == ["recording.made"]
        r = c.post("/v1/webhooks", json={"url": "http://169.254.169.254/", "events": ["*"]})
        assert r.status_code == 400 and r.json()["error"]["reason"] == "metadata"
        r = c.post("/v1/webhooks", json={"url": receiver.url, "events": ["*"], "secret": "x"})
        assert r.status_code == 400  # unknown field
        wh_id = c.post("/v1/webhooks", json={"url": receiver.url, "events": ["*"]}).json()["id"]
        r = c.post(f"/v1/webhooks/{wh_id}/replay", json={})
        assert r.status_code == 400 and r.json()["error"]["field"] == "since"
        r = c.get(f"/v1/webhooks/{wh_id}/deliveries", params={"status": "lost"})
        assert r.status_code == 400

    _, other_key = create_project(srv.app.db, srv.app.clock, "other")
    with _http(srv, other_key) as c:
        since = {"since": "2026-01-01T00:00:00Z"}
        for method, path, body in [("GET", "", None), ("GET", "/deliveries", None),
                                   ("DELETE", "", None), ("POST", "/replay", since)]:
            r = c.request(method, f"/v1/webhooks/{wh_id}{path}", json=body)
            assert r.status_code == 404 and r.json()["error"]["type"] == "webhook_not_found"
        assert c.get("/v1/webhooks").json()["data"] == []

    _, device_token = srv.device_token()
    with _http(srv, device_token) as c:
        r = c.get("/v1/webhooks")
        assert r.status_code == 403 and r.json()["error"]["scope"] == "webhooks:read"
        r = c.post("/v1/webhooks", json={"url": receiver.url, "events": ["*"]})
        assert r.status_code == 403 and r.json()["error"]["scope"] == "webhooks:write"


def test_rest_idempotent_create_returns_the_same_secret(srv: RunningServer,
                                                        receiver: Receiver) -> None:
    body = {"url": receiver.url, "events": ["*"]}
    with _http(srv) as c:
        first = c.post("/v1/webhooks", json=body, headers={"Idempotency-Key": "k1"})
        again = c.post("/v1/webhooks", json=body, headers={"Idempotency-Key": "k1"})
        assert first.status_code == again.status_code == 201
        assert first.json() == again.json()
        assert again.headers.get("idempotent-replayed") == "true"
        assert len(c.get("/v1/webhooks").json()["data"]) == 1
    rows = srv.app.db.read().execute("SELECT response_body FROM idempotency_keys").fetchall()
    assert rows and all(first.json()["secret"] not in r[0] for r in rows)


def test_grpc_twins(srv: RunningServer, receiver: Receiver) -> None:
    stub = webhook_pb2_grpc.WebhookServiceStub(srv.channel())
    md = auth(srv.api_key)
    created = stub.CreateWebhook(webhook_pb2.CreateWebhookRequest(
        url=receiver.url, events=["recording.created"], description="g"), metadata=md)
    wh = created.webhook
    assert created.secret.startswith("whsec_")
    assert wh.status == webhook_pb2.WEBHOOK_STATUS_ENABLED and list(wh.events) == [
        "recording.created"]
    assert stub.GetWebhook(webhook_pb2.GetWebhookRequest(id=wh.id), metadata=md).webhook == wh
    listed = stub.ListWebhooks(webhook_pb2.ListWebhooksRequest(), metadata=md)
    assert [w.id for w in listed.webhooks] == [wh.id] and listed.next_page_token == ""

    srv.recordings().CreateRecording(recording_pb2.CreateRecordingRequest(), metadata=md)
    assert receiver.wait_for(lambda rs: len(rs) == 1, 30)
    event_id = receiver.requests[0].webhook_id
    for _ in range(300):
        page = stub.ListWebhookDeliveries(webhook_pb2.ListWebhookDeliveriesRequest(
            webhook_id=wh.id, status=webhook_pb2.DELIVERY_STATUS_SUCCEEDED), metadata=md)
        if page.deliveries:
            break
        time.sleep(0.05)
    [d] = page.deliveries
    assert d.event_id == event_id and d.event_type == "recording.created"
    assert d.attempts[0].status_code == 200 and d.attempts[0].HasField("attempt_time")
    assert not d.HasField("next_attempt_time") and d.HasField("complete_time")

    replay = stub.ReplayWebhookEvents(webhook_pb2.ReplayWebhookEventsRequest(
        webhook_id=wh.id, start_time=wh.create_time), metadata=md)
    assert (replay.replayed, replay.already_pending) == (1, 0)
    assert not replay.HasField("next_start_time")
    assert receiver.wait_for(lambda rs: len(rs) == 2, 30)
    assert receiver.requests[1].webhook_id == event_id

    stub.DeleteWebhook(webhook_pb2.DeleteWebhookRequest(id=wh.id), metadata=md)
    with pytest.raises(grpc.RpcError) as exc:
        stub.GetWebhook(webhook_pb2.GetWebhookRequest(id=wh.id), metadata=md)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert from_rpc_error(exc.value).type == "webhook_not_found"
    with pytest.raises(grpc.RpcError) as exc:
        stub.CreateWebhook(webhook_pb2.CreateWebhookRequest(url="http://[::1]/", events=[]),
                           metadata=md)
    assert from_rpc_error(exc.value).details["field"] == "events"
