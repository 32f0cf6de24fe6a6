"""Every gRPC method x every kind of credential: the exact outcome (issue 8).

The expected outcomes are the table ``devicekit.ACCESS``, written out, not computed. Each
case gets fresh targets (a device bound to an end user with its own token, and the
recording/end user/key the method acts on), so the cases do not depend on each other.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tapedeck.v1 import chunk_pb2 as cpb
from tapedeck.v1 import device_pb2 as dpb
from tapedeck.v1 import end_user_pb2 as epb
from tapedeck.v1 import key_pb2 as kpb
from tapedeck.v1 import recording_pb2 as rpb
from tapedeck.v1 import webhook_pb2 as whpb

from devicekit import ACCESS, Target, World, cases, credential, outcome
from serverkit import auth, chunk_messages

Metadata = tuple[tuple[str, str | bytes], ...]
Call = Callable[[World, Target, Metadata], object]

CALLS: dict[str, Call] = {
    "CreateRecording": lambda w, t, md: w.rpc.recordings.CreateRecording(
        rpb.CreateRecordingRequest(device_id=t.device_id, streaming=True), metadata=md),
    "GetRecording": lambda w, t, md: w.rpc.recordings.GetRecording(
        rpb.GetRecordingRequest(id=t.recording_id), metadata=md),
    "ListRecordings": lambda w, t, md: w.rpc.recordings.ListRecordings(
        rpb.ListRecordingsRequest(), metadata=md),
    "FinalizeRecording": lambda w, t, md: w.rpc.recordings.FinalizeRecording(
        rpb.FinalizeRecordingRequest(id=t.recording_id, total_chunks=1, final_duration_ms=900),
        metadata=md),
    "DeleteRecording": lambda w, t, md: w.rpc.recordings.DeleteRecording(
        rpb.DeleteRecordingRequest(id=t.recording_id), metadata=md),
    "CreateUploadUrl": lambda w, t, md: w.rpc.recordings.CreateUploadUrl(
        rpb.CreateUploadUrlRequest(id=t.recording_id, type="audio", part=2), metadata=md),
    "CompleteUpload": lambda w, t, md: w.rpc.recordings.CompleteUpload(
        rpb.CompleteUploadRequest(id=t.recording_id), metadata=md),
    "CreateDownloadUrl": lambda w, t, md: w.rpc.recordings.CreateDownloadUrl(
        rpb.CreateDownloadUrlRequest(id=t.recording_id), metadata=md),
    "UploadChunk": lambda w, t, md: w.rpc.chunks.UploadChunk(
        chunk_messages(t.recording_id, 2, b"second chunk"), metadata=md),
    "ListChunks": lambda w, t, md: w.rpc.chunks.ListChunks(
        cpb.ListChunksRequest(recording_id=t.recording_id), metadata=md),
    "CreateChunkUploadUrl": lambda w, t, md: w.rpc.chunks.CreateChunkUploadUrl(
        cpb.CreateChunkUploadUrlRequest(recording_id=t.recording_id, part=2), metadata=md),
    "DeleteChunk": lambda w, t, md: w.rpc.chunks.DeleteChunk(
        cpb.DeleteChunkRequest(recording_id=t.recording_id, part=1), metadata=md),
    "CreateWebhook": lambda w, t, md: w.rpc.webhooks.CreateWebhook(
        whpb.CreateWebhookRequest(url="https://hooks.example.com/a", events=["*"]), metadata=md),
    "GetWebhook": lambda w, t, md: w.rpc.webhooks.GetWebhook(
        whpb.GetWebhookRequest(id=t.webhook_id), metadata=md),
    "ListWebhooks": lambda w, t, md: w.rpc.webhooks.ListWebhooks(
        whpb.ListWebhooksRequest(), metadata=md),
    "DeleteWebhook": lambda w, t, md: w.rpc.webhooks.DeleteWebhook(
        whpb.DeleteWebhookRequest(id=t.webhook_id), metadata=md),
    "ListWebhookDeliveries": lambda w, t, md: w.rpc.webhooks.ListWebhookDeliveries(
        whpb.ListWebhookDeliveriesRequest(webhook_id=t.webhook_id), metadata=md),
    "ReplayWebhookEvents": lambda w, t, md: w.rpc.webhooks.ReplayWebhookEvents(
        whpb.ReplayWebhookEventsRequest(webhook_id=t.webhook_id,
                                        start_time=Timestamp(seconds=1_700_000_000)),
        metadata=md),
    "CreateDevice": lambda w, t, md: w.rpc.devices.CreateDevice(
        dpb.CreateDeviceRequest(serial_number="SN-9"), metadata=md),
    "GetDevice": lambda w, t, md: w.rpc.devices.GetDevice(
        dpb.GetDeviceRequest(id=t.device_id), metadata=md),
    "BindDevice": lambda w, t, md: w.rpc.devices.BindDevice(
        dpb.BindDeviceRequest(id=t.device_id, end_user_id=w.end_user_id), metadata=md),
    "UnbindDevice": lambda w, t, md: w.rpc.devices.UnbindDevice(
        dpb.UnbindDeviceRequest(id=t.device_id), metadata=md),
    "RefreshDeviceToken": lambda w, t, md: w.rpc.devices.RefreshDeviceToken(
        dpb.RefreshDeviceTokenRequest(id=t.device_id), metadata=md),
    "SendHeartbeat": lambda w, t, md: w.rpc.devices.SendHeartbeat(
        dpb.SendHeartbeatRequest(device_id=t.device_id, battery_percent=50), metadata=md),
    "ListDevices": lambda w, t, md: w.rpc.devices.ListDevices(
        dpb.ListDevicesRequest(state=dpb.DEVICE_HEALTH_FILTER_ONLINE), metadata=md),
    "GetDeviceSettings": lambda w, t, md: w.rpc.devices.GetDeviceSettings(
        dpb.GetDeviceSettingsRequest(device_id=t.device_id), metadata=md),
    "UpdateDeviceSettings": lambda w, t, md: w.rpc.devices.UpdateDeviceSettings(
        dpb.UpdateDeviceSettingsRequest(device_id=t.device_id,
                                        settings=dpb.DeviceSettings(bitrate=16000)),
        metadata=md),
    "CreateEndUser": lambda w, t, md: w.rpc.end_users.CreateEndUser(
        epb.CreateEndUserRequest(name="Grace"), metadata=md),
    "GetEndUser": lambda w, t, md: w.rpc.end_users.GetEndUser(
        epb.GetEndUserRequest(id=t.end_user_id), metadata=md),
    "CreateVoiceProfile": lambda w, t, md: w.rpc.end_users.CreateVoiceProfile(
        epb.CreateVoiceProfileRequest(end_user_id=t.end_user_id, recording=epb.RecordingSpan(
            recording_id="rec_missing", start_ms=0, end_ms=5000)), metadata=md),
    "ListVoiceProfiles": lambda w, t, md: w.rpc.end_users.ListVoiceProfiles(
        epb.ListVoiceProfilesRequest(end_user_id=t.end_user_id), metadata=md),
    "DeleteVoiceProfile": lambda w, t, md: w.rpc.end_users.DeleteVoiceProfile(
        epb.DeleteVoiceProfileRequest(end_user_id=t.end_user_id, id="vp_missing"), metadata=md),
    "DeleteEndUser": lambda w, t, md: w.rpc.end_users.DeleteEndUser(
        epb.DeleteEndUserRequest(id=t.end_user_id), metadata=md),
    "CreateKey": lambda w, t, md: w.rpc.keys.CreateKey(
        kpb.CreateKeyRequest(scopes=["recordings:read"]), metadata=md),
    "ListKeys": lambda w, t, md: w.rpc.keys.ListKeys(kpb.ListKeysRequest(), metadata=md),
    "RevokeKey": lambda w, t, md: w.rpc.keys.RevokeKey(
        kpb.RevokeKeyRequest(id=t.key_id), metadata=md),
}

def _first_update(stream: Any) -> Any:
    """The first message of a server stream; an authorized watch of a transcription that is
    still processing sends nothing before the deadline, which is not an access outcome."""
    try:
        return next(iter(stream))
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return None
        raise


def _transcription_calls() -> dict[str, Call]:
    """TranscriptionService's rows, once that service exists in this checkout."""
    if importlib.util.find_spec("tapedeck.v1.transcription_pb2") is None:
        return {}
    tpb: Any = importlib.import_module("tapedeck.v1.transcription_pb2")
    tgrpc: Any = importlib.import_module("tapedeck.v1.transcription_pb2_grpc")

    def stub(w: World) -> Any:
        return tgrpc.TranscriptionServiceStub(w.srv.channel())

    return {
        "CreateTranscription": lambda w, t, md: stub(w).CreateTranscription(
            tpb.CreateTranscriptionRequest(recording_id=t.recording_id), metadata=md),
        "GetTranscription": lambda w, t, md: stub(w).GetTranscription(
            tpb.GetTranscriptionRequest(id=t.transcription_id), metadata=md),
        "WatchTranscription": lambda w, t, md: _first_update(stub(w).WatchTranscription(
            tpb.WatchTranscriptionRequest(id=t.transcription_id), metadata=md, timeout=3)),
        "SearchTranscripts": lambda w, t, md: stub(w).SearchTranscripts(
            tpb.SearchTranscriptsRequest(query="hello"), metadata=md),
    }


