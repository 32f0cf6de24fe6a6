"""Fleet health (issue 22) over real gRPC and REST: each of ``device.storage_low``,
``device.offline``, ``device.online``, ``device.backlog`` once per transition, device listing
by health, and pushed device settings with versions. Time is a ``ManualClock``; the sweeper
is a real ``Sweeper`` round (``run_once``) on the server's domain."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tapedeck.background.sweeper import Sweeper
from tapedeck.clock import ManualClock
from tapedeck.domain.expiry import Expiry
from tapedeck.domain.retention import Retention, RetentionPolicy
from tapedeck.gateway import devices as schemas
from tapedeck.gateway import fleet as fleet_schemas
from tapedeck.infra.weed import ManagedWeed
from tapedeck.rpc_errors import from_rpc_error
from tapedeck.v1 import device_pb2 as dpb

from devicekit import World, gateway_available, serve
from serverkit import auth

pytestmark = pytest.mark.skipif(not gateway_available(), reason="REST gateway not installed")
START = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(START)


def rest(w: World, method: str, path: str, token: str, body: Any = None,
         status: int = 200) -> dict[str, Any]:
    resp = httpx.request(method, w.srv.http_url + path, json=body, timeout=60.0,
                         headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == status, resp.text
    return dict(resp.json())


def events_of(w: World, device_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The fleet events of one device, in order."""
    rows = w.srv.app.db.read().execute(
        "SELECT type, data FROM events WHERE type LIKE 'device.%' ORDER BY rowid").fetchall()
    out = [(t, json.loads(d)) for t, d in rows]
    return [(t, d) for t, d in out if d["device_id"] == device_id]


def types_of(w: World, device_id: str) -> list[str]:
    return [t for t, _ in events_of(w, device_id)]


def sweep(w: World) -> list[str]:
    """One real sweeper round; the devices it marked offline."""
    ctx = w.srv.app.domain.ctx
    sweeper = Sweeper(Expiry(ctx), Retention(ctx, RetentionPolicy.from_settings(ctx.settings)),
                      60.0, fleet=w.srv.app.domain.fleet)
    return sweeper.run_once().offline


def heartbeat(w: World, token: str, **fields: Any) -> dict[str, Any]:
    return rest(w, "POST", "/v1/devices/me/heartbeat", token, fields)


def listed(w: World, state: str) -> set[str]:
    page = rest(w, "GET", f"/v1/devices?state={state}&limit=100", w.sk)
    fleet_schemas.DevicePageOut.model_validate(page)
    return {d["id"] for d in page["data"]}


def test_storage_low_once_per_transition(world: World) -> None:
    device_id, token = world.bound_device()
    heartbeat(world, token, storage_used_mb=500, storage_total_mb=1000)
    assert types_of(world, device_id) == [] and device_id not in listed(world, "storage_low")
    heartbeat(world, token, storage_used_mb=850, storage_total_mb=1000)
    heartbeat(world, token, storage_used_mb=900, storage_total_mb=1000)  # still low: no event
    assert events_of(world, device_id) == [("device.storage_low", {
        "device_id": device_id, "end_user_id": world.end_user_id, "storage_used_mb": 850,
        "storage_total_mb": 1000, "storage_used_percent": 85.0, "threshold_percent": 80})]
    shown = rest(world, "GET", f"/v1/devices/{device_id}", world.sk)
    schemas.DeviceOut.model_validate(shown)
    assert shown["storage_low"] is True and device_id in listed(world, "storage_low")
    heartbeat(world, token, storage_used_mb=300, storage_total_mb=1000)  # back below: cleared
    assert device_id not in listed(world, "storage_low")
    heartbeat(world, token, storage_used_mb=800, storage_total_mb=1000)  # exactly 80 %: again
    assert types_of(world, device_id) == ["device.storage_low"] * 2


