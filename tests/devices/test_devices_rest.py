"""End users, devices, tokens, heartbeats and keys over the REST gateway (issue 8): the JSON
shapes of ``api.md``, and secrets that stay out of SQLite even in idempotent replays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tapedeck.auth import ALL_SCOPES
from tapedeck.clock import ManualClock
from tapedeck.gateway import devices as schemas

from devicekit import SECRET_RE, World, gateway_available

pytestmark = pytest.mark.skipif(not gateway_available(), reason="REST gateway not installed")
START = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(START)


def call(w: World, method: str, path: str, token: str, json: Any = None,
         **headers: str) -> httpx.Response:
    return httpx.request(method, w.srv.http_url + path, json=json, timeout=60.0,
                         headers={"Authorization": f"Bearer {token}", **headers})


def ok(resp: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    return dict(resp.json())


def err(resp: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert body["type"] == type_, body
    return dict(body)


def test_end_user_shape_and_duplicate_external_id(world: World) -> None:
    body = {"external_id": "crm-7", "email": "lin@example.com", "name": "Lin",
            "metadata": {"team": "blue"}}
    eu = ok(call(world, "POST", "/v1/end-users", world.sk, body), 201)
    schemas.EndUserOut.model_validate(eu)
    assert eu == {"id": eu["id"], **body, "created_at": "2026-04-01T12:00:00.000Z"}
    dup = err(call(world, "POST", "/v1/end-users", world.sk, {"external_id": "crm-7"}),
              409, "resource_already_exists")
    assert dup["end_user_id"] == eu["id"] and dup["field"] == "external_id"
    assert ok(call(world, "GET", f"/v1/end-users/{eu['id']}", world.sk)) == eu
    err(call(world, "GET", f"/v1/end-users/{eu['id']}", world.sk_b), 404, "end_user_not_found")
    err(call(world, "POST", "/v1/end-users", world.sk, {"nickname": "x"}), 400,
        "invalid_request")


def test_device_bind_refresh_heartbeat_unbind(world: World, clock: ManualClock) -> None:
    dev = ok(call(world, "POST", "/v1/devices", world.sk,
                  {"serial_number": "TD-77", "model": "clip", "firmware_version": "2.0.0"}), 201)
    schemas.DeviceOut.model_validate(dev)
    assert dev["status"] == "unbound" and dev["last_heartbeat_at"] is None
    assert dev["battery_percent"] is None and dev["end_user_id"] is None
    bound = ok(call(world, "POST", f"/v1/devices/{dev['id']}/bind", world.sk,
                    {"end_user_id": world.end_user_id}))
    schemas.BoundDeviceOut.model_validate(bound)
    token = bound.pop("device_token")
    assert token.startswith("dtok_test_") and bound["status"] == "bound"
    assert bound["end_user_id"] == world.end_user_id
    err(call(world, "POST", f"/v1/devices/{dev['id']}/bind", world.sk,
             {"end_user_id": world.end_user_id}), 409, "device_already_bound")
    # A recording made with the token belongs to the device and its end user.
    rec = ok(call(world, "POST", "/v1/recordings", token,
                  {"streaming": True, "device_id": world.other_device_id}), 201)
    assert (rec["device_id"], rec["end_user_id"]) == (dev["id"], world.end_user_id)
    # Refresh: the old token fails on its very next request.
    fresh = ok(call(world, "POST", "/v1/devices/me/token/refresh", token))
    schemas.RefreshedTokenOut.model_validate(fresh)
    assert fresh["device_id"] == dev["id"] and fresh["device_token"] != token
    err(call(world, "GET", f"/v1/recordings/{rec['id']}", token), 401, "unauthorized")
    assert ok(call(world, "GET", f"/v1/recordings/{rec['id']}", fresh["device_token"]))
    token = fresh["device_token"]
    # Heartbeat, then GET shows it with last_heartbeat_at.
    clock.advance(timedelta(seconds=30))
    hb = {"battery_percent": 42, "storage_used_mb": 100, "storage_total_mb": 2048,
          "signal_strength_dbm": -70, "firmware_version": "2.0.1", "device_state": "charging",
          "pending_recordings": 2, "connection_type": "cellular"}
    answer = ok(call(world, "POST", "/v1/devices/me/heartbeat", token, hb))
    assert answer == {"status": "ok", "settings": {
        "version": 0, "chunk_duration_ms": None, "bitrate": None, "dtx": None,
        "heartbeat_interval_s": None}}
    shown = ok(call(world, "GET", f"/v1/devices/{dev['id']}", world.sk))
    schemas.DeviceOut.model_validate(shown)
    assert {k: shown[k] for k in hb} == hb
    assert shown["last_heartbeat_at"] == "2026-04-01T12:00:30.000Z"
    err(call(world, "POST", "/v1/devices/me/heartbeat", token, {"battery_percent": "42"}),
        400, "invalid_request")
    err(call(world, "POST", "/v1/devices/me/heartbeat", token, {"device_state": "asleep"}),
        400, "invalid_request")
    # Unbind revokes the token; the device shows unbound.
    unbound = ok(call(world, "POST", f"/v1/devices/{dev['id']}/unbind", world.sk))
    assert unbound["status"] == "unbound" and unbound["end_user_id"] is None
    err(call(world, "POST", "/v1/devices/me/heartbeat", token, {}), 401, "unauthorized")


def test_keys_over_rest(world: World) -> None:
    created = ok(call(world, "POST", "/v1/keys", world.sk,
                      {"scopes": ["end_users:read"], "name": "crm sync"}), 201)
    schemas.CreatedKeyOut.model_validate(created)
    secret = created.pop("secret")
    assert secret.startswith("rk_test_") and created["scopes"] == ["end_users:read"]
    assert created["kind"] == "restricted" and created["revoked_at"] is None
    err(call(world, "GET", "/v1/devices/dev_x", secret), 403, "forbidden")
    err(call(world, "GET", "/v1/end-users/eu_nope", secret), 404, "end_user_not_found")
    page = ok(call(world, "GET", "/v1/keys?limit=1", world.sk))
    schemas.KeyPageOut.model_validate(page)
    assert page["data"] == [created] and page["has_more"] is True
    bad = err(call(world, "POST", "/v1/keys", world.sk, {"scopes": ["recordings:delete"]}),
              400, "invalid_request")
    assert bad["unknown_scopes"] == ["recordings:delete"]
    assert bad["valid_scopes"] == sorted(ALL_SCOPES)
    revoked = ok(call(world, "POST", f"/v1/keys/{created['id']}/revoke", world.sk))
    assert revoked["revoked_at"] is not None
    err(call(world, "GET", "/v1/end-users/eu_nope", secret), 401, "unauthorized")
    err(call(world, "POST", f"/v1/keys/{created['id']}/revoke", world.sk_b), 404,
        "key_not_found")


def test_idempotent_replay_returns_the_same_secret_sealed_at_rest(world: World) -> None:
    """A bind retried with its Idempotency-Key answers the same token (the device lost the
    first answer); the stored response holds the token only sealed."""
    device_id = world.new_device()
    path, body = f"/v1/devices/{device_id}/bind", {"end_user_id": world.end_user_id}
    first = call(world, "POST", path, world.sk, body, **{"Idempotency-Key": "bind-1"})
    again = call(world, "POST", path, world.sk, body, **{"Idempotency-Key": "bind-1"})
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert ok(first) == ok(again)
    token = first.json()["device_token"]
    assert ok(call(world, "GET", "/v1/recordings", token))
    key = call(world, "POST", "/v1/keys", world.sk, {"scopes": ["devices:read"]},
               **{"Idempotency-Key": "key-1"})
    key_again = call(world, "POST", "/v1/keys", world.sk, {"scopes": ["devices:read"]},
                     **{"Idempotency-Key": "key-1"})
    assert ok(key, 201)["secret"] == ok(key_again, 201)["secret"]
    stored = world.srv.app.db.read().execute(
        "SELECT response_body FROM idempotency_keys WHERE key IN ('bind-1', 'key-1')").fetchall()
    assert len(stored) == 2
    for (raw,) in stored:
        assert token not in raw and key.json()["secret"] not in raw
        assert not SECRET_RE.search(raw.encode()) and '"sealed_secret": "v1.' in raw
    err(call(world, "POST", path, world.sk, {"end_user_id": "eu_other"},
             **{"Idempotency-Key": "bind-1"}), 422, "idempotency_key_reused")