CALLS.update(_transcription_calls())
CASES = cases(CALLS)


@pytest.mark.parametrize(("rpc", "kind", "expected"), CASES,
                         ids=[f"{n}-{k}" for n, k, _ in CASES])
def test_access(world: World, rpc: str, kind: str, expected: str) -> None:
    access = ACCESS[rpc]
    target = access.setup(world)
    metadata: Metadata = tuple(auth(credential(world, kind, access, target)))
    assert outcome(lambda: CALLS[rpc](world, target, metadata)) == expected


def test_every_rpc_of_every_service_is_in_the_table() -> None:
    """A new RPC must get a row in ``ACCESS`` and a call here."""
    services = [rpb.DESCRIPTOR.services_by_name["RecordingService"],
                cpb.DESCRIPTOR.services_by_name["ChunkService"],
                dpb.DESCRIPTOR.services_by_name["DeviceService"],
                epb.DESCRIPTOR.services_by_name["EndUserService"],
                kpb.DESCRIPTOR.services_by_name["KeyService"],
                whpb.DESCRIPTOR.services_by_name["WebhookService"]]
    if importlib.util.find_spec("tapedeck.v1.transcription_pb2") is not None:
        tpb: Any = importlib.import_module("tapedeck.v1.transcription_pb2")
        services.append(tpb.DESCRIPTOR.services_by_name["TranscriptionService"])
    declared = {m.name for s in services for m in s.methods}
    assert set(CALLS) <= set(ACCESS)
    assert declared == set(CALLS), (
        f"RPCs without a row in devicekit.ACCESS / CALLS here: {sorted(declared - set(CALLS))}")
