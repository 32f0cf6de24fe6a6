"""End users, devices, device tokens, heartbeats and keys over real gRPC (issue 8): the rules
of ``api.md`` one by one, against a real SQLite file and SeaweedFS, with a manual clock."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from tapedeck.auth import ALL_SCOPES, hash_token
from tapedeck.clock import ManualClock
from tapedeck.rpc_errors import from_rpc_error
from tapedeck.v1 import device_pb2 as dpb
from tapedeck.v1 import end_user_pb2 as epb
from tapedeck.v1 import key_pb2 as kpb
from tapedeck.v1 import recording_pb2 as rpb

from devicekit import World, error_of, outcome
from serverkit import auth

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(START)


def rpc_error(call: object) -> tuple[grpc.StatusCode, str, dict[str, object]]:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    err = from_rpc_error(info.value)
    return info.value.code(), err.type, err.details


def whoami(w: World, token: str) -> str:
    """A cheap authenticated call: ``ok`` or the error type."""
    return outcome(lambda: w.rpc.recordings.ListRecordings(
        rpb.ListRecordingsRequest(page_size=1), metadata=auth(token)))


# -- end users ---------------------------------------------------------------------------
def test_end_user_external_id_is_unique_per_project(world: World) -> None:
    created = world.rpc.end_users.CreateEndUser(epb.CreateEndUserRequest(
        external_id="cust-42", email="ada@example.com", name="Ada", metadata={"plan": "pro"}),
        metadata=auth(world.sk)).end_user
    assert created.id.startswith("eu_") and created.external_id == "cust-42"
    assert created.create_time.ToDatetime(tzinfo=UTC) == START
    code, type_, details = rpc_error(lambda: world.rpc.end_users.CreateEndUser(
        epb.CreateEndUserRequest(external_id="cust-42"), metadata=auth(world.sk)))
    assert (code, type_) == (grpc.StatusCode.ALREADY_EXISTS, "resource_already_exists")
    assert details == {"field": "external_id", "end_user_id": created.id}
    other = world.rpc.end_users.CreateEndUser(epb.CreateEndUserRequest(external_id="cust-42"),
                                              metadata=auth(world.sk_b)).end_user
    assert other.id != created.id
    got = world.rpc.end_users.GetEndUser(epb.GetEndUserRequest(id=created.id),
                                         metadata=auth(world.sk)).end_user
    assert got == created
    assert error_of(lambda: world.rpc.end_users.GetEndUser(
        epb.GetEndUserRequest(id=created.id), metadata=auth(world.sk_b))) == "end_user_not_found"


@pytest.mark.parametrize(("body", "field"), [
    ({"email": "not-an-email"}, "email"),
    ({"external_id": "x" * 256}, "external_id"),
    ({"name": "n" * 501}, "name"),
    ({"metadata": {f"k{i}": "v" for i in range(51)}}, "metadata"),
])
def test_end_user_validation(world: World, body: dict[str, object], field: str) -> None:
    code, type_, details = rpc_error(lambda: world.rpc.end_users.CreateEndUser(
        epb.CreateEndUserRequest(**body), metadata=auth(world.sk)))  # type: ignore[arg-type]
    assert (code, type_, details["field"]) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "invalid_request", field)


# -- devices, binding, tokens --------------------------------------------------------------
def test_new_device_is_unbound_without_heartbeat(world: World) -> None:
    device = world.rpc.devices.CreateDevice(dpb.CreateDeviceRequest(
        serial_number="TD-0001", model="tapedeck-mini", firmware_version="1.0.3"),
        metadata=auth(world.sk)).device
    assert device.id.startswith("dev_") and device.status == dpb.DEVICE_STATUS_UNBOUND
    assert (device.serial_number, device.model, device.firmware_version) == (
        "TD-0001", "tapedeck-mini", "1.0.3")
    assert not device.end_user_id and not device.HasField("bind_time")
    assert not device.HasField("last_heartbeat_time") and not device.HasField("battery_percent")
    assert world.rpc.devices.GetDevice(dpb.GetDeviceRequest(id=device.id),
                                       metadata=auth(world.sk)).device == device


def test_bind_returns_a_token_once_and_recordings_take_ids_from_it(world: World) -> None:
    device_id = world.new_device()
    eu = world.new_end_user()
    bound = world.rpc.devices.BindDevice(dpb.BindDeviceRequest(id=device_id, end_user_id=eu),
                                         metadata=auth(world.sk))
    token = bound.device_token
    assert token.startswith("dtok_test_") and bound.device.status == dpb.DEVICE_STATUS_BOUND
    assert bound.device.end_user_id == eu and bound.device.HasField("bind_time")
    rows = world.srv.app.db.read().execute(
        "SELECT token_hash, hint FROM device_tokens WHERE device_id = ?", [device_id]).fetchall()
    assert rows == [(hash_token(token), token[:10] + "…" + token[-4:])]
    # Body values are ignored with a device token: device and end user come from the token.
    rec = world.rpc.recordings.CreateRecording(rpb.CreateRecordingRequest(
        device_id=world.other_device_id, end_user_id="eu_someone_else", streaming=True),
        metadata=auth(token)).recording
    assert (rec.device_id, rec.end_user_id) == (device_id, eu)
    code, type_, details = rpc_error(lambda: world.rpc.devices.BindDevice(
        dpb.BindDeviceRequest(id=device_id, end_user_id=eu), metadata=auth(world.sk)))
    assert (code, type_) == (grpc.StatusCode.FAILED_PRECONDITION, "device_already_bound")
    assert details == {"device_id": device_id, "end_user_id": eu}


def test_bind_checks_the_end_user(world: World) -> None:
    device_id = world.new_device()
    foreign_eu = world.rpc.end_users.CreateEndUser(epb.CreateEndUserRequest(),
                                                   metadata=auth(world.sk_b)).end_user.id
    assert error_of(lambda: world.rpc.devices.BindDevice(
        dpb.BindDeviceRequest(id=device_id, end_user_id=foreign_eu),
        metadata=auth(world.sk))) == "end_user_not_found"
    assert error_of(lambda: world.rpc.devices.BindDevice(
        dpb.BindDeviceRequest(id=device_id), metadata=auth(world.sk))) == "invalid_request"
    device = world.rpc.devices.GetDevice(dpb.GetDeviceRequest(id=device_id),
                                         metadata=auth(world.sk)).device
    assert device.status == dpb.DEVICE_STATUS_UNBOUND  # nothing changed


def test_refresh_revokes_the_old_token_on_its_very_next_request(world: World) -> None:
    device_id, old = world.bound_device()
    rec_id = world.streaming_recording(old)
    new = world.refresh(old, "me")
    assert new != old and new.startswith("dtok_test_")
    assert whoami(world, old) == "unauthorized"
    assert whoami(world, new) == "ok"
    got = world.rpc.recordings.GetRecording(rpb.GetRecordingRequest(id=rec_id),
                                            metadata=auth(new)).recording
    assert got.device_id == device_id  # the new token is the same device
    assert error_of(lambda: world.refresh(old)) == "unauthorized"
    newer = world.refresh(new, device_id)  # its own id works as well as "me"
    assert whoami(world, new) == "unauthorized" and whoami(world, newer) == "ok"
    assert error_of(lambda: world.refresh(newer, world.other_device_id)) == "device_not_found"
    assert whoami(world, newer) == "ok"  # a refused refresh revokes nothing
    reasons = world.srv.app.db.read().execute(
        "SELECT revoked_reason FROM device_tokens WHERE device_id = ? ORDER BY created_at, id",
        [device_id]).fetchall()
    assert sorted(r[0] or "live" for r in reasons) == ["live", "refreshed", "refreshed"]


def test_concurrent_refreshes_of_one_token_yield_one_new_token(world: World) -> None:
    device_id, token = world.bound_device()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: outcome(lambda: world.refresh(token)), range(8)))
    assert sorted(results) == ["ok"] + ["unauthorized"] * 7
    live = world.srv.app.db.read().execute(
        "SELECT count(*) FROM device_tokens WHERE device_id = ? AND revoked_at IS NULL",
        [device_id]).fetchone()[0]
    assert live == 1


def test_unbind_revokes_every_token_of_the_device(world: World) -> None:
    device_id, bind_token = world.bound_device()
    _, admin_token = world.srv.device_token(device_id)  # `tapedeck admin device-token`
    refreshed = world.refresh(admin_token)
    tokens = [bind_token, refreshed]
    assert [whoami(world, t) for t in tokens] == ["ok", "ok"]
    device = world.rpc.devices.UnbindDevice(dpb.UnbindDeviceRequest(id=device_id),
                                            metadata=auth(world.sk)).device
    assert device.status == dpb.DEVICE_STATUS_UNBOUND and not device.end_user_id
    assert not device.HasField("bind_time")
    assert [whoami(world, t) for t in tokens] == ["unauthorized", "unauthorized"]
    assert error_of(lambda: world.refresh(bind_token)) == "unauthorized"
    world.rpc.devices.UnbindDevice(dpb.UnbindDeviceRequest(id=device_id),
                                   metadata=auth(world.sk))  # repeating it is harmless
    rebound = world.rpc.devices.BindDevice(
        dpb.BindDeviceRequest(id=device_id, end_user_id=world.end_user_id),
        metadata=auth(world.sk)).device_token
    assert whoami(world, rebound) == "ok"
    assert [whoami(world, t) for t in tokens] == ["unauthorized", "unauthorized"]


def test_device_sees_only_its_own_recordings(world: World) -> None:
    _, token = world.bound_device()
    mine = world.streaming_recording(token)
    theirs = world.streaming_recording(world.other_token)
    listed = world.rpc.recordings.ListRecordings(
        rpb.ListRecordingsRequest(page_size=100, device_id=world.other_device_id),
        metadata=auth(token)).recordings
    assert [r.id for r in listed] == [mine]
    assert theirs in [r.id for r in world.rpc.recordings.ListRecordings(
        rpb.ListRecordingsRequest(page_size=100), metadata=auth(world.sk)).recordings]


def test_recordings_made_with_keys_check_device_and_end_user(world: World) -> None:
    device_id, _ = world.bound_device()
    rec = world.rpc.recordings.CreateRecording(rpb.CreateRecordingRequest(device_id=device_id),
                                               metadata=auth(world.sk)).recording
    assert (rec.device_id, rec.end_user_id) == (device_id, world.end_user_id)  # the binding's
    other_eu = world.new_end_user()
    rec = world.rpc.recordings.CreateRecording(
        rpb.CreateRecordingRequest(device_id=device_id, end_user_id=other_eu),
        metadata=auth(world.sk)).recording
    assert rec.end_user_id == other_eu  # an explicit end user of the project wins
    foreign_eu = world.rpc.end_users.CreateEndUser(epb.CreateEndUserRequest(),
                                                   metadata=auth(world.sk_b)).end_user.id
    assert error_of(lambda: world.rpc.recordings.CreateRecording(
        rpb.CreateRecordingRequest(end_user_id=foreign_eu),
        metadata=auth(world.sk))) == "end_user_not_found"
    assert error_of(lambda: world.rpc.recordings.CreateRecording(
        rpb.CreateRecordingRequest(device_id=device_id),
        metadata=auth(world.sk_b))) == "device_not_found"


# -- heartbeats ------------------------------------------------------------------------------
def test_heartbeat_is_stored_as_the_latest_state(world: World, clock: ManualClock) -> None:
    device_id, token = world.bound_device()
    clock.advance(timedelta(minutes=5))
    resp = world.rpc.devices.SendHeartbeat(dpb.SendHeartbeatRequest(
        device_id="me", battery_percent=87, storage_used_mb=512, storage_total_mb=4096,
        signal_strength_dbm=-61, firmware_version="1.2.0",
        device_state=dpb.DEVICE_STATE_RECORDING, pending_recordings=3, connection_type="wifi"),
        metadata=auth(token))
    assert resp.status == "ok"
    first_at = clock.now()
    d = world.rpc.devices.GetDevice(dpb.GetDeviceRequest(id=device_id),
                                    metadata=auth(world.sk)).device
    assert d.last_heartbeat_time.ToDatetime(tzinfo=UTC) == first_at
    assert (d.battery_percent, d.storage_used_mb, d.storage_total_mb, d.signal_strength_dbm,
            d.device_state, d.pending_recordings, d.connection_type, d.firmware_version) == (
        87, 512, 4096, -61, dpb.DEVICE_STATE_RECORDING, 3, "wifi", "1.2.0")
    # The next heartbeat replaces the state: what it omits is no longer reported.
    clock.advance(timedelta(minutes=1))
    world.rpc.devices.SendHeartbeat(dpb.SendHeartbeatRequest(
        device_id=device_id, battery_percent=86, device_state=dpb.DEVICE_STATE_UPLOADING),
        metadata=auth(token))
    d = world.rpc.devices.GetDevice(dpb.GetDeviceRequest(id=device_id),
                                    metadata=auth(world.sk)).device
    assert d.last_heartbeat_time.ToDatetime(tzinfo=UTC) == first_at + timedelta(minutes=1)
    assert d.battery_percent == 86 and d.device_state == dpb.DEVICE_STATE_UPLOADING
    assert not d.HasField("storage_used_mb") and not d.HasField("pending_recordings")
    assert not d.connection_type and d.firmware_version == "1.2.0"  # a device field: kept


def test_heartbeat_from_a_key_names_the_device(world: World) -> None:
    device_id, _ = world.bound_device()
    key = world.restricted({"devices:write"})
    assert outcome(lambda: world.rpc.devices.SendHeartbeat(
        dpb.SendHeartbeatRequest(device_id=device_id, pending_recordings=0),
        metadata=auth(key))) == "ok"
    _, type_, details = rpc_error(lambda: world.rpc.devices.SendHeartbeat(
        dpb.SendHeartbeatRequest(device_id="me"), metadata=auth(key)))
    assert (type_, details["field"]) == ("invalid_request", "device_id")


@pytest.mark.parametrize(("fields", "bad"), [
    ({"battery_percent": 101}, "battery_percent"),
    ({"battery_percent": -1}, "battery_percent"),
    ({"storage_used_mb": 10, "storage_total_mb": 5}, "storage_used_mb"),
    ({"storage_total_mb": -5}, "storage_total_mb"),
    ({"signal_strength_dbm": 12}, "signal_strength_dbm"),
    ({"pending_recordings": -2}, "pending_recordings"),
    ({"connection_type": "Wi Fi"}, "connection_type"),
    ({"device_state": 99}, "device_state"),
    ({"firmware_version": "v" * 101}, "firmware_version"),
])
def test_heartbeat_validation(world: World, fields: dict[str, object], bad: str) -> None:
    _, token = world.bound_device()
    code, type_, details = rpc_error(lambda: world.rpc.devices.SendHeartbeat(
        dpb.SendHeartbeatRequest(device_id="me", **fields),  # type: ignore[arg-type]
        metadata=auth(token)))
    assert (code, type_, details["field"]) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "invalid_request", bad)


# -- keys ------------------------------------------------------------------------------------
def test_restricted_key_holds_exactly_its_scopes(world: World) -> None:
    created = world.create_key({"recordings:read", "devices:read"})
    assert created.secret.startswith("rk_test_")
    assert created.key.kind == kpb.KEY_KIND_RESTRICTED and created.key.mode == "test"
    assert list(created.key.scopes) == ["devices:read", "recordings:read"]
    assert created.key.hint == "rk_test_…" + created.secret[-4:]
    assert whoami(world, created.secret) == "ok"
    _, type_, details = rpc_error(lambda: world.rpc.recordings.CreateRecording(
        rpb.CreateRecordingRequest(), metadata=auth(created.secret)))
    assert (type_, details) == ("forbidden", {"scope": "recordings:write"})


@pytest.mark.parametrize(("kind", "scopes", "field"), [
    (kpb.KEY_KIND_RESTRICTED, ["recordings:read", "recordings:admin"], "scopes"),
    (kpb.KEY_KIND_RESTRICTED, [], "scopes"),
    (kpb.KEY_KIND_SECRET, ["recordings:read"], "scopes"),
    (7, [], "kind"),
])
def test_key_creation_validation(world: World, kind: int, scopes: list[str],
                                 field: str) -> None:
    _, type_, details = rpc_error(lambda: world.rpc.keys.CreateKey(
        kpb.CreateKeyRequest(kind=kind, scopes=scopes),  # type: ignore[arg-type]
        metadata=auth(world.sk)))
    assert (type_, details["field"]) == ("invalid_request", field)
    if scopes and kind == kpb.KEY_KIND_RESTRICTED:
        assert details["unknown_scopes"] == ["recordings:admin"]
        assert details["valid_scopes"] == sorted(ALL_SCOPES)


def test_list_and_revoke_keys(world: World) -> None:
    mine = [world.create_key({"webhooks:read"}).key.id for _ in range(3)]
    seen, token = [], ""
    while True:
        page = world.rpc.keys.ListKeys(kpb.ListKeysRequest(page_size=2, page_token=token),
                                       metadata=auth(world.sk))
        assert len(page.keys) <= 2
        seen += [k.id for k in page.keys]
        token = page.next_page_token
        if not token:
            break
    assert seen[:3] == mine[::-1]  # newest first
    assert len(seen) == len(set(seen))
    assert world.srv.app.db.read().execute(
        "SELECT count(*) FROM api_keys WHERE project_id = ?",
        [world.srv.project_id]).fetchone()[0] == len(seen)
    revoked = world.rpc.keys.RevokeKey(kpb.RevokeKeyRequest(id=mine[0]),
                                       metadata=auth(world.sk)).key
    assert revoked.HasField("revoke_time")
    again = world.rpc.keys.RevokeKey(kpb.RevokeKeyRequest(id=mine[0]),
                                     metadata=auth(world.sk)).key
    assert again == revoked
    assert error_of(lambda: world.rpc.keys.ListKeys(
        kpb.ListKeysRequest(page_token="garbage"), metadata=auth(world.sk))) == "invalid_request"


def test_last_secret_key_cannot_be_revoked_but_can_be_rotated(world: World) -> None:
    sk_id = world.srv.app.db.read().execute(
        "SELECT id FROM api_keys WHERE project_id = ? AND kind = 'secret'",
        [world.srv.project_id]).fetchone()[0]
    _, type_, details = rpc_error(lambda: world.rpc.keys.RevokeKey(
        kpb.RevokeKeyRequest(id=sk_id), metadata=auth(world.sk)))
    assert (type_, details["field"]) == ("invalid_request", "id")
    rotated = world.rpc.keys.CreateKey(kpb.CreateKeyRequest(kind=kpb.KEY_KIND_SECRET),
                                       metadata=auth(world.sk))
    assert rotated.secret.startswith("sk_test_") and list(rotated.key.scopes) == sorted(ALL_SCOPES)
    world.rpc.keys.RevokeKey(kpb.RevokeKeyRequest(id=sk_id), metadata=auth(rotated.secret))
    assert whoami(world, world.sk) == "unauthorized"
    world.sk = rotated.secret  # later tests of this module use the rotated key
    assert whoami(world, world.sk) == "ok"