def test_offline_then_online_once_each_through_the_sweeper(world: World,
                                                           clock: ManualClock) -> None:
    device_id, token = world.bound_device()
    silent_id, _ = world.bound_device()  # never sends a heartbeat: never "offline"
    world.rpc.devices.SendHeartbeat(dpb.SendHeartbeatRequest(device_id="me"),
                                    metadata=auth(token))
    last = clock.now()
    clock.advance(timedelta(seconds=299))
    assert device_id not in sweep(world)
    clock.advance(timedelta(seconds=2))  # 301 s > device_offline_after_s (300)
    assert device_id in sweep(world) and silent_id not in listed(world, "offline")
    assert device_id not in sweep(world)  # once per transition
    assert events_of(world, device_id) == [("device.offline", {
        "device_id": device_id, "end_user_id": world.end_user_id,
        "last_heartbeat_at": last.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "offline_after_s": 300})]
    resp = world.rpc.devices.ListDevices(dpb.ListDevicesRequest(
        state=dpb.DEVICE_HEALTH_FILTER_OFFLINE, page_size=100), metadata=auth(world.sk))
    assert device_id in {d.id for d in resp.devices}
    assert all(d.offline for d in resp.devices)
    assert device_id not in listed(world, "online")

    clock.advance(timedelta(minutes=10))
    world.rpc.devices.SendHeartbeat(dpb.SendHeartbeatRequest(device_id="me"),
                                    metadata=auth(token))
    world.rpc.devices.SendHeartbeat(dpb.SendHeartbeatRequest(device_id="me"),
                                    metadata=auth(token))
    assert types_of(world, device_id) == ["device.offline", "device.online"]
    online = events_of(world, device_id)[1][1]
    assert online["previous_heartbeat_at"] == last.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert device_id in listed(world, "online") and device_id not in listed(world, "offline")
    device = world.rpc.devices.GetDevice(dpb.GetDeviceRequest(id=device_id),
                                         metadata=auth(world.sk)).device
    assert not device.offline


def test_backlog_once_per_transition_and_shown_on_the_device(world: World) -> None:
    device_id, token = world.bound_device()
    backlog = {"backlog_recordings": 2, "backlog_chunks": 7, "backlog_bytes": 123_456}
    heartbeat(world, token, **backlog, backlog_oldest_age_s=600)
    assert types_of(world, device_id) == []
    heartbeat(world, token, **backlog, backlog_oldest_age_s=3600)
    heartbeat(world, token, **backlog, backlog_oldest_age_s=4000)
    assert events_of(world, device_id) == [("device.backlog", {
        "device_id": device_id, "end_user_id": world.end_user_id, **backlog,
        "backlog_oldest_age_s": 3600, "threshold_s": 3600})]
    shown = rest(world, "GET", f"/v1/devices/{device_id}", world.sk)
    assert {k: shown[k] for k in backlog} == backlog
    assert shown["backlog_oldest_age_s"] == 4000 and shown["backlog_overdue"] is True
    assert device_id in listed(world, "backlog")
    got = world.rpc.devices.GetDevice(dpb.GetDeviceRequest(id=device_id),
                                      metadata=auth(world.sk)).device
    assert (got.backlog_recordings, got.backlog_chunks, got.backlog_bytes,
            got.backlog_oldest_age_s, got.backlog_overdue) == (2, 7, 123_456, 4000, True)
    heartbeat(world, token, backlog_recordings=0, backlog_chunks=0, backlog_bytes=0,
              backlog_oldest_age_s=0)
    assert device_id not in listed(world, "backlog")
    assert types_of(world, device_id) == ["device.backlog"]


