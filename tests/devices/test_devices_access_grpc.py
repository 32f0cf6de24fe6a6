"""Every gRPC method x every kind of credential: the exact outcome (issue 8).

Each case gets fresh targets (a device bound to an end user, with its own token, and the
recording/end user/key the method acts on), so the cases do not depend on each other. The
expected outcomes are written out, not computed: ``ok``, ``forbidden`` (missing scope,
decided before any lookup, so it reveals nothing), ``unauthorized`` (revoked, unbound or
refreshed-away credentials), or ``*_not_found`` where the target exists but is not the
caller's (another device's recording, another project's device …), never ``forbidden``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tapedeck.auth import ALL_SCOPES
from tapedeck.v1 import chunk_pb2 as cpb
from tapedeck.v1 import device_pb2 as dpb
from tapedeck.v1 import end_user_pb2 as epb
from tapedeck.v1 import key_pb2 as kpb
from tapedeck.v1 import recording_pb2 as rpb
from tapedeck.weed import ManagedWeed

from devicekit import World, outcome, serve
from serverkit import RunningServer, auth, chunk_messages


@pytest.fixture(scope="module")
def module_server(weed: ManagedWeed,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from serve(weed, tmp_path_factory.mktemp("access") / "data")


@pytest.fixture(scope="module")
def world(module_server: RunningServer) -> World:
    return World.build(module_server)


@dataclass
class Target:
    """What one case acts on: a device of project A, its live token, and maybe more."""

    device_id: str
    owner_token: str
    recording_id: str = ""
    end_user_id: str = ""
    key_id: str = ""


# -- targets -------------------------------------------------------------------------------
def bound_device(w: World) -> Target:
    return Target(*w.bound_device())


def unbound_device_with_token(w: World) -> Target:
    """An unbound device that still has a token (issued by ``tapedeck admin device-token``)."""
    device_id = w.new_device()
    _, token = w.srv.device_token(device_id)
    return Target(device_id, token)


def streaming_recording(w: World) -> Target:
    t = bound_device(w)
    t.recording_id = w.streaming_recording(t.owner_token, chunks=1)
    return t


def file_uploaded(w: World) -> Target:
    t = bound_device(w)
    t.recording_id = w.uploaded_file(t.owner_token, complete=False)
    return t


def file_completed(w: World) -> Target:
    t = bound_device(w)
    t.recording_id = w.uploaded_file(t.owner_token, complete=True)
    return t


def end_user(w: World) -> Target:
    t = bound_device(w)
    t.end_user_id = w.new_end_user()
    return t


def api_key(w: World) -> Target:
    t = bound_device(w)
    t.key_id = w.create_key({"recordings:read"}).key.id
    return t


# -- the table -----------------------------------------------------------------------------
KINDS = ("secret", "restricted_with_scope", "restricted_without_scope", "device_owner",
         "device_other", "revoked_key", "unbound_device_token", "refreshed_away_token",
         "other_project_key")

OK, FORB, UNAUTH = "ok", "forbidden", "unauthorized"
RNF, DNF = "recording_not_found", "device_not_found"
EUNF, KNF = "end_user_not_found", "key_not_found"
_401 = (UNAUTH, UNAUTH, UNAUTH)

Metadata = tuple[tuple[str, str | bytes], ...]
Call = Callable[[World, Target, Metadata], object]


@dataclass(frozen=True)
class Op:
    """One RPC: the scopes a restricted key needs, its target, the call, the outcomes."""

    scopes: frozenset[str]
    setup: Callable[[World], Target]
    call: Call
    expect: tuple[str, ...]  # one per KINDS


def op(scopes: set[str], setup: Callable[[World], Target], call: Call,
       *expect: str) -> Op:
    assert len(expect) == len(KINDS)
    return Op(frozenset(scopes), setup, call, expect)


R_READ, R_WRITE = {"recordings:read"}, {"recordings:write"}
D_READ, D_WRITE = {"devices:read"}, {"devices:write"}
#: Key management has no scope: only secret keys; "restricted with scope" holds every scope.
KEYS = set(ALL_SCOPES)

#: Outcomes, in KINDS order: secret, restricted with / without the scope, device token of the
#: owner / of another device, revoked key, unbound device's token, refreshed-away token,
#: another project's key.
OPS: dict[str, Op] = {
    # RecordingService / ChunkService
    "CreateRecording": op(
        R_WRITE, bound_device,
        lambda w, t, md: w.rpc.recordings.CreateRecording(
            rpb.CreateRecordingRequest(device_id=t.device_id, streaming=True), metadata=md),
        OK, OK, FORB, OK, OK, *_401, DNF),
    "GetRecording": op(
        R_READ, streaming_recording,
        lambda w, t, md: w.rpc.recordings.GetRecording(
            rpb.GetRecordingRequest(id=t.recording_id), metadata=md),
        OK, OK, FORB, OK, RNF, *_401, RNF),
    "ListRecordings": op(
        R_READ, streaming_recording,
        lambda w, t, md: w.rpc.recordings.ListRecordings(
            rpb.ListRecordingsRequest(), metadata=md),
        OK, OK, FORB, OK, OK, *_401, OK),
    "FinalizeRecording": op(
        R_WRITE, streaming_recording,
        lambda w, t, md: w.rpc.recordings.FinalizeRecording(
            rpb.FinalizeRecordingRequest(id=t.recording_id, total_chunks=1, final_duration_ms=900),
            metadata=md),
        OK, OK, FORB, OK, RNF, *_401, RNF),
    "DeleteRecording": op(
        R_WRITE, streaming_recording,
        lambda w, t, md: w.rpc.recordings.DeleteRecording(
            rpb.DeleteRecordingRequest(id=t.recording_id), metadata=md),
        OK, OK, FORB, FORB, FORB, *_401, RNF),
    "CreateUploadUrl": op(
        R_WRITE, streaming_recording,
        lambda w, t, md: w.rpc.recordings.CreateUploadUrl(
            rpb.CreateUploadUrlRequest(id=t.recording_id, type="audio", part=2), metadata=md),
        OK, OK, FORB, OK, RNF, *_401, RNF),
    "CompleteUpload": op(
        R_WRITE, file_uploaded,
        lambda w, t, md: w.rpc.recordings.CompleteUpload(
            rpb.CompleteUploadRequest(id=t.recording_id), metadata=md),
        OK, OK, FORB, OK, RNF, *_401, RNF),
    "CreateDownloadUrl": op(
        R_READ, file_completed,
        lambda w, t, md: w.rpc.recordings.CreateDownloadUrl(
            rpb.CreateDownloadUrlRequest(id=t.recording_id), metadata=md),
        OK, OK, FORB, OK, RNF, *_401, RNF),
    "UploadChunk": op(
        R_WRITE, streaming_recording,
        lambda w, t, md: w.rpc.chunks.UploadChunk(
            chunk_messages(t.recording_id, 2, b"second chunk"), metadata=md),
        OK, OK, FORB, OK, RNF, *_401, RNF),
    "ListChunks": op(
        R_READ, streaming_recording,
        lambda w, t, md: w.rpc.chunks.ListChunks(
            cpb.ListChunksRequest(recording_id=t.recording_id), metadata=md),
        OK, OK, FORB, OK, RNF, *_401, RNF),
    "CreateChunkUploadUrl": op(
        R_WRITE, streaming_recording,
        lambda w, t, md: w.rpc.chunks.CreateChunkUploadUrl(
            cpb.CreateChunkUploadUrlRequest(recording_id=t.recording_id, part=2), metadata=md),
        OK, OK, FORB, OK, RNF, *_401, RNF),
    # DeviceService
    "CreateDevice": op(
        D_WRITE, bound_device,
        lambda w, t, md: w.rpc.devices.CreateDevice(
            dpb.CreateDeviceRequest(serial_number="SN-9"), metadata=md),
        OK, OK, FORB, FORB, FORB, *_401, OK),
    "GetDevice": op(
        D_READ, bound_device,
        lambda w, t, md: w.rpc.devices.GetDevice(
            dpb.GetDeviceRequest(id=t.device_id), metadata=md),
        OK, OK, FORB, FORB, FORB, *_401, DNF),
    "BindDevice": op(
        D_WRITE, unbound_device_with_token,
        lambda w, t, md: w.rpc.devices.BindDevice(
            dpb.BindDeviceRequest(id=t.device_id, end_user_id=w.end_user_id), metadata=md),
        OK, OK, FORB, FORB, FORB, *_401, DNF),
    "UnbindDevice": op(
        D_WRITE, bound_device,
        lambda w, t, md: w.rpc.devices.UnbindDevice(
            dpb.UnbindDeviceRequest(id=t.device_id), metadata=md),
        OK, OK, FORB, FORB, FORB, *_401, DNF),
    "RefreshDeviceToken": op(
        D_WRITE, bound_device,
        lambda w, t, md: w.rpc.devices.RefreshDeviceToken(
            dpb.RefreshDeviceTokenRequest(id=t.device_id), metadata=md),
        FORB, FORB, FORB, OK, DNF, *_401, FORB),
    "SendHeartbeat": op(
        D_WRITE, bound_device,
        lambda w, t, md: w.rpc.devices.SendHeartbeat(
            dpb.SendHeartbeatRequest(device_id=t.device_id, battery_percent=50), metadata=md),
        OK, OK, FORB, OK, DNF, *_401, DNF),
    # EndUserService
    "CreateEndUser": op(
        {"end_users:write"}, bound_device,
        lambda w, t, md: w.rpc.end_users.CreateEndUser(
            epb.CreateEndUserRequest(name="Grace"), metadata=md),
        OK, OK, FORB, FORB, FORB, *_401, OK),
    "GetEndUser": op(
        {"end_users:read"}, end_user,
        lambda w, t, md: w.rpc.end_users.GetEndUser(
            epb.GetEndUserRequest(id=t.end_user_id), metadata=md),
        OK, OK, FORB, FORB, FORB, *_401, EUNF),
    # KeyService
    "CreateKey": op(
        KEYS, bound_device,
        lambda w, t, md: w.rpc.keys.CreateKey(
            kpb.CreateKeyRequest(scopes=["recordings:read"]), metadata=md),
        OK, FORB, FORB, FORB, FORB, *_401, OK),
    "ListKeys": op(
        KEYS, bound_device,
        lambda w, t, md: w.rpc.keys.ListKeys(
            kpb.ListKeysRequest(), metadata=md),
        OK, FORB, FORB, FORB, FORB, *_401, OK),
    "RevokeKey": op(
        KEYS, api_key,
        lambda w, t, md: w.rpc.keys.RevokeKey(
            kpb.RevokeKeyRequest(id=t.key_id), metadata=md),
        OK, FORB, FORB, FORB, FORB, *_401, KNF),
}


def credential(w: World, kind: str, o: Op, t: Target) -> str:
    """The bearer secret of ``kind`` for a case acting on ``t``."""
    if kind == "refreshed_away_token":  # the owner's own token, replaced by a refresh
        old, t.owner_token = t.owner_token, w.refresh(t.owner_token)
        return old
    by_kind: dict[str, Callable[[], str]] = {
        "secret": lambda: w.sk,
        "restricted_with_scope": lambda: w.restricted(o.scopes),
        "restricted_without_scope": lambda: w.restricted_without(o.scopes),
        "device_owner": lambda: t.owner_token,
        "device_other": lambda: w.other_token,
        "revoked_key": lambda: w.revoked(o.scopes),
        "unbound_device_token": lambda: w.unbound_token,
        "other_project_key": lambda: w.sk_b,
    }
    return by_kind[kind]()


CASES = [(name, kind, expected) for name, o in OPS.items()
         for kind, expected in zip(KINDS, o.expect, strict=True)]


@pytest.mark.parametrize(("rpc", "kind", "expected"), CASES,
                         ids=[f"{n}-{k}" for n, k, _ in CASES])
def test_access(world: World, rpc: str, kind: str, expected: str) -> None:
    o = OPS[rpc]
    target = o.setup(world)
    token = credential(world, kind, o, target)
    metadata: Metadata = tuple(auth(token))
    assert outcome(lambda: o.call(world, target, metadata)) == expected


def test_every_rpc_of_every_service_is_in_the_table() -> None:
    """A new RPC must get a row here."""
    services = [rpb.DESCRIPTOR.services_by_name["RecordingService"],
                cpb.DESCRIPTOR.services_by_name["ChunkService"],
                dpb.DESCRIPTOR.services_by_name["DeviceService"],
                epb.DESCRIPTOR.services_by_name["EndUserService"],
                kpb.DESCRIPTOR.services_by_name["KeyService"]]
    assert {m.name for s in services for m in s.methods} == set(OPS)


def test_table_layout() -> None:
    """Sanity of the table itself: every case lists one outcome per kind, and no denial of
    another project's or device's *existing* resource says ``forbidden``."""
    for name, o in OPS.items():
        other_device, other_project = o.expect[4], o.expect[8]
        if name not in ("CreateDevice", "GetDevice", "BindDevice", "UnbindDevice",
                        "CreateEndUser", "GetEndUser", "CreateKey", "ListKeys", "RevokeKey",
                        "DeleteRecording"):
            assert other_device != FORB, name
        assert other_project != FORB or name == "RefreshDeviceToken", name