def test_pushed_settings_are_versioned_and_inherited(tmp_path: Path, weed: ManagedWeed) -> None:
    srv_iter = serve(weed, tmp_path / "data")  # a project of its own: versions start at 0
    srv = next(srv_iter)
    try:
        w = World.build(srv)
        a_id, a_token = w.bound_device()
        b_id, b_token = w.bound_device()
        never = {"version": 0, "chunk_duration_ms": None, "bitrate": None, "dtx": None,
                 "heartbeat_interval_s": None}
        assert heartbeat(w, a_token)["settings"] == never
        project = rest(w, "PUT", "/v1/device-settings", w.sk,
                       {"chunk_duration_ms": 30_000, "dtx": False})
        fleet_schemas.ProjectSettingsOut.model_validate(project)
        assert (project["version"], project["chunk_duration_ms"], project["dtx"],
                project["bitrate"]) == (1, 30_000, False, None)
        mine = rest(w, "PUT", f"/v1/devices/{a_id}/settings", w.sk,
                    {"bitrate": 16_000, "heartbeat_interval_s": 30})
        fleet_schemas.DeviceSettingsOut.model_validate(mine)
        assert mine["version"] == 2 and mine["overrides"] == {
            "chunk_duration_ms": None, "bitrate": 16_000, "dtx": None,
            "heartbeat_interval_s": 30}
        assert heartbeat(w, a_token, settings_version=1)["settings"] == {
            "version": 2, "chunk_duration_ms": 30_000, "bitrate": 16_000, "dtx": False,
            "heartbeat_interval_s": 30}
        assert heartbeat(w, b_token)["settings"] == {**never, "version": 1,
                                                     "chunk_duration_ms": 30_000, "dtx": False}
        # A project change reaches every device, with a higher version than any before.
        resp = w.rpc.devices.UpdateDeviceSettings(dpb.UpdateDeviceSettingsRequest(
            settings=dpb.DeviceSettings(chunk_duration_ms=20_000, dtx=True)),
            metadata=auth(w.sk))
        assert resp.settings.version == 3 and not resp.HasField("overrides")
        got = w.rpc.devices.SendHeartbeat(dpb.SendHeartbeatRequest(
            device_id="me", settings_version=2), metadata=auth(a_token)).settings
        assert (got.version, got.chunk_duration_ms, got.bitrate, got.dtx,
                got.heartbeat_interval_s) == (3, 20_000, 16_000, True, 30)
        view = w.rpc.devices.GetDeviceSettings(dpb.GetDeviceSettingsRequest(device_id=b_id),
                                               metadata=auth(w.sk))
        assert view.settings.version == 3 and not view.overrides.HasField("bitrate")
        assert rest(w, "GET", f"/v1/devices/{a_id}", w.sk)["settings_version"] == 2
        assert rest(w, "GET", "/v1/device-settings", w.sk)["chunk_duration_ms"] == 20_000
        # Bad values: a clear invalid_request naming the field, nothing changed.
        bad = httpx.put(w.srv.http_url + "/v1/device-settings", json={"chunk_duration_ms": 1010},
                        headers={"Authorization": f"Bearer {w.sk}"}, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request"
        with pytest.raises(grpc.RpcError) as exc:
            w.rpc.devices.UpdateDeviceSettings(dpb.UpdateDeviceSettingsRequest(
                device_id=a_id, settings=dpb.DeviceSettings(bitrate=5)), metadata=auth(w.sk))
        assert from_rpc_error(exc.value).type == "invalid_request"
        assert from_rpc_error(exc.value).details.get("field") == "bitrate"
        assert rest(w, "GET", f"/v1/devices/{a_id}/settings", w.sk)["version"] == 3
    finally:
        next(srv_iter, None)


def test_fleet_events_are_webhook_event_types_in_the_openapi(world: World) -> None:
    spec = httpx.get(world.srv.http_url + "/openapi.json", timeout=30).json()
    text = json.dumps(spec)
    for event in ("device.offline", "device.online", "device.storage_low", "device.backlog"):
        assert event in text
    assert "/v1/devices" in spec["paths"] and "get" in spec["paths"]["/v1/devices"]
    assert "put" in spec["paths"]["/v1/device-settings"]
    created = rest(world, "POST", "/v1/webhooks", world.sk,
                   {"url": "https://hooks.example.com/fleet",
                    "events": ["device.offline", "device.storage_low"]}, status=201)
    assert created["events"] == ["device.offline", "device.storage_low"]
